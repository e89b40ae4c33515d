//! Structs that JSON gives as objects only.
//!
//! Serde's derived `Deserialize` of a struct also takes an array of its
//! fields in order: `[9001, "TSHIRT-M", "T-shirt", 2, 1999]` would be read
//! as a line item, and a whole event as an array of its envelope's fields.
//! The contract's events and each of their parts are JSON objects, so a
//! record that gives one as an array has a field of the wrong type, and
//! goes to the dead letters like any other.
//!
//! [`objects_only!`] writes the `Deserialize` of a struct whose derive has
//! `#[serde(remote = "Self")]` (which makes the derived code inherent
//! functions of the struct): from a human-readable format (JSON) it reads
//! an object only; from a binary one it reads as derived. With
//! `serialize`, it also writes the `Serialize` the attribute took away,
//! unchanged.

/// Implements `Deserialize` (and, after `serialize`, `Serialize`) around
/// the inherent functions `#[serde(remote = "Self")]` derived; see the
/// module documentation.
#[macro_export]
macro_rules! objects_only {
    (serialize $name:ident) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $name::serialize(self, serializer)
            }
        }
        $crate::objects_only!($name);
    };
    ($name:ident $(<$lifetime:lifetime>)?) => {
        impl<'de $(: $lifetime, $lifetime)?> serde::Deserialize<'de> for $name $(<$lifetime>)? {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Object<T>(std::marker::PhantomData<T>);
                impl<'de $(: $lifetime, $lifetime)?> serde::de::Visitor<'de> for Object<$name $(<$lifetime>)?> {
                    type Value = $name $(<$lifetime>)?;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a JSON object")
                    }

                    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                        <$name $(<$lifetime>)?>::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                if deserializer.is_human_readable() {
                    deserializer.deserialize_map(Object(std::marker::PhantomData))
                } else {
                    <$name $(<$lifetime>)?>::deserialize(deserializer)
                }
            }
        }
    };
}

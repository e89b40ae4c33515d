//! Reading command requests: every problem of a body is reported at once,
//! each with the field it is about.

use serde_json::{Map, Value, json};

use projector_core::order::LineItem;

/// A problem with one field of a request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// The field, as a path (`line_items[1].quantity`).
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// Why a command was not carried out. Each maps to one HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the body is not a JSON object.
    Malformed(String),
    /// 422: fields are missing or wrong.
    Invalid(Vec<FieldError>),
    /// 409: not enough stock for some SKUs.
    InsufficientStock(Vec<Shortage>),
    /// 404: no such order.
    UnknownOrder(String),
    /// 409: the order is already cancelled.
    AlreadyCancelled(String),
    /// 422: the idempotency key was used for a different request.
    KeyReused,
    /// 409: a request with this idempotency key is still being processed.
    KeyInFlight,
}

/// Not enough stock of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Shortage {
    /// The SKU.
    pub sku: String,
    /// Units the order asks for.
    pub requested: i64,
    /// Units available in the store.
    pub available: i64,
}

impl Rejection {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Malformed(_) => 400,
            Rejection::Invalid(_) | Rejection::KeyReused => 422,
            Rejection::InsufficientStock(_) | Rejection::AlreadyCancelled(_) | Rejection::KeyInFlight => 409,
            Rejection::UnknownOrder(_) => 404,
        }
    }

    /// The JSON error body.
    pub fn body(&self) -> Value {
        match self {
            Rejection::Malformed(why) => json!({"error": format!("the request body is not valid: {why}")}),
            Rejection::Invalid(fields) => json!({"error": "the request has invalid fields", "fields": fields}),
            Rejection::InsufficientStock(items) => {
                json!({"error": "not enough stock for the order", "items": items})
            }
            Rejection::UnknownOrder(id) => json!({"error": format!("no order {id:?}")}),
            Rejection::AlreadyCancelled(id) => json!({"error": format!("order {id:?} is already cancelled")}),
            Rejection::KeyReused => json!({
                "error": "this Idempotency-Key was already used for a different request; use a new key for a new request",
                "fields": [{"field": "Idempotency-Key", "message": "was used for a different request"}],
            }),
            Rejection::KeyInFlight => {
                json!({"error": "a request with this Idempotency-Key is still being processed; retry shortly"})
            }
        }
    }
}

/// A valid "place an order" request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaceOrder {
    /// Who orders.
    pub customer_id: u64,
    /// ISO 4217 code; `USD` when not given.
    pub currency: String,
    /// One or more items.
    pub line_items: Vec<LineItem>,
}

impl PlaceOrder {
    /// Sum of the line totals.
    pub fn total_cents(&self) -> i64 {
        self.line_items.iter().fold(0i64, |sum, item| sum.saturating_add(item.line_total_cents()))
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Rejection::Malformed(format!("expected a JSON object, got {}", kind(&other)))),
        Err(error) => Err(Rejection::Malformed(error.to_string())),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Collects field errors while a body is read.
#[derive(Default)]
struct Fields(Vec<FieldError>);

impl Fields {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    fn unsigned(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> Option<u64> {
        match map.get(key) {
            None | Some(Value::Null) => {
                self.error(path, "is required");
                None
            }
            Some(value) => match value.as_u64() {
                Some(number) => Some(number),
                None => {
                    self.error(path, format!("must be a whole number of at least 0 (got {value})"));
                    None
                }
            },
        }
    }

    fn integer(&mut self, map: &Map<String, Value>, key: &str, path: &str, minimum: i64) -> Option<i64> {
        match map.get(key) {
            None | Some(Value::Null) => {
                self.error(path, "is required");
                None
            }
            Some(value) => match value.as_i64() {
                Some(number) if number >= minimum => Some(number),
                Some(number) => {
                    self.error(path, format!("must be at least {minimum} (got {number})"));
                    None
                }
                None => {
                    let unit = if key.ends_with("_cents") { " (money is in whole cents)" } else { "" };
                    self.error(path, format!("must be a whole number{unit} (got {value})"));
                    None
                }
            },
        }
    }

    fn text(&mut self, map: &Map<String, Value>, key: &str, path: &str, required: bool) -> Option<String> {
        match map.get(key) {
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.error(path, "is required");
                None
            }
            Some(Value::String(text)) if required && text.trim().is_empty() => {
                self.error(path, "must not be empty");
                None
            }
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => {
                self.error(path, format!("must be a string (got {})", kind(other)));
                None
            }
        }
    }
}

/// Reads a "place an order" body.
pub fn place_order(body: &[u8]) -> Result<PlaceOrder, Rejection> {
    let map = object(body)?;
    let mut fields = Fields::default();
    let customer_id = fields.unsigned(&map, "customer_id", "customer_id");
    let currency = fields.text(&map, "currency", "currency", false);
    if let Some(code) = &currency
        && !(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()))
    {
        fields.error("currency", format!("must be a three-letter ISO 4217 code such as \"USD\" (got {code:?})"));
    }
    let mut line_items = Vec::new();
    match map.get("line_items") {
        None | Some(Value::Null) => fields.error("line_items", "is required: an order needs at least one item"),
        Some(Value::Array(items)) if items.is_empty() => {
            fields.error("line_items", "must hold at least one item");
        }
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let path = |key: &str| format!("line_items[{index}].{key}");
                let Value::Object(item) = item else {
                    fields.error(format!("line_items[{index}]"), format!("must be an object (got {})", kind(item)));
                    continue;
                };
                let product_id = fields.unsigned(item, "product_id", &path("product_id"));
                let sku = fields.text(item, "sku", &path("sku"), true);
                let title = fields.text(item, "title", &path("title"), false);
                let quantity = fields.integer(item, "quantity", &path("quantity"), 1);
                let unit_price_cents = fields.integer(item, "unit_price_cents", &path("unit_price_cents"), 0);
                if let (Some(product_id), Some(sku), Some(quantity), Some(unit_price_cents)) =
                    (product_id, sku, quantity, unit_price_cents)
                {
                    let title = title.unwrap_or_else(|| sku.clone());
                    line_items.push(LineItem {
                        product_id,
                        sku: sku.into(),
                        title: title.into(),
                        quantity,
                        unit_price_cents,
                    });
                }
            }
        }
        Some(other) => fields.error("line_items", format!("must be an array of items (got {})", kind(other))),
    }
    match customer_id {
        Some(customer_id) if fields.0.is_empty() => {
            Ok(PlaceOrder { customer_id, currency: currency.unwrap_or_else(|| "USD".into()), line_items })
        }
        _ => Err(Rejection::Invalid(fields.0)),
    }
}

/// Reads a "set stock" body: `{"available": N}` with N ≥ 0 (`quantity`
/// is taken as another name for `available`).
pub fn set_stock(body: &[u8]) -> Result<i64, Rejection> {
    let map = object(body)?;
    let mut fields = Fields::default();
    let name = if !map.contains_key("available") && map.contains_key("quantity") { "quantity" } else { "available" };
    let available = fields.integer(&map, name, name, 0);
    match available {
        Some(available) if fields.0.is_empty() => Ok(available),
        _ => Err(Rejection::Invalid(fields.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> Vec<(String, String)> {
        match place_order(body.as_bytes()) {
            Err(Rejection::Invalid(fields)) => fields.into_iter().map(|f| (f.field, f.message)).collect(),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_valid_order() {
        let order = place_order(
            br#"{"customer_id": 5, "line_items": [{"product_id": 1, "sku": "A", "quantity": 2, "unit_price_cents": 150}]}"#,
        )
        .unwrap();
        assert_eq!(order.currency, "USD");
        assert_eq!(order.total_cents(), 300);
        assert_eq!(&*order.line_items[0].title, "A");
    }

    #[test]
    fn reports_every_field_at_once() {
        let errors = invalid(
            r#"{"currency": "usd", "line_items": [{"product_id": -1, "sku": "", "quantity": 0, "unit_price_cents": 1.5}, 7]}"#,
        );
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "customer_id",
                "currency",
                "line_items[0].product_id",
                "line_items[0].sku",
                "line_items[0].quantity",
                "line_items[0].unit_price_cents",
                "line_items[1]"
            ]
        );
        assert_eq!(errors[4].1, "must be at least 1 (got 0)");
        assert_eq!(errors[5].1, "must be a whole number (money is in whole cents) (got 1.5)");
        assert_eq!(invalid(r#"{"customer_id": 1, "line_items": []}"#)[0].1, "must hold at least one item");
    }

    #[test]
    fn malformed_bodies_are_400() {
        assert_eq!(place_order(b"{nope").unwrap_err().status(), 400);
        assert_eq!(place_order(b"[1]").unwrap_err().status(), 400);
        assert_eq!(set_stock(br#"{"available": -1}"#).unwrap_err().status(), 422);
        assert_eq!(set_stock(br#"{"available": 10}"#).unwrap(), 10);
        assert_eq!(set_stock(br#"{"quantity": 7}"#).unwrap(), 7);
        assert_eq!(
            set_stock(br#"{}"#).unwrap_err(),
            Rejection::Invalid(vec![FieldError { field: "available".into(), message: "is required".into() }])
        );
    }
}

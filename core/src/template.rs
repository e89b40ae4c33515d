//! Key templates: text with `{field}` placeholders over a view's key
//! fields, such as `order_summary:{store_id}:{date}`. Redis sinks name
//! hashes and sorted sets with them.

use crate::value::{FieldType, Value, write_date};

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    /// The index of a key field.
    Field(usize),
}

impl KeyTemplate {
    /// Parses `text`; placeholders must name one of `fields` (the view's key
    /// fields, in order). The error says what is wrong and where (1-based
    /// character column within the template).
    pub fn parse(text: &str, fields: &[String]) -> Result<KeyTemplate, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    let column = text[..at].chars().count() + 1;
                    if !closed {
                        return Err(format!("the '{{' at character {column} is never closed with '}}'"));
                    }
                    let Some(index) = fields.iter().position(|f| *f == name) else {
                        return Err(format!(
                            "{{{name}}} at character {column} is not a key field of the view; key fields: {}",
                            fields.join(", ")
                        ));
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(index));
                }
                '}' => {
                    let column = text[..at].chars().count() + 1;
                    return Err(format!("the '}}' at character {column} closes no '{{'"));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(KeyTemplate { parts })
    }

    /// The key fields the template names, by index.
    pub fn fields(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(index) => Some(*index),
            Part::Text(_) => None,
        })
    }

    /// Appends the template filled with one row's key to `out`.
    pub fn render_into(&self, key: &[Value], out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(index) => write_plain(key.get(*index).unwrap_or(&Value::Null), out),
            }
        }
    }

    /// The template filled with one row's key.
    pub fn render(&self, key: &[Value]) -> String {
        let mut out = String::new();
        self.render_into(key, &mut out);
        out
    }

    /// The text of key field `field` in `rendered`, a rendering of this
    /// template, when the rendering splits one way only: each field that a
    /// literal follows is a number, a date or a boolean (`types`: the key
    /// fields' types) and the literal does not start with a letter, a digit
    /// or `-`. `None` otherwise, or when `rendered` is no rendering of it.
    pub fn field_text<'a>(&self, rendered: &'a str, field: usize, types: &[FieldType]) -> Option<&'a str> {
        let mut rest = rendered;
        let mut found = None;
        for (at, part) in self.parts.iter().enumerate() {
            match part {
                Part::Text(text) => rest = rest.strip_prefix(text.as_str())?,
                Part::Field(index) => {
                    let end = match self.parts.get(at + 1) {
                        None => rest.len(),
                        Some(Part::Text(next)) => {
                            let first = next.chars().next()?;
                            let plain = matches!(
                                types.get(*index)?,
                                FieldType::UInt | FieldType::Int | FieldType::Date | FieldType::Bool
                            );
                            if !plain || first.is_ascii_alphanumeric() || first == '-' {
                                return None;
                            }
                            rest.find(first)?
                        }
                        Some(Part::Field(_)) => return None,
                    };
                    if *index == field {
                        found = Some(&rest[..end]);
                    }
                    rest = &rest[end..];
                }
            }
        }
        found.filter(|_| rest.is_empty())
    }

    /// A glob (Redis `SCAN MATCH`) matching every rendering.
    pub fn glob(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => {
                    for c in text.chars() {
                        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                }
                Part::Field(_) => {
                    if !out.ends_with('*') {
                        out.push('*');
                    }
                }
            }
        }
        out
    }
}

/// A value as plain text: numbers in decimal, dates `YYYY-MM-DD`, instants
/// RFC 3339, text as is, null as nothing.
pub fn write_plain(value: &Value, out: &mut String) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::UInt(v) => out.push_str(itoa::Buffer::new().format(*v)),
        Value::Int(v) => out.push_str(itoa::Buffer::new().format(*v)),
        Value::Date(d) => write_date(*d, out),
        Value::Timestamp(t) => out.push_str(&t.to_rfc3339()),
        Value::Text(s) => out.push_str(s),
    }
}

/// Reads back what [`write_plain`] wrote for a field of type `ty` (also the
/// form of values in query strings); `None` when it is not one.
pub fn parse_plain(text: &str, ty: FieldType) -> Option<Value> {
    match ty {
        FieldType::UInt => text.parse().ok().map(Value::UInt),
        FieldType::Int => text.parse().ok().map(Value::Int),
        FieldType::Text => Some(Value::Text(text.into())),
        FieldType::Date => crate::value::parse_date(text).map(Value::Date),
        FieldType::Timestamp => crate::value::Timestamp::parse_rfc3339(text).map(Value::Timestamp),
        FieldType::Bool => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_date;

    fn fields() -> Vec<String> {
        vec!["store_id".into(), "date".into()]
    }

    #[test]
    fn a_rendering_gives_back_its_field_texts_when_it_splits_one_way() {
        let names: Vec<String> = vec!["store_id".into(), "product_id".into(), "date".into(), "code".into()];
        let types = [FieldType::UInt, FieldType::UInt, FieldType::Date, FieldType::Text];
        let template = KeyTemplate::parse("sales:{store_id}:{date}:{product_id}", &names).unwrap();
        let key = [Value::UInt(7), Value::UInt(42), Value::Date(parse_date("2024-03-01").unwrap())];
        let rendered = template.render(&key);
        assert_eq!(template.field_text(&rendered, 2, &types), Some("2024-03-01"));
        assert_eq!(template.field_text(&rendered, 0, &types), Some("7"));
        assert_eq!(template.field_text(&rendered, 1, &types), Some("42"));
        assert_eq!(template.field_text("other:7:2024-03-01:42", 2, &types), None);
        assert_eq!(template.field_text("sales:7:2024-03-01", 2, &types), None);
        // A text field before a literal may hold the literal: no split.
        let text_first = KeyTemplate::parse("s:{code}:{date}", &names).unwrap();
        assert_eq!(text_first.field_text("s:a:b:2024-03-01", 2, &types), None);
        // Last, it takes the rest; a literal starting like a date does not split.
        let text_last = KeyTemplate::parse("s:{date}:{code}", &names).unwrap();
        assert_eq!(text_last.field_text("s:2024-03-01:a:b", 3, &types), Some("a:b"));
        let glued = KeyTemplate::parse("s:{store_id}-{date}", &names).unwrap();
        assert_eq!(glued.field_text("s:7-2024-03-01", 2, &types), None);
        let adjacent = KeyTemplate::parse("s:{store_id}{date}", &names).unwrap();
        assert_eq!(adjacent.field_text("s:72024-03-01", 2, &types), None);
    }

    #[test]
    fn renders_key_fields_plainly() {
        let template = KeyTemplate::parse("order_summary:{store_id}:{date}", &fields()).unwrap();
        let key = [Value::UInt(7), Value::Date(parse_date("2024-03-01").unwrap())];
        assert_eq!(template.render(&key), "order_summary:7:2024-03-01");
        assert_eq!(template.fields().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(template.glob(), "order_summary:*:*");
    }

    #[test]
    fn reports_unknown_fields_and_unbalanced_braces() {
        let error = KeyTemplate::parse("x:{store}", &fields()).unwrap_err();
        assert_eq!(error, "{store} at character 3 is not a key field of the view; key fields: store_id, date");
        assert!(KeyTemplate::parse("x:{store_id", &fields()).unwrap_err().contains("never closed"));
        assert!(KeyTemplate::parse("x:}", &fields()).unwrap_err().contains("closes no"));
    }
}

//! Key templates: text with `{field}` placeholders over a view's key
//! fields, such as `order_summary:{store_id}:{date}`. Redis sinks name
//! hashes and sorted sets with them.

use std::fmt::Write as _;

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
        Value::UInt(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Int(v) => {
            let _ = write!(out, "{v}");
        }
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

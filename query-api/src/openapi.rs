//! The OpenAPI document a server serves: the routes of every server
//! ([`OPENAPI`]), and a path of its own for each view its config declares.
//!
//! `GET /v1/views/{view}` takes each key field of the view as a query
//! parameter, so one generic path cannot say which. A server with views
//! replaces it (and its change stream) by one path per view, with the
//! view's key fields as typed parameters and its rows as a typed object: a
//! client generated from the document, or a tester fuzzing it, asks for
//! views that exist with filters that parse.

use serde_json::{Map, Value, json};

use projector_core::value::FieldType;

use crate::serving::{ServingStore, ServingView};

/// The routes of every server, OpenAPI 3.0.
pub const OPENAPI: &str = include_str!("../api/openapi.json");

const GENERIC_ROWS: &str = "/v1/views/{view}";
const GENERIC_CHANGES: &str = "/v1/views/{view}/changes";

/// The document of a server with the views of `reads` (the generic view
/// paths when it serves none).
pub fn document(reads: Option<&ServingStore>) -> Value {
    // The document is a constant of this crate; a test reads it.
    let mut document: Value = serde_json::from_str(OPENAPI).unwrap_or_else(|_| json!({}));
    let Some(reads) = reads else { return document };
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else { return document };
    let (Some(rows), Some(changes)) = (paths.remove(GENERIC_ROWS), paths.remove(GENERIC_CHANGES)) else {
        return document;
    };
    for view in reads.views() {
        paths.insert(format!("/v1/views/{}", view.name), view_rows(view, &rows));
        paths.insert(format!("/v1/views/{}/changes", view.name), specialise(view, &changes));
    }
    document
}

/// `GET /v1/views/<view>`: the generic operation with the view's key
/// fields in place of the `view` path parameter, and its row type.
fn view_rows(view: &ServingView, generic: &Value) -> Value {
    let mut path = specialise(view, generic);
    let row = row_schema(view);
    if let Some(rows) = path.pointer_mut("/get/responses/200/content/application~1json/schema/properties/rows/items") {
        *rows = row;
    }
    if let Some(summary) = path.pointer_mut("/get/summary") {
        *summary = json!(format!(
            "rows of view {}, filtered by equality on its key fields ({}), a page at a time in key order",
            view.name,
            view.key_names().collect::<Vec<_>>().join(", ")
        ));
    }
    path
}

/// `generic` with its `view` path parameter replaced by the view's key
/// fields, as optional query parameters.
fn specialise(view: &ServingView, generic: &Value) -> Value {
    let mut path = generic.clone();
    if let Some(parameters) = path.pointer_mut("/get/parameters").and_then(Value::as_array_mut) {
        let keys = view.fields[..view.key_len].iter().map(|(name, ty)| {
            json!({
                "name": name,
                "in": "query",
                "description": format!("only rows whose {name} is this"),
                "schema": field_schema(*ty),
            })
        });
        let rest: Vec<Value> = parameters.drain(..).filter(|p| p.get("name") != Some(&json!("view"))).collect();
        parameters.extend(keys);
        parameters.extend(rest);
    }
    path
}

/// The JSON object of one row: every field, keys first.
fn row_schema(view: &ServingView) -> Value {
    let mut properties = Map::new();
    for (name, ty) in &view.fields {
        let mut schema = field_schema(*ty);
        if let Some(schema) = schema.as_object_mut() {
            // A field without a value (a measure with no input, a label
            // no rule gives, a group key of a null) is null.
            schema.insert("nullable".into(), json!(true));
        }
        properties.insert(name.clone(), schema);
    }
    let required: Vec<&str> = view.fields.iter().map(|(name, _)| name.as_str()).collect();
    json!({"type": "object", "required": required, "properties": properties})
}

/// How a field of `ty` is written, in a row and in a query parameter.
fn field_schema(ty: FieldType) -> Value {
    match ty {
        FieldType::UInt => json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
        FieldType::Int => json!({"type": "integer", "format": "int64"}),
        FieldType::Text => json!({"type": "string"}),
        FieldType::Date => json!({"type": "string", "format": "date"}),
        FieldType::Timestamp => json!({"type": "string", "format": "date-time"}),
        FieldType::Bool => json!({"type": "boolean"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_parses_and_has_the_generic_view_paths() {
        let document: Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(document["paths"][GENERIC_ROWS].is_object());
        assert!(document["paths"][GENERIC_CHANGES].is_object());
        assert_eq!(document, super::document(None));
    }
}

//! The read routes of contract section 6, answered from the serving store,
//! or for a view in `api.read_from` from its sink's store (a
//! [`ViewReader`]).
//!
//! Each route says which rows it wants as a [`Selection`] and computes its
//! answer from them. From the serving store an answer is computed under
//! the view's read lock, so it reflects one completed batch. Every answer
//! says how fresh it is: the JSON field `freshness`
//! and the headers `X-Projector-Positions` (next offset per source and
//! partition), `X-Projector-Events` (their sum), `X-Projector-Newest-Event-At`
//! and `X-Projector-Newest-Event-Age-Ms`. The `ETag` is derived from the
//! view and the positions it reflects (the view's content is a function of
//! them), so `If-None-Match` with it answers `304 Not Modified` until a
//! batch moves the view, also across restarts.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use projector_core::sink::{ReadError, Selection, ViewChange, ViewReader};
use serde_json::{Map, Value as Json, json};
use tokio::sync::broadcast::error::RecvError;

use projector_core::template::parse_plain;
use projector_core::value::{FieldType, Row, Timestamp, Value, format_date, parse_date};
use projector_core::view::PAGING_PARAMETERS;

use crate::auth::{Caller, Right};
use crate::serving::{Freshness, ServingStore, ServingView, ViewState, scan};
use crate::{ApiState, error};

/// Longest query string accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 2048;
/// Most rows one page of `/v1/views/{view}` holds.
pub const MAX_PAGE_ROWS: usize = 1000;
/// Rows of a page when `limit` is not given.
pub const DEFAULT_PAGE_ROWS: usize = 100;
/// Longest date range of one request, in days.
pub const MAX_RANGE_DAYS: i32 = 366;
/// Days of a range when `from` is not given.
pub const DEFAULT_RANGE_DAYS: i32 = 30;
/// Most products a top-products answer lists.
pub const MAX_TOP_PRODUCTS: usize = 1000;

/// The query parameters of a request, each name at most once.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(uri: &Uri, allowed: &[&str]) -> Result<Params, Response> {
        let query = uri.query().unwrap_or("");
        if query.len() > MAX_QUERY_BYTES {
            return Err(error(414, format!("the query string is longer than {MAX_QUERY_BYTES} bytes")));
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                let known = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                return Err(error(400, format!("unknown query parameter {name:?}; this route takes: {known}")));
            }
            if pairs.iter().any(|(seen, _)| *seen == name) {
                return Err(error(400, format!("query parameter {name:?} is given more than once")));
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Params(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn reads(state: &ApiState) -> Result<&Arc<ServingStore>, Response> {
    state.reads.as_ref().ok_or_else(|| error(503, "this server serves no views; it runs without a pipeline"))
}

/// The caller of a store route: may read, and may read `store`.
fn store_reader<'a>(state: &'a ApiState, headers: &HeaderMap, store: &str) -> Result<(Caller<'a>, u64), Response> {
    let caller = state.auth.caller(headers, Right::Read)?;
    let store_id = store_id(store)?;
    caller.check_store(store_id)?;
    Ok((caller, store_id))
}

/// The declared view `name`; `404` naming the views there are.
fn declared_view<'a>(store: &'a ServingStore, name: &str) -> Result<&'a Arc<ServingView>, Response> {
    store.view(name).ok_or_else(|| {
        let names: Vec<&str> = store.names().collect();
        error(404, format!("no view {name:?}; this config declares: {}", names.join(", ")))
    })
}

/// The view `name` with the fields a route needs, by index.
fn seed_view<'a>(
    store: &'a ServingStore,
    name: &str,
    fields: &[&str],
) -> Result<(&'a Arc<ServingView>, Vec<usize>), Response> {
    let view = store.view(name).ok_or_else(|| {
        error(
            404,
            format!("this config declares no view {name:?}, which this route reads; declare it in pipelines.yaml"),
        )
    })?;
    let indexes = fields
        .iter()
        .map(|field| {
            view.field(field).ok_or_else(|| {
                error(404, format!("the view {name:?} of this config has no field {field:?}, which this route needs"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if view.key_len == 0 || view.fields[0].0 != "store_id" {
        return Err(error(404, format!("the view {name:?} of this config is not keyed by store_id first")));
    }
    Ok((view, indexes))
}

/// A route's date range selects rows by key field `date`: it must be one.
fn dated_key(view: &ServingView, date: usize) -> Result<(), Response> {
    if date >= view.key_len || view.fields[date].1 != FieldType::Date {
        return Err(error(404, format!("the view {:?} of this config has no date key field \"date\"", view.name)));
    }
    Ok(())
}

fn store_id(text: &str) -> Result<u64, Response> {
    text.parse()
        .map_err(|_| error(400, format!("store id {text:?} in the path is not a whole number from 0 to {}", u64::MAX)))
}

/// A field of a row (keys first, then values).
fn at<'a>(key: &'a Row, values: &'a Row, index: usize) -> &'a Value {
    if index < key.len() { &key[index] } else { values.get(index - key.len()).unwrap_or(&Value::Null) }
}

fn int(value: &Value) -> i128 {
    value.as_i128().unwrap_or(0)
}

fn row_object(view: &ServingView, key: &Row, values: &Row) -> Map<String, Json> {
    view.fields
        .iter()
        .zip(key.iter().chain(values.iter()))
        .map(|((name, _), value)| (name.clone(), value.to_json()))
        .collect()
}

fn example(ty: FieldType) -> &'static str {
    match ty {
        FieldType::UInt => "a whole number such as 42",
        FieldType::Int => "an integer such as -5",
        FieldType::Text => "text",
        FieldType::Date => "a date such as 2024-03-01",
        FieldType::Timestamp => "an RFC 3339 instant such as 2024-03-01T12:00:00Z",
        FieldType::Bool => "true or false",
    }
}

/// The inclusive date range of `from` and `to`: `to` defaults to the latest
/// date the store has (today when it has none), `from` to 30 days before
/// `to`.
fn date_range(params: &Params, latest: Option<&Value>) -> Result<(i32, i32), Response> {
    let latest = match latest {
        Some(Value::Date(day)) => Some(*day),
        _ => None,
    };
    let date = |name: &str| -> Result<Option<i32>, Response> {
        match params.get(name) {
            None => Ok(None),
            Some(text) => parse_date(text)
                .map(Some)
                .ok_or_else(|| error(400, format!("{name}={text:?} is not a date; write it as YYYY-MM-DD"))),
        }
    };
    let today = Timestamp::now().utc_day();
    let to = date("to")?.unwrap_or(latest.unwrap_or(today));
    let from = date("from")?.unwrap_or(to - (DEFAULT_RANGE_DAYS - 1));
    if from > to {
        return Err(error(400, format!("from ({}) is after to ({})", format_date(from), format_date(to))));
    }
    if to - from + 1 > MAX_RANGE_DAYS {
        return Err(error(
            400,
            format!("the range from {} to {} is longer than {MAX_RANGE_DAYS} days", format_date(from), format_date(to)),
        ));
    }
    Ok((from, to))
}

/// The greatest value of key field `field` among the rows whose key fields
/// equal `equal`.
fn latest_value(state: &ViewState, equal: &[(usize, Value)], field: usize) -> Option<Value> {
    let selection = Selection { equal: equal.to_vec(), ..Selection::default() };
    scan(state, &selection).filter_map(|(key, _)| key.get(field)).filter(|v| **v != Value::Null).max().cloned()
}

/// The ETag of a view as of `freshness`.
fn etag(view: &str, positions: &str) -> String {
    let mut hasher = DefaultHasher::new();
    view.hash(&mut hasher);
    positions.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

fn not_modified(request: &HeaderMap, tag: &str) -> bool {
    request
        .get_all("if-none-match")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|candidate| candidate.trim().trim_start_matches("W/"))
        .any(|candidate| candidate == tag || candidate == "*")
}

fn freshness_json(freshness: &Freshness) -> Json {
    json!({
        "positions": freshness.positions,
        "events": freshness.events as u64,
        "newest_event_at": freshness.newest_event_at.map(|t| t.to_rfc3339()),
        "newest_event_age_ms": freshness.newest_event_age_ms,
    })
}

/// The rows a read selected, in key order.
type Rows<'r, 'a> = &'r mut dyn Iterator<Item = (&'a Row, &'a Row)>;

/// What a route asks of the store before it selects rows: the latest value
/// of a key field among the rows whose key fields equal these (for a
/// default date range).
type Latest = Option<(Vec<(usize, Value)>, usize)>;

/// Answers one read of `view`: `select` says which rows (given the
/// `latest` value asked for, if any) and carries what `answer` needs
/// besides them; `answer` computes the body from the rows unless
/// `If-None-Match` says the client has it already.
///
/// From the in-process store, everything is computed under the view's read
/// lock: one completed batch. From a sink's store ([`ViewReader`]), the
/// store answers the rows with the position they reflect, off the event
/// loop.
async fn read<T>(
    store: &ServingStore,
    view: &ServingView,
    request: &HeaderMap,
    latest: Latest,
    select: impl FnOnce(Option<&Value>) -> Result<(Selection, T), Response>,
    answer: impl FnOnce(T, Rows<'_, '_>) -> Result<Map<String, Json>, Response>,
) -> Response {
    if let Some(reader) = view.reader() {
        return read_from(store, view, Arc::clone(reader), request, latest, select, answer).await;
    }
    let state = view.read();
    let freshness = store.freshness(&state);
    unless_cached(view, request, &freshness, || {
        let latest = latest.and_then(|(equal, field)| latest_value(&state, &equal, field));
        let (selection, carried) = select(latest.as_ref())?;
        answer(carried, &mut scan(&state, &selection))
    })
}

/// [`read`] from a sink's store.
async fn read_from<T>(
    store: &ServingStore,
    view: &ServingView,
    reader: Arc<dyn ViewReader>,
    request: &HeaderMap,
    latest: Latest,
    select: impl FnOnce(Option<&Value>) -> Result<(Selection, T), Response>,
    answer: impl FnOnce(T, Rows<'_, '_>) -> Result<Map<String, Json>, Response>,
) -> Response {
    let latest = match latest {
        None => None,
        Some((equal, field)) => match blocking(&reader, move |reader| reader.latest(&equal, field)).await {
            Ok(latest) => latest,
            Err(response) => return response,
        },
    };
    let (selection, carried) = match select(latest.as_ref()) {
        Ok(selected) => selected,
        Err(response) => return response,
    };
    let selected = match blocking(&reader, move |reader| reader.select(&selection)).await {
        Ok(selected) => selected,
        Err(response) => return response,
    };
    let freshness = store.freshness_of(&selected.positions, selected.newest_event_at);
    unless_cached(view, request, &freshness, || {
        answer(carried, &mut selected.rows.iter().map(|(key, values)| (key, values)))
    })
}

/// The answer to a read of `view` as fresh as `freshness`: `304` when
/// `If-None-Match` says the client has it already, else the body `answer`
/// computes (or its error).
fn unless_cached(
    view: &ServingView,
    request: &HeaderMap,
    freshness: &Freshness,
    answer: impl FnOnce() -> Result<Map<String, Json>, Response>,
) -> Response {
    let positions = freshness.positions.to_string();
    let tag = etag(&view.name, &positions);
    let body = if not_modified(request, &tag) {
        None
    } else {
        match answer() {
            Ok(body) => Some(body),
            Err(response) => return response,
        }
    };
    respond(tag, positions, freshness, body)
}

/// Runs a blocking call of `reader` off the event loop; its errors as
/// responses (`400` for a read the store cannot answer, `503` when it is
/// down).
async fn blocking<R: Send + 'static>(
    reader: &Arc<dyn ViewReader>,
    call: impl FnOnce(&dyn ViewReader) -> Result<R, ReadError> + Send + 'static,
) -> Result<R, Response> {
    let reader = Arc::clone(reader);
    let describe = reader.describe();
    match tokio::task::spawn_blocking(move || call(reader.as_ref())).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(ReadError::Unsupported(message))) => Err(error(400, format!("{describe}: {message}"))),
        Ok(Err(ReadError::Unavailable(message))) => {
            tracing::warn!(store = %describe, %message, "a read failed");
            Err(error(503, format!("{describe} cannot answer now: {message}; try again shortly")))
        }
        Err(_) => Err(error(500, format!("the read from {describe} failed"))),
    }
}

/// The response: `304` without a body, else `200` with the body and its
/// freshness; the freshness headers either way.
fn respond(tag: String, positions: String, freshness: &Freshness, body: Option<Map<String, Json>>) -> Response {
    let mut response = match body {
        Some(mut body) => {
            body.insert("freshness".into(), freshness_json(freshness));
            (StatusCode::OK, axum::Json(Json::Object(body))).into_response()
        }
        None => StatusCode::NOT_MODIFIED.into_response(),
    };
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("etag", tag);
    set("cache-control", "no-cache".into());
    set("x-projector-positions", positions);
    set("x-projector-events", freshness.events.to_string());
    if let Some(at) = freshness.newest_event_at {
        set("x-projector-newest-event-at", at.to_rfc3339());
    }
    if let Some(age) = freshness.newest_event_age_ms {
        set("x-projector-newest-event-age-ms", age.to_string());
    }
    response
}

/// The inclusive date range of a route as a selection of key field `date`
/// among the store's rows.
fn dated(store_id: u64, date: usize, (from, to): (i32, i32)) -> Selection {
    Selection {
        equal: vec![(0, Value::UInt(store_id))],
        range: Some((date, Value::Date(from), Value::Date(to))),
        ..Selection::default()
    }
}

/// `GET /v1/stores/{store_id}/orders/summary?from=&to=&group_by=day|overall`
pub async fn orders_summary(
    State(state): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let (_, store_id) = store_reader(&state, &headers, &store)?;
    let store_reads = reads(&state)?;
    let params = Params::parse(&uri, &["from", "to", "group_by"])?;
    let by_day = match params.get("group_by").unwrap_or("day") {
        "day" => true,
        "overall" => false,
        other => return Err(error(400, format!("group_by={other:?} is not known; use day or overall"))),
    };
    let fields = ["date", "order_count", "revenue_cents", "cancellation_count"];
    let (view, index) = seed_view(store_reads, "order_summary", &fields)?;
    let (date, orders, revenue, cancelled) = (index[0], index[1], index[2], index[3]);
    dated_key(view, date)?;
    let latest = Some((vec![(0, Value::UInt(store_id))], date));
    let select = |latest: Option<&Value>| {
        let range = date_range(&params, latest)?;
        Ok((dated(store_id, date, range), range))
    };
    Ok(read(store_reads, view, &headers, latest, select, |(from, to), in_range| {
        let mut body = Map::new();
        body.insert("store_id".into(), json!(store_id));
        body.insert("from".into(), json!(format_date(from)));
        body.insert("to".into(), json!(format_date(to)));
        body.insert("group_by".into(), json!(if by_day { "day" } else { "overall" }));
        if by_day {
            let rows: Vec<Json> = in_range.map(|(key, values)| Json::Object(row_object(view, key, values))).collect();
            body.insert("rows".into(), Json::Array(rows));
        } else {
            let (mut order_count, mut revenue_cents, mut cancellation_count) = (0i128, 0i128, 0i128);
            for (key, values) in in_range {
                order_count += int(at(key, values, orders));
                revenue_cents += int(at(key, values, revenue));
                cancellation_count += int(at(key, values, cancelled));
            }
            let average = if order_count == 0 { 0 } else { revenue_cents / order_count };
            body.insert(
                "total".into(),
                json!({
                    "order_count": order_count as i64,
                    "revenue_cents": revenue_cents as i64,
                    "average_order_value_cents": average as i64,
                    "cancellation_count": cancellation_count as i64,
                }),
            );
        }
        Ok(body)
    })
    .await)
}

/// `GET /v1/stores/{store_id}/products/top?from=&to=&limit=50`
pub async fn top_products(
    State(state): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let (_, store_id) = store_reader(&state, &headers, &store)?;
    let store_reads = reads(&state)?;
    let params = Params::parse(&uri, &["from", "to", "limit"])?;
    let limit = limit(&params, 50, MAX_TOP_PRODUCTS)?;
    let fields = ["product_id", "date", "units_sold", "revenue_cents", "order_count"];
    let (view, index) = seed_view(store_reads, "product_sales", &fields)?;
    dated_key(view, index[1])?;
    let latest = Some((vec![(0, Value::UInt(store_id))], index[1]));
    let select = |latest: Option<&Value>| {
        let range = date_range(&params, latest)?;
        Ok((dated(store_id, index[1], range), range))
    };
    Ok(read(store_reads, view, &headers, latest, select, |(from, to), rows| {
        // product_id -> (units, revenue, orders)
        let mut products: BTreeMap<&Value, (i128, i128, i128)> = BTreeMap::new();
        for (key, values) in rows {
            let entry = products.entry(at(key, values, index[0])).or_default();
            entry.0 += int(at(key, values, index[2]));
            entry.1 += int(at(key, values, index[3]));
            entry.2 += int(at(key, values, index[4]));
        }
        let mut ranked: Vec<(&Value, (i128, i128, i128))> = products.into_iter().collect();
        // Revenue descending, ties by product id ascending.
        ranked.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(b.0)));
        let top: Vec<Json> = ranked
            .into_iter()
            .take(limit)
            .map(|(product, (units, revenue, orders))| {
                json!({
                    "product_id": product.to_json(),
                    "units_sold": units as i64,
                    "revenue_cents": revenue as i64,
                    "order_count": orders as i64,
                })
            })
            .collect();
        let mut body = Map::new();
        body.insert("store_id".into(), json!(store_id));
        body.insert("from".into(), json!(format_date(from)));
        body.insert("to".into(), json!(format_date(to)));
        body.insert("products".into(), Json::Array(top));
        Ok(body)
    })
    .await)
}

/// `GET /v1/stores/{store_id}/customers/{customer_id}`
pub async fn customer(
    State(state): State<ApiState>,
    Path((store, customer)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let (_, store_id) = store_reader(&state, &headers, &store)?;
    let store_reads = reads(&state)?;
    let customer_id: u64 = customer.parse().map_err(|_| {
        error(400, format!("customer id {customer:?} in the path is not a whole number from 0 to {}", u64::MAX))
    })?;
    Params::parse(&uri, &[])?;
    let (view, _) = seed_view(store_reads, "customer_ltv", &["customer_id"])?;
    if view.key_len != 2 || view.fields[1].0 != "customer_id" {
        return Err(error(404, "the view \"customer_ltv\" of this config is not keyed by store_id, customer_id"));
    }
    let select = |_: Option<&Value>| {
        let equal = vec![(0, Value::UInt(store_id)), (1, Value::UInt(customer_id))];
        Ok((Selection { equal, limit: Some(1), ..Selection::default() }, ()))
    };
    Ok(read(store_reads, view, &headers, None, select, |(), rows| match rows.next() {
        Some((key, values)) => Ok(row_object(view, key, values)),
        None => Err(error(404, format!("store {store_id} has no customer {customer_id} with an order"))),
    })
    .await)
}

/// `GET /v1/stores/{store_id}/customers/segments`
pub async fn segments(
    State(state): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let (_, store_id) = store_reader(&state, &headers, &store)?;
    let store_reads = reads(&state)?;
    Params::parse(&uri, &[])?;
    let (view, index) = seed_view(store_reads, "customer_ltv", &["segment", "lifetime_value_cents"])?;
    let select =
        |_: Option<&Value>| Ok((Selection { equal: vec![(0, Value::UInt(store_id))], ..Selection::default() }, ()));
    Ok(read(store_reads, view, &headers, None, select, |(), rows| {
        let mut segments: BTreeMap<String, (u64, i128)> = BTreeMap::new();
        for (key, values) in rows {
            let segment = match at(key, values, index[0]) {
                Value::Text(text) => text.to_string(),
                Value::Null => String::new(),
                other => other.to_json().to_string(),
            };
            let entry = segments.entry(segment).or_default();
            entry.0 += 1;
            entry.1 += int(at(key, values, index[1]));
        }
        let list: Vec<Json> = segments
            .into_iter()
            .map(|(segment, (customers, value))| {
                json!({"segment": segment, "customers": customers, "lifetime_value_cents": value as i64})
            })
            .collect();
        let mut body = Map::new();
        body.insert("store_id".into(), json!(store_id));
        body.insert("segments".into(), Json::Array(list));
        Ok(body)
    })
    .await)
}

/// `GET /v1/orders/{order_id}`: the order's current state.
pub async fn order(
    State(state): State<ApiState>,
    Path(order_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let caller = state.auth.caller(&headers, Right::Read)?;
    let store_reads = reads(&state)?;
    Params::parse(&uri, &[])?;
    let view = store_reads.orders();
    let select = |_: Option<&Value>| {
        let equal = vec![(0, Value::Text(order_id.as_str().into()))];
        Ok((Selection { equal, limit: Some(1), ..Selection::default() }, ()))
    };
    Ok(read(store_reads, view, &headers, None, select, |(), rows| {
        let found = rows.next().filter(|(_, values)| match values.first() {
            // An order of a store outside the token is unknown to it.
            Some(Value::UInt(store_id)) => caller.check_store(*store_id).is_ok(),
            _ => false,
        });
        let Some((key, values)) = found else {
            return Err(error(404, format!("no order {order_id:?} (yet: the views may not have read it)")));
        };
        let mut body = row_object(view, key, values);
        if let Some(Json::String(items)) = body.get("line_items") {
            let items: Json = serde_json::from_str(items).unwrap_or(Json::Null);
            body.insert("line_items".into(), items);
        }
        Ok(body)
    })
    .await)
}

fn limit(params: &Params, default: usize, max: usize) -> Result<usize, Response> {
    match params.get("limit") {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
            _ => Err(error(400, format!("limit={text:?} must be a whole number from 1 to {max}"))),
        },
    }
}

/// `GET /v1/views/{view}?<key field>=<value>&…&limit=&after=`: rows in key
/// order, filtered by key fields, a page at a time; `next` is the path of
/// the next page (`null` on the last).
pub async fn view_rows(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let caller = state.auth.caller(&headers, Right::Read)?;
    let store_reads = reads(&state)?;
    let view = declared_view(store_reads, &name)?;
    let mut allowed: Vec<&str> = view.key_names().collect();
    allowed.extend(PAGING_PARAMETERS);
    let params = Params::parse(&uri, &allowed)?;
    let limit = limit(&params, DEFAULT_PAGE_ROWS, MAX_PAGE_ROWS)?;
    let filter = row_filter(view, &params, &caller)?;
    let after = match params.get("after") {
        None => None,
        Some(text) => Some(cursor(view, text)?),
    };
    let select = |_: Option<&Value>| {
        // One more than the page: whether there is a next one.
        Ok((Selection { after, limit: Some(limit + 1), ..filter }, ()))
    };
    Ok(read(store_reads, view, &headers, None, select, |(), matching| {
        let mut rows = Vec::new();
        let mut last: Option<&Row> = None;
        let mut more = false;
        for (key, values) in matching {
            if rows.len() == limit {
                more = true;
                break;
            }
            rows.push(Json::Object(row_object(view, key, values)));
            last = Some(key);
        }
        let next = match (more, last) {
            (true, Some(key)) => {
                let token = Json::Array(key.iter().map(Value::to_json).collect()).to_string();
                let mut query = form_urlencoded::Serializer::new(String::new());
                for (name, value) in &params.0 {
                    if name != "after" {
                        query.append_pair(name, value);
                    }
                }
                query.append_pair("after", &token);
                Json::String(format!("{}?{}", uri.path(), query.finish()))
            }
            _ => Json::Null,
        };
        let mut body = Map::new();
        body.insert("view".into(), json!(view.name));
        body.insert("rows".into(), Json::Array(rows));
        body.insert("next".into(), next);
        Ok(body)
    })
    .await)
}

/// Most rows the snapshot that opens a change stream may hold.
pub const MAX_SNAPSHOT_ROWS: usize = 10_000;

/// `GET /v1/views/{view}/changes?<key field>=…`: Server-Sent Events. The
/// first event (`snapshot`) holds the matching rows as of one batch, each
/// later one (`changes`) the matching changes of one batch applied after
/// it: `{"op": "upsert", "row"}` or `{"op": "delete", "key"}`; both carry
/// `freshness`. A client that falls more than 256 batches behind gets a
/// `lagged` event and the stream ends (reconnect for a new snapshot).
pub async fn view_changes(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let caller = state.auth.caller(&headers, Right::Read)?;
    let store_reads = Arc::clone(reads(&state)?);
    let view = Arc::clone(declared_view(&store_reads, &name)?);
    let allowed: Vec<&str> = view.key_names().collect();
    let params = Params::parse(&uri, &allowed)?;
    let filter = row_filter(&view, &params, &caller)?;
    if let Some(reader) = view.reader() {
        return Err(error(
            400,
            format!(
                "view {name:?} is read from {}: change streams are served for views this process holds \
                 (api.read_from takes it out)",
                reader.describe()
            ),
        ));
    }
    let (snapshot, receiver) = view.subscribe();
    let rows: Vec<Json> = scan(&snapshot, &filter)
        .take(MAX_SNAPSHOT_ROWS + 1)
        .map(|(key, values)| Json::Object(row_object(&view, key, values)))
        .collect();
    let freshness = store_reads.freshness(&snapshot);
    drop(snapshot);
    if rows.len() > MAX_SNAPSHOT_ROWS {
        return Err(error(
            400,
            format!("more than {MAX_SNAPSHOT_ROWS} rows of {name:?} match; narrow the stream with key filters"),
        ));
    }
    let first = json!({"view": view.name, "rows": rows, "freshness": freshness_json(&freshness)});
    let first = Event::default().event("snapshot").data(first.to_string());
    let closing = state.closing.clone();
    let later = futures_util::stream::unfold(
        Some((receiver, view, store_reads, filter, closing)),
        |stream| async move {
            let (mut receiver, view, store, filter, mut closing) = stream?;
            loop {
                let received = tokio::select! {
                    received = receiver.recv() => received,
                    _ = closing.wait_for(|closing| *closing) => return None,
                };
                match received {
                    Ok(batch) => {
                        let ops = change_ops(&view, &batch.changes, &filter);
                        if ops.is_empty() {
                            continue;
                        }
                        let freshness = store.freshness_of(&batch.positions, batch.newest_event_at);
                        let data = json!({"changes": ops, "freshness": freshness_json(&freshness)});
                        let event = Event::default().event("changes").data(data.to_string());
                        return Some((Ok::<_, Infallible>(event), Some((receiver, view, store, filter, closing))));
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let data = json!({"error": format!("this stream fell {missed} batches behind; reconnect for a new snapshot")});
                        return Some((Ok(Event::default().event("lagged").data(data.to_string())), None));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let events = futures_util::stream::once(std::future::ready(Ok(first))).chain(later);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// The changes of one batch a stream shows: per key, an upsert of its new
/// row or the deletion of its key.
fn change_ops(view: &ServingView, changes: &[ViewChange], filter: &Selection) -> Vec<Json> {
    changes
        .chunk_by(|a, b| a.key == b.key)
        .filter(|group| filter.matches(&group[0].key))
        .map(|group| match group.iter().find(|c| c.diff > 0) {
            Some(added) => json!({"op": "upsert", "row": row_object(view, &added.key, &added.values)}),
            None => {
                let key: Map<String, Json> = view
                    .key_names()
                    .zip(group[0].key.iter())
                    .map(|(name, value)| (name.to_string(), value.to_json()))
                    .collect();
                json!({"op": "delete", "key": key})
            }
        })
        .collect()
}

/// Which rows of a view a request may see: equality filters on key fields
/// from the query, and for a token of some stores, only their rows.
fn row_filter(view: &ServingView, params: &Params, caller: &Caller<'_>) -> Result<Selection, Response> {
    let mut filters: Vec<(usize, Value)> = Vec::new();
    for (index, (field, ty)) in view.fields[..view.key_len].iter().enumerate() {
        if let Some(text) = params.get(field) {
            let value = parse_plain(text, *ty)
                .ok_or_else(|| error(400, format!("{field}={text:?} is not {}", example(*ty))))?;
            filters.push((index, value));
        }
    }
    // A token for some stores reads only their rows: those of a view
    // keyed by store_id, of its stores.
    let scope = match caller.stores() {
        None => None,
        Some(stores) => {
            let Some(index) = view.key_names().position(|name| name == "store_id") else {
                return Err(error(
                    403,
                    format!("view {:?} has no store_id key, so only a token for every store may read it", view.name),
                ));
            };
            if let Some((_, Value::UInt(store_id))) = filters.iter().find(|(i, _)| *i == index) {
                caller.check_store(*store_id)?;
            }
            Some((index, stores.iter().copied().collect()))
        }
    };
    Ok(Selection { equal: filters, scope, ..Selection::default() })
}

/// The key a page token (`after`) names: a JSON array of the key's values.
fn cursor(view: &ServingView, text: &str) -> Result<Row, Response> {
    let bad = || error(400, format!("after={text:?} is not a page token; use the `next` path of the previous page"));
    let items: Vec<Json> = serde_json::from_str(text).map_err(|_| bad())?;
    if items.len() != view.key_len {
        return Err(bad());
    }
    let values = items
        .iter()
        .zip(&view.fields[..view.key_len])
        .map(|(item, (_, ty))| match item {
            Json::String(text) => parse_plain(text, *ty),
            Json::Number(number) => parse_plain(&number.to_string(), *ty),
            Json::Bool(flag) => parse_plain(&flag.to_string(), *ty),
            Json::Null => Some(Value::Null),
            _ => None,
        })
        .collect::<Option<Vec<Value>>>()
        .ok_or_else(bad)?;
    Ok(values.into())
}

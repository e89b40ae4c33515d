//! The HTTP API of Projector (axum on hyper).
//!
//! It carries the command routes of contract section 6 (handlers read the
//! path, headers and body, call [`CommandService`] and render its answer),
//! the read routes ([`reads`], answered from the in-process
//! [`serving::ServingStore`] the pipeline feeds) and `/healthz`. Every
//! error is JSON with a message a person can act on.

// Helpers return the error response itself (`Result<_, Response>`), which
// is large; it is built once per failed request, so boxing buys nothing.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tracing::info;

use projector_commands::service::CommandService;
use projector_commands::state::Answer;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub mod auth;
pub mod metrics;
pub mod openapi;
pub mod reads;
pub mod serving;

use auth::{Auth, Right};

/// What the routes share.
#[derive(Clone)]
pub struct ApiState {
    /// The command side, when the config has one.
    pub commands: Option<Arc<CommandService>>,
    /// The views, when a pipeline runs in this process.
    pub reads: Option<Arc<serving::ServingStore>>,
    /// Who may call what.
    pub auth: Arc<Auth>,
    /// Turns `true` when the server stops: change streams end.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Request durations and the pipeline's counters.
    pub metrics: Arc<metrics::Metrics>,
}

/// A JSON response.
fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

pub(crate) fn error(status: u16, message: impl Into<String>) -> Response {
    json_response(status, json!({"error": message.into()}))
}

fn answer(answer: Answer) -> Response {
    json_response(answer.status, answer.body)
}

/// The router of every route.
pub fn router(state: ApiState) -> Router {
    // The views a server serves are fixed when it starts, and so is its
    // description: rendered once, not at each request.
    let description = Bytes::from(openapi::document(state.reads.as_deref()).to_string());
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/v1/openapi.json", get(move || openapi(description.clone())))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/stores/{store_id}/orders", post(place_order))
        .route("/v1/orders/{order_id}/cancel", post(cancel_order))
        .route("/v1/stores/{store_id}/inventory/{sku}", put(set_stock))
        .route("/v1/stores/{store_id}/orders/summary", get(reads::orders_summary))
        .route("/v1/stores/{store_id}/products/top", get(reads::top_products))
        .route("/v1/stores/{store_id}/customers/segments", get(reads::segments))
        .route("/v1/stores/{store_id}/customers/{customer_id}", get(reads::customer))
        .route("/v1/views/{view}", get(reads::view_rows))
        .route("/v1/views/{view}/changes", get(reads::view_changes))
        .route("/v1/orders/{order_id}", get(reads::order))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// The dashboard page: self-contained (no CDN), it polls the read API.
pub const DASHBOARD: &str = include_str!("../api/dashboard.html");

/// `GET /`: the dashboard (no token needed: it holds no data; it asks for
/// a token if the API needs one).
async fn dashboard() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], DASHBOARD).into_response()
}

/// `GET /v1/openapi.json` (no token needed): the routes, with a path of
/// its own for each view this server serves ([`openapi::document`]).
async fn openapi(description: Bytes) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], description).into_response()
}

/// `GET /readyz`: `200` once every view reflects the log up to where it
/// ended when the pipeline started, `503` with each view's progress before.
async fn ready(State(state): State<ApiState>) -> Response {
    match state.reads.as_ref().map(|store| store.readiness()) {
        None | Some(Ok(())) => json_response(200, json!({"status": "ready"})),
        Some(Err(behind)) => {
            let views: serde_json::Map<String, Value> =
                behind.into_iter().map(|(view, events)| (view, json!({"events": events as u64}))).collect();
            json_response(
                503,
                json!({"status": "catching up", "error": "the views have not caught up with the log yet", "views": views}),
            )
        }
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(404, format!("no route for {method} {}", uri.path()))
}

fn commands(state: &ApiState) -> Result<&Arc<CommandService>, Response> {
    state
        .commands
        .as_ref()
        .ok_or_else(|| error(503, "this server has no command side; declare `commands:` in pipelines.yaml"))
}

fn store_id(text: &str) -> Result<u64, Response> {
    text.parse().map_err(|_| error(400, format!("store id {text:?} is not a whole number from 0 to {}", u64::MAX)))
}

/// The `Idempotency-Key` header, if any: printable ASCII, 1 to 255 bytes.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_string()))
        }
        _ => Err(error(400, "the Idempotency-Key header must be 1 to 255 printable ASCII characters without spaces")),
    }
}

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|rejection| {
        let status = rejection.status().as_u16();
        if status == 413 {
            error(413, format!("the request body is larger than {MAX_BODY_BYTES} bytes"))
        } else {
            error(status, format!("the request body cannot be read: {rejection}"))
        }
    })
}

async fn place_order(
    State(state): State<ApiState>,
    Path(store): Path<String>,
    headers: HeaderMap,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    let caller = state.auth.caller(&headers, Right::Command)?;
    let store_id = store_id(&store)?;
    caller.check_store(store_id)?;
    let service = commands(&state)?;
    let key = idempotency_key(&headers)?;
    let payload = body(payload)?;
    Ok(answer(service.place_order(store_id, &payload, key.as_deref()).await))
}

async fn cancel_order(
    State(state): State<ApiState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let caller = state.auth.caller(&headers, Right::Command)?;
    let service = commands(&state)?;
    if caller.stores().is_some() {
        // An order of a store outside the token is unknown to it: a 403
        // would tell that the order exists.
        match service.order_store(&order_id).await {
            Some(store_id) if caller.check_store(store_id).is_ok() => {}
            _ => return Err(error(404, format!("no order {order_id:?}"))),
        }
    }
    let key = idempotency_key(&headers)?;
    Ok(answer(service.cancel_order(&order_id, key.as_deref()).await))
}

async fn set_stock(
    State(state): State<ApiState>,
    Path((store, sku)): Path<(String, String)>,
    headers: HeaderMap,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    let caller = state.auth.caller(&headers, Right::Command)?;
    let store_id = store_id(&store)?;
    caller.check_store(store_id)?;
    let service = commands(&state)?;
    if sku.is_empty() || sku.chars().count() > 255 {
        return Err(error(400, "the SKU in the path must be 1 to 255 characters"));
    }
    let key = idempotency_key(&headers)?;
    let payload = body(payload)?;
    Ok(answer(service.set_stock(store_id, &sku, &payload, key.as_deref()).await))
}

/// Binds `listen` (so a taken port is an error before anything runs).
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    info!(address = %listener.local_addr()?, "HTTP API listening");
    // Answers go out as soon as they are written: with Nagle's algorithm a
    // response written in two parts can wait for the client's delayed ACK
    // (up to 40 ms on Linux).
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of [`router`], as OpenAPI writes it.
    const ROUTES: [(&str, &str); 15] = [
        ("/", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/openapi.json", "get"),
        ("/metrics", "get"),
        ("/v1/stores/{store_id}/orders", "post"),
        ("/v1/orders/{order_id}/cancel", "post"),
        ("/v1/stores/{store_id}/inventory/{sku}", "put"),
        ("/v1/stores/{store_id}/orders/summary", "get"),
        ("/v1/stores/{store_id}/products/top", "get"),
        ("/v1/stores/{store_id}/customers/segments", "get"),
        ("/v1/stores/{store_id}/customers/{customer_id}", "get"),
        ("/v1/views/{view}", "get"),
        ("/v1/views/{view}/changes", "get"),
        ("/v1/orders/{order_id}", "get"),
    ];

    #[test]
    fn the_grafana_dashboard_reads_only_metrics_that_exist() {
        let dashboard: Value =
            serde_json::from_str(include_str!("../../dashboards/grafana.json")).expect("the dashboard is JSON");
        let metrics = include_str!("metrics.rs");
        let mut queries = 0;
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                queries += 1;
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if let Some(name) = word.strip_prefix("projector_") {
                        let family = name.trim_end_matches("_bucket").trim_end_matches("_total");
                        assert!(metrics.contains(&format!("\"projector_{family}\"")), "{word} is not exported");
                    }
                }
            }
        }
        assert!(queries >= 7);
    }

    #[test]
    fn the_openapi_document_describes_every_route_and_only_those() {
        let document: Value = serde_json::from_str(openapi::OPENAPI).expect("the OpenAPI document is JSON");
        assert_eq!(document["openapi"], "3.0.3");
        let paths = document["paths"].as_object().expect("paths");
        for (path, method) in ROUTES {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not documented");
        }
        for (path, methods) in paths {
            for method in methods.as_object().expect("methods").keys() {
                assert!(ROUTES.contains(&(path.as_str(), method.as_str())), "{method} {path} is not a route");
            }
        }
        let source = include_str!("lib.rs");
        for (path, _) in ROUTES {
            assert!(source.contains(&format!(".route(\"{path}\"")), "{path} is not in the router");
        }
    }
}

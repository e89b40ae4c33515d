//! A small JSON client of Projector's own HTTP API, for the demo's traffic
//! generator and for tests.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A client of one Projector API.
#[derive(Clone)]
pub struct ApiClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    /// Sent as `Authorization: Bearer <token>` with every request.
    token: Option<String>,
}

/// A response: status and JSON body (`Value::Null` when the body is not
/// JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON.
    pub body: Value,
}

/// A response with its headers.
#[derive(Clone, Debug)]
pub struct ApiReply {
    /// HTTP status.
    pub status: u16,
    /// Response headers, names in lower case.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body as JSON (`Value::Null` when it is empty or not JSON).
    pub body: Value,
}

impl ApiClient {
    /// A client of the API at `address`.
    pub fn new(address: SocketAddr) -> ApiClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build(connector);
        ApiClient { client, base: format!("http://{address}"), token: None }
    }

    /// The same client, presenting API token `secret`.
    pub fn with_token(&self, secret: &str) -> ApiClient {
        ApiClient { token: Some(secret.to_string()), ..self.clone() }
    }

    /// A request of `method` to `path`, with this client's token.
    fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        let request = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// A `GET` with extra request headers; answers the status, the
    /// response headers (names in lower case) and the JSON body.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<ApiReply, String> {
        let mut request = self.request("GET", path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
            .collect();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(ApiReply { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }

    /// A `GET` that answers only the status, reading the body without
    /// parsing it (for load generators).
    pub async fn get_status(&self, path: &str) -> Result<u16, String> {
        let request = self.request("GET", path).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        response.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok(status)
    }

    /// Sends a request; `body` is sent as is (JSON by convention).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<ApiResponse, String> {
        let mut request = self.request(method, path).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let request = request.body(Full::new(body.into())).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(ApiResponse { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }
}

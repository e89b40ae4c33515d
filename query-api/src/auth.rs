//! API tokens: who may call which routes for which stores.
//!
//! With no token declared the API is open (the demo, a loopback-only
//! deployment). With tokens, every `/v1` route needs `Authorization:
//! Bearer <secret>`: no token or an unknown one gets `401`; a token without
//! the route's right (`read` or `command`) or outside its stores gets
//! `403`. Secrets are compared in constant time and never logged; a token
//! is named by its config name in messages.

use std::collections::BTreeSet;

use axum::http::HeaderMap;
use axum::response::Response;

use projector_core::config::{SecretSource, TokenConfig};

use crate::error;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// The read routes.
    Read,
    /// The command routes.
    Command,
}

/// One token, its secret resolved.
#[derive(Clone)]
pub struct Token {
    /// Its config name.
    pub name: String,
    secret: Vec<u8>,
    /// The stores it may touch; `None`: all.
    pub stores: Option<BTreeSet<u64>>,
    read: bool,
    command: bool,
    /// Requests per second allowed, and what is left of them.
    limit: Option<std::sync::Arc<std::sync::Mutex<Bucket>>>,
}

/// A token bucket: `rate` requests a second, bursts up to `rate`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket { rate: rate as f64, tokens: rate as f64, at: std::time::Instant::now() }
    }

    /// Takes one request; `Err(seconds)` to wait before the next one fits.
    fn take(&mut self) -> Result<(), f64> {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / self.rate)
        }
    }
}

impl Token {
    /// Whether the token may touch store `store_id`.
    pub fn covers(&self, store_id: u64) -> bool {
        self.stores.as_ref().is_none_or(|stores| stores.contains(&store_id))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("name", &self.name).field("stores", &self.stores).finish_non_exhaustive()
    }
}

/// The tokens of an API; empty: the API is open.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Vec<Token>,
}

/// Who is calling: anyone (open API) or a token.
#[derive(Clone, Copy, Debug)]
pub enum Caller<'a> {
    /// The API has no tokens.
    Anyone,
    /// The caller presented this token.
    Token(&'a Token),
}

impl Caller<'_> {
    /// The stores the caller may touch; `None`: all.
    pub fn stores(&self) -> Option<&BTreeSet<u64>> {
        match self {
            Caller::Anyone => None,
            Caller::Token(token) => token.stores.as_ref(),
        }
    }

    /// `403` unless the caller may touch store `store_id`.
    pub fn check_store(&self, store_id: u64) -> Result<(), Response> {
        match self {
            Caller::Token(token) if !token.covers(store_id) => {
                Err(error(403, format!("token {:?} is not allowed store {store_id}", token.name)))
            }
            _ => Ok(()),
        }
    }
}

impl Auth {
    /// The tokens of `configs`, reading `secret_file`s now.
    pub fn new(configs: &[TokenConfig]) -> Result<Auth, String> {
        let mut tokens = Vec::new();
        for config in configs {
            let secret = match &config.secret {
                SecretSource::Value(secret) => secret.clone(),
                SecretSource::File(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("api token {:?}: cannot read {}: {e}", config.name, path.display()))?
                    .trim()
                    .to_string(),
            };
            if secret.is_empty() {
                return Err(format!("api token {:?}: the secret is empty", config.name));
            }
            tokens.push(Token {
                name: config.name.clone(),
                secret: secret.into_bytes(),
                stores: config.stores.as_ref().map(|stores| stores.iter().copied().collect()),
                read: config.read,
                command: config.command,
                limit: config.rate_limit.map(|rate| std::sync::Arc::new(std::sync::Mutex::new(Bucket::new(rate)))),
            });
        }
        let mut secrets: Vec<&[u8]> = tokens.iter().map(|t| t.secret.as_slice()).collect();
        secrets.sort();
        if secrets.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err("api tokens: two tokens have the same secret; give each its own".into());
        }
        Ok(Auth { tokens })
    }

    /// Whether any token is declared.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller of a request that needs `right`: `401` without a known
    /// token, `403` without the right.
    pub fn caller(&self, headers: &HeaderMap, right: Right) -> Result<Caller<'_>, Response> {
        if self.tokens.is_empty() {
            return Ok(Caller::Anyone);
        }
        let presented = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| error(401, "this API needs a token: send the header Authorization: Bearer <secret>"))?;
        let token = self
            .tokens
            .iter()
            .fold(None, |found, token| if same(&token.secret, presented.as_bytes()) { Some(token) } else { found })
            .ok_or_else(|| error(401, "the token is not known to this API"))?;
        let allowed = match right {
            Right::Read => token.read,
            Right::Command => token.command,
        };
        if !allowed {
            let right = if right == Right::Read { "read" } else { "command" };
            return Err(error(403, format!("token {:?} does not have the {right} right", token.name)));
        }
        if let Some(limit) = &token.limit {
            let mut bucket = limit.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Err(wait) = bucket.take() {
                let seconds = wait.ceil().max(1.0) as u64;
                let mut response = error(
                    429,
                    format!(
                        "token {:?} made more than {} requests a second; retry in {seconds} s",
                        token.name, bucket.rate
                    ),
                );
                if let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string()) {
                    response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
                }
                return Err(response);
            }
        }
        Ok(Caller::Token(token))
    }
}

/// Equality in time that does not depend on where the texts differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

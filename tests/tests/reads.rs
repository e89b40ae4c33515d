//! The read routes over the in-process serving store: every answer equals
//! the plain recomputation of the log; freshness, `ETag` and `304`; every
//! error path answers JSON with a message.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use projector::http_client::{ApiClient, ApiReply};
use projector::{api, components};
use projector_core::config::{PipelinePlan, check_text};
use projector_core::event::decode_event;
use projector_dataflows::runner::{Outputs, RunOptions, run};
use projector_datagen::{Generator, GeneratorConfig};
use projector_query_api::auth::Auth;
use projector_query_api::serving::ServingStore;
use projector_source_file::FileSource;
use projector_tests::{reference, shipped_views_yaml};
use serde_json::{Value, json};

/// The shipped views over a generated log, served by an API.
struct Served {
    lines: Vec<String>,
    api: api::ApiServer,
    runtime: tokio::runtime::Runtime,
    client: ApiClient,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start() -> Served {
        Served::start_with(Auth::default())
    }

    fn start_with(auth: Auth) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let config =
            GeneratorConfig { events: 6_000, seed: 5, stores: 3, bad_ratio: 0.01, ..GeneratorConfig::default() };
        let lines: Vec<String> = Generator::new(config).map(|r| r.line).collect();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let text = format!(
            "version: 1\nsources:\n  events:\n    type: file\n    path: {}\n{}",
            path.display(),
            shipped_views_yaml()
        );
        let plan = check_text(&text, "reads.yaml", dir.path()).unwrap();
        let mut outputs = Outputs { view_sinks: plan.views.iter().map(|_| Vec::new()).collect(), ..Outputs::default() };
        let store = components::serve_views(&plan, &mut outputs).unwrap();
        let source: Arc<dyn projector_core::source::Source> = Arc::new(FileSource::new(0, &path, 500));
        let options = RunOptions { workers: 2, ..RunOptions::default() };
        components::watch_run(&store, &options.progress, Vec::new());
        run(Arc::new(plan), vec![("events".into(), source)], outputs, options).unwrap();
        let api = api::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), None, Some(store), auth).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = ApiClient::new(api.address);
        Served { lines, api, runtime, client, _dir: dir }
    }

    fn get(&self, path: &str) -> ApiReply {
        self.get_with(path, &[])
    }

    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> ApiReply {
        self.runtime.block_on(self.client.get(path, headers)).unwrap()
    }

    fn get_as(&self, token: &str, path: &str) -> ApiReply {
        self.runtime.block_on(self.client.with_token(token).get(path, &[])).unwrap()
    }

    /// Asserts `path` answers `status` with a JSON error naming `needle`.
    fn fails(&self, path: &str, status: u16, needle: &str) {
        let reply = self.get(path);
        assert_eq!(reply.status, status, "{path}: {:?}", reply.body);
        let message = reply.body["error"].as_str().unwrap_or_else(|| panic!("{path}: no error message"));
        assert!(message.contains(needle), "{path}: {message:?} does not mention {needle:?}");
    }
}

fn of_store(rows: Vec<Value>, store: u64) -> Vec<Value> {
    rows.into_iter().filter(|r| r["store_id"] == json!(store)).collect()
}

fn date_in(row: &Value, from: &str, to: &str) -> bool {
    let date = row["date"].as_str().unwrap();
    (from..=to).contains(&date)
}

#[test]
fn reads_answer_the_recomputation_with_freshness_and_etags() {
    let served = Served::start();
    let log = reference::read(&served.lines);
    let (from, to) = ("2024-03-05", "2024-03-20");

    // Orders summary, by day and overall.
    let want: Vec<Value> =
        of_store(reference::order_summary(&log.orders), 2).into_iter().filter(|r| date_in(r, from, to)).collect();
    assert!(want.len() > 5);
    let reply = served.get(&format!("/v1/stores/2/orders/summary?from={from}&to={to}"));
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["rows"].as_array().unwrap(), &want);
    let total = served.get(&format!("/v1/stores/2/orders/summary?from={from}&to={to}&group_by=overall"));
    let sum = |field: &str| want.iter().map(|r| r[field].as_i64().unwrap()).sum::<i64>();
    let (orders, revenue) = (sum("order_count"), sum("revenue_cents"));
    assert_eq!(
        total.body["total"],
        json!({"order_count": orders, "revenue_cents": revenue, "average_order_value_cents": revenue / orders,
               "cancellation_count": sum("cancellation_count")})
    );

    // Top products over the range: revenue descending, ties by product id.
    let mut products: BTreeMap<u64, (i64, i64, i64)> = BTreeMap::new();
    for row in of_store(reference::product_sales(&log.orders), 2).iter().filter(|r| date_in(r, from, to)) {
        let entry = products.entry(row["product_id"].as_u64().unwrap()).or_default();
        entry.0 += row["units_sold"].as_i64().unwrap();
        entry.1 += row["revenue_cents"].as_i64().unwrap();
        entry.2 += row["order_count"].as_i64().unwrap();
    }
    let mut ranked: Vec<(u64, (i64, i64, i64))> = products.into_iter().collect();
    ranked.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(&b.0)));
    let want: Vec<Value> = ranked
        .iter()
        .take(7)
        .map(|(product, (units, revenue, orders))| {
            json!({"product_id": product, "units_sold": units, "revenue_cents": revenue, "order_count": orders})
        })
        .collect();
    assert_eq!(want.len(), 7);
    let reply = served.get(&format!("/v1/stores/2/products/top?from={from}&to={to}&limit=7"));
    assert_eq!(reply.body["products"].as_array().unwrap(), &want);

    // One customer, and one that is not there.
    let customers = of_store(reference::customer_ltv(&log.orders), 1);
    let customer = &customers[customers.len() / 2];
    let id = customer["customer_id"].as_u64().unwrap();
    let mut reply = served.get(&format!("/v1/stores/1/customers/{id}"));
    assert_eq!(reply.status, 200);
    reply.body.as_object_mut().unwrap().remove("freshness");
    assert_eq!(&reply.body, customer);
    served.fails("/v1/stores/1/customers/999999999", 404, "no customer 999999999");

    // Segments.
    let mut segments: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for row in &customers {
        let entry = segments.entry(row["segment"].as_str().unwrap().to_string()).or_default();
        entry.0 += 1;
        entry.1 += row["lifetime_value_cents"].as_i64().unwrap();
    }
    let want: Vec<Value> = segments
        .iter()
        .map(|(segment, (n, value))| json!({"segment": segment, "customers": n, "lifetime_value_cents": value}))
        .collect();
    assert_eq!(served.get("/v1/stores/1/customers/segments").body["segments"].as_array().unwrap(), &want);

    // Any view, filtered by key fields, a page at a time.
    let mut path = "/v1/views/customer_ltv?store_id=1&limit=7".to_string();
    let mut pages = Vec::new();
    loop {
        let reply = served.get(&path);
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        let rows = reply.body["rows"].as_array().unwrap();
        assert!(rows.len() <= 7);
        pages.extend(rows.iter().cloned());
        match reply.body["next"].as_str() {
            Some(next) => path = next.to_string(),
            None => break,
        }
    }
    assert!(customers.len() > 20);
    assert_eq!(pages, customers);
    let product = ranked[0].0;
    let want: Vec<Value> = of_store(reference::product_sales(&log.orders), 2)
        .into_iter()
        .filter(|r| r["product_id"] == json!(product))
        .collect();
    assert!(want.len() > 1);
    let reply = served.get(&format!("/v1/views/product_sales?product_id={product}&store_id=2&limit=1000"));
    assert_eq!(reply.body["rows"].as_array().unwrap(), &want);
    assert_eq!(reply.body["next"], Value::Null);
    let reply = served.get("/v1/views/order_summary?date=2024-03-10");
    assert_eq!(
        reply.body["rows"].as_array().unwrap().len(),
        reference::order_summary(&log.orders).iter().filter(|r| r["date"] == "2024-03-10").count()
    );

    // Orders: their current state, cancelled ones too.
    let mut checked = (0, 0);
    for order in log.orders.iter().step_by(37) {
        let reply = served.get(&format!("/v1/orders/{}", order.order_id));
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let body = &reply.body;
        assert_eq!(body["order_id"], json!(order.order_id));
        assert_eq!(body["store_id"], json!(order.store_id));
        assert_eq!(body["customer_id"], json!(order.customer_id));
        assert_eq!(body["currency"], json!(order.currency));
        assert_eq!(body["total_cents"], json!(order.total_cents));
        assert_eq!(body["status"], json!(if order.cancelled { "cancelled" } else { "placed" }));
        let created = chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).unwrap();
        assert_eq!(created, order.created_at);
        let items: Vec<(u64, i64, i64)> = body["line_items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["product_id"].as_u64().unwrap(),
                    i["quantity"].as_i64().unwrap(),
                    i["unit_price_cents"].as_i64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(u64, i64, i64)> =
            order.items.iter().map(|i| (i.product_id, i.quantity, i.unit_price_cents)).collect();
        assert_eq!(items, want);
        if order.cancelled { checked.1 += 1 } else { checked.0 += 1 }
    }
    assert!(checked.0 > 10 && checked.1 > 0, "{checked:?}");
    served.fails("/v1/orders/no-such-order", 404, "no order \"no-such-order\"");

    // Freshness: the log position and the newest event, in the body and
    // the headers; the ETag gets 304 until the view changes.
    let newest = served
        .lines
        .iter()
        .filter_map(|line| decode_event(line.as_bytes()).ok())
        .map(|event| event.occurred_at)
        .max()
        .unwrap();
    let reply = served.get("/v1/stores/2/orders/summary");
    let freshness = &reply.body["freshness"];
    assert_eq!(freshness["newest_event_at"], json!(newest.to_rfc3339()));
    assert!(freshness["newest_event_age_ms"].as_u64().unwrap() > 0);
    assert!(freshness["positions"]["events"]["0"].as_u64().unwrap() >= served.lines.len() as u64);
    assert_eq!(reply.headers["x-projector-newest-event-at"], newest.to_rfc3339());
    assert_eq!(reply.headers["cache-control"], "no-cache");
    // Without from/to: the 30 days up to the store's latest date.
    assert_eq!(reply.body["to"], json!("2024-03-30"));
    assert_eq!(reply.body["from"], json!("2024-03-01"));
    let tag = reply.headers["etag"].clone();
    let again = served.get_with("/v1/stores/2/orders/summary", &[("if-none-match", &tag)]);
    assert_eq!(again.status, 304);
    assert_eq!(again.body, Value::Null);
    assert_eq!(again.headers["etag"], tag);
    let other = served.get_with("/v1/stores/2/orders/summary", &[("if-none-match", "\"0000\"")]);
    assert_eq!(other.status, 200);

    // Metrics: request durations by route, each view's freshness and rows,
    // the run's counters.
    let text = projector_tests::services::http_get(&served.api.address.to_string(), "/metrics").unwrap();
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    let customers_rows = reference::customer_ltv(&log.orders).len();
    for needle in [
        "projector_query_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/stores/{store_id}/orders/summary\"} 5",
        "projector_query_duration_seconds_count{route=\"/v1/views/{view}\"}",
        "projector_view_freshness_seconds{view=\"order_summary\"}",
        &format!("projector_view_rows{{view=\"customer_ltv\"}} {customers_rows}"),
        &format!("projector_events_read_total {}", served.lines.len()),
        &format!("projector_dead_letters_total {}", log.bad_lines.len()),
        "projector_sink_writes_total{sink=\"serving\"}",
        "projector_sink_write_errors_total{sink=\"serving\"} 0",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle:?}:\n{text}");
    }
    served.api.stop();
}

#[test]
fn bad_reads_get_a_json_error_that_says_what_is_wrong() {
    let served = Served::start();
    served.fails("/v1/stores/x/orders/summary", 400, "store id \"x\"");
    served.fails("/v1/stores/1/orders/summary?from=2024-02-30", 400, "from=\"2024-02-30\" is not a date");
    served.fails("/v1/stores/1/orders/summary?from=2024-03-10&to=2024-03-01", 400, "is after to");
    served.fails("/v1/stores/1/orders/summary?from=2020-01-01&to=2024-03-01", 400, "longer than 366 days");
    served.fails("/v1/stores/1/orders/summary?group_by=week", 400, "group_by=\"week\"");
    served.fails("/v1/stores/1/orders/summary?store=1", 400, "unknown query parameter \"store\"");
    served.fails("/v1/stores/1/orders/summary?to=2024-03-01&to=2024-03-02", 400, "more than once");
    served.fails("/v1/stores/1/products/top?limit=0", 400, "limit=\"0\"");
    served.fails("/v1/stores/1/products/top?limit=5000", 400, "from 1 to 1000");
    served.fails("/v1/stores/1/customers/abc", 400, "customer id \"abc\"");
    served.fails("/v1/stores/1/customers/segments?x=1", 400, "unknown query parameter");
    served.fails("/v1/views/nope", 404, "no view \"nope\"");
    served.fails("/v1/views/customer_ltv?segment=vip", 400, "this route takes: store_id, customer_id, limit, after");
    served.fails("/v1/views/customer_ltv?store_id=-1", 400, "store_id=\"-1\" is not a whole number");
    served.fails("/v1/views/order_summary?date=March", 400, "is not a date such as 2024-03-01");
    served.fails("/v1/views/order_summary?after=%5B1%5D", 400, "not a page token");
    served.fails("/v1/views/order_summary?after=garbage", 400, "not a page token");
    served.fails(&format!("/v1/views/order_summary?date={}", "9".repeat(3000)), 414, "longer than 2048 bytes");
    served.fails("/v1/nothing", 404, "no route for GET /v1/nothing");
    served.api.stop();
}

const STORE_1: &str = "store-one-secret-0123456789";
const EVERY_STORE: &str = "every-store-secret-0123456789";
const COMMANDS_ONLY: &str = "commands-only-secret-0123456789";

use projector_tests::token_config as token;

#[test]
fn a_token_reads_only_its_stores_and_needs_the_read_right() {
    let auth = Auth::new(&[
        token("store_one", STORE_1, Some(vec![1]), true, false),
        token("everything", EVERY_STORE, None, true, true),
        token("writer", COMMANDS_ONLY, None, false, true),
    ])
    .unwrap();
    let served = Served::start_with(auth);
    let log = reference::read(&served.lines);

    // No token, an unknown one, or one without the read right.
    let reply = served.get("/v1/stores/1/customers/segments");
    assert_eq!(reply.status, 401);
    assert!(reply.body["error"].as_str().unwrap().contains("Authorization: Bearer"));
    assert_eq!(served.get_as("not-a-token-at-all-0123456789", "/v1/stores/1/customers/segments").status, 401);
    let reply = served.get_as(COMMANDS_ONLY, "/v1/stores/1/customers/segments");
    assert_eq!(reply.status, 403);
    assert!(reply.body["error"].as_str().unwrap().contains("does not have the read right"));
    // The API's description needs no token.
    let openapi = served.get("/v1/openapi.json");
    assert_eq!(openapi.status, 200);
    assert_eq!(openapi.body["openapi"], "3.0.3");
    // Each declared view has a path of its own, its key fields typed
    // query parameters and its rows typed objects.
    let paths = &openapi.body["paths"];
    assert!(paths.get("/v1/views/{view}").is_none() && paths.get("/v1/views/{view}/changes").is_none());
    let product_sales = &paths["/v1/views/product_sales"]["get"];
    let query: Vec<&str> = product_sales["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(query, ["store_id", "product_id", "date", "limit", "after"]);
    assert_eq!(product_sales["parameters"][2]["schema"], json!({"type": "string", "format": "date"}));
    let row =
        &product_sales["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["rows"]["items"];
    assert_eq!(
        row["required"],
        json!(["store_id", "product_id", "date", "units_sold", "revenue_cents", "order_count"])
    );
    assert_eq!(row["properties"]["store_id"]["maximum"], json!(u64::MAX));
    let changes = &paths["/v1/views/customer_ltv/changes"]["get"]["parameters"];
    assert_eq!(changes[0]["name"], "store_id");
    assert_eq!(changes[1]["name"], "customer_id");
    // Unauthenticated callers learn nothing, not even about bad paths.
    assert_eq!(served.get("/v1/stores/x/orders/summary").status, 401);

    // Store 1's token reads store 1, and nothing of store 2 on any route.
    assert_eq!(served.get_as(STORE_1, "/v1/stores/1/orders/summary").status, 200);
    for path in [
        "/v1/stores/2/orders/summary",
        "/v1/stores/2/orders/summary?group_by=overall",
        "/v1/stores/2/products/top",
        "/v1/stores/2/customers/segments",
        "/v1/stores/2/customers/1",
        "/v1/views/customer_ltv?store_id=2",
        "/v1/views/product_sales?store_id=2&product_id=1",
    ] {
        let reply = served.get_as(STORE_1, path);
        assert_eq!(reply.status, 403, "{path}: {:?}", reply.body);
        assert!(reply.body["error"].as_str().unwrap().contains("is not allowed store 2"), "{path}");
    }
    // Without a store filter, /v1/views holds only the token's stores.
    let want = of_store(reference::customer_ltv(&log.orders), 1);
    let mut path = "/v1/views/customer_ltv?limit=1000".to_string();
    let mut got = Vec::new();
    loop {
        let reply = served.get_as(STORE_1, &path);
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        got.extend(reply.body["rows"].as_array().unwrap().iter().cloned());
        match reply.body["next"].as_str() {
            Some(next) => path = next.to_string(),
            None => break,
        }
    }
    assert!(!want.is_empty());
    assert_eq!(got, want);
    let summary = served.get_as(STORE_1, "/v1/views/order_summary?date=2024-03-10&limit=1000");
    assert!(summary.body["rows"].as_array().unwrap().iter().all(|row| row["store_id"] == json!(1)));
    assert!(!summary.body["rows"].as_array().unwrap().is_empty());

    // An order of store 2 is unknown to store 1's token.
    let other = log.orders.iter().find(|o| o.store_id == 2).unwrap();
    let mine = log.orders.iter().find(|o| o.store_id == 1).unwrap();
    assert_eq!(served.get_as(STORE_1, &format!("/v1/orders/{}", other.order_id)).status, 404);
    assert_eq!(served.get_as(STORE_1, &format!("/v1/orders/{}", mine.order_id)).status, 200);
    assert_eq!(served.get_as(EVERY_STORE, &format!("/v1/orders/{}", other.order_id)).status, 200);

    // A token for every store reads every store.
    assert_eq!(served.get_as(EVERY_STORE, "/v1/stores/2/customers/segments").status, 200);
    let all = served.get_as(EVERY_STORE, "/v1/views/order_summary?date=2024-03-10&limit=1000");
    assert!(all.body["rows"].as_array().unwrap().iter().any(|row| row["store_id"] == json!(2)));
    served.api.stop();
}

#[test]
fn tokens_are_declared_in_yaml_with_secrets_that_never_show() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "  file-secret-0123456789abcdef\n").unwrap();
    let yaml = |tokens: &str| {
        format!(
            "version: 1\nsources:\n  events:\n    type: file\n    path: e.jsonl\n{}api:\n  listen: 127.0.0.1:0\n  tokens:\n{tokens}",
            shipped_views_yaml()
        )
    };
    let good = yaml(
        "    dashboard:\n      secret: dashboard-secret-0123456789\n      stores: [7, 8]\n      rights: [read]\n      rate_limit: 50\n    \
         ops:\n      secret_file: secret.txt\n      stores: \"*\"\n      rights: [read, command]\n",
    );
    let plan = check_text(&good, "tokens.yaml", dir.path()).unwrap();
    let tokens = &plan.config.api.as_ref().unwrap().tokens;
    assert_eq!(tokens[0].stores, Some(vec![7, 8]));
    assert_eq!((tokens[0].rate_limit, tokens[1].rate_limit), (Some(50), None));
    assert!(tokens[0].read && !tokens[0].command);
    assert_eq!(tokens[1].stores, None);
    assert!(!format!("{:?}", plan.config).contains("dashboard-secret"), "a secret shows in the config's Debug");
    let auth = Auth::new(tokens).unwrap();
    assert!(!format!("{auth:?}").contains("secret-0123"), "a secret shows in the tokens' Debug");

    for (tokens, needle) in [
        ("    a:\n      secret: short\n      stores: [1]\n      rights: [read]\n", "at least 16 characters"),
        ("    a:\n      stores: [1]\n      rights: [read]\n", "needs secret"),
        (
            "    a:\n      secret: long-enough-secret-0123\n      secret_file: x\n      stores: [1]\n      rights: [read]\n",
            "either secret or secret_file",
        ),
        (
            "    a:\n      secret: long-enough-secret-0123\n      stores: seven\n      rights: [read]\n",
            "list of store ids",
        ),
        ("    a:\n      secret: long-enough-secret-0123\n      stores: [1]\n      rights: [write]\n", "not a right"),
        ("    a:\n      secret: long-enough-secret-0123\n      stores: [1]\n", "rights"),
        (
            "    a:\n      secret: long-enough-secret-0123\n      stores: [1]\n      rights: [read]\n      rate_limit: 0\n",
            "'tokens.a.rate_limit' must be a whole number of at least 1",
        ),
        (
            "    a:\n      secret: long-enough-secret-0123\n      stores: [1]\n      rights: [read]\n      scope: x\n",
            "scope",
        ),
    ] {
        let message = check_text(&yaml(tokens), "tokens.yaml", dir.path()).unwrap_err().to_string();
        assert!(message.contains(needle), "{message:?} does not mention {needle:?}");
        assert!(message.contains("tokens.yaml:"), "{message:?} does not say where");
        assert!(!message.contains("short\n") && !message.contains("long-enough-secret"), "{message:?} shows a secret");
    }
}

/// The shipped views over a Kafka topic, served by an API; the pipeline
/// starts with [`KafkaServed::run`].
struct KafkaServed {
    store: Arc<ServingStore>,
    api: api::ApiServer,
    pending: Option<(PipelinePlan, Outputs, RunOptions)>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pipeline: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl KafkaServed {
    fn start(topic: &str, auth: Auth) -> KafkaServed {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "version: 1\nsources:\n  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n{}",
            projector_tests::kafka::brokers(),
            shipped_views_yaml()
        );
        let plan = check_text(&text, "kafka.yaml", dir.path()).unwrap();
        let mut outputs = Outputs { view_sinks: plan.views.iter().map(|_| Vec::new()).collect(), ..Outputs::default() };
        let store = components::serve_views(&plan, &mut outputs).unwrap();
        let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
        components::watch_run(&store, &options.progress, Vec::new());
        let api = api::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), None, Some(Arc::clone(&store)), auth).unwrap();
        let stop = Arc::clone(&options.stop);
        KafkaServed { store, api, pending: Some((plan, outputs, options)), stop, pipeline: None, _dir: dir }
    }

    /// Starts the pipeline.
    fn run(&mut self) {
        let (plan, outputs, options) = self.pending.take().unwrap();
        self.pipeline = Some(std::thread::spawn(move || {
            let sources = components::sources(&plan);
            run(Arc::new(plan), sources, outputs, options).unwrap();
        }));
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(pipeline) = self.pipeline.take() {
            pipeline.join().unwrap();
        }
        self.api.stop();
    }
}

#[test]
fn readyz_waits_until_the_views_reflect_the_log_seen_at_start() {
    use projector_tests::kafka;
    let topic = kafka::create_topic(&kafka::fresh_topic("ready"), 4);
    let config = GeneratorConfig { events: 40_000, seed: 9, bad_ratio: 0.0, ..GeneratorConfig::default() };
    let records: Vec<(String, String)> = Generator::new(config).map(|r| (r.key, r.line)).collect();
    let lines: Vec<String> = records.iter().map(|(_, line)| line.clone()).collect();
    kafka::append(&topic, records);
    let mut served = KafkaServed::start(&topic, Auth::default());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = ApiClient::new(served.api.address);
    let get = |path: &str| runtime.block_on(client.get(path, &[])).unwrap();
    // Not ready before the pipeline ran at all.
    let reply = get("/readyz");
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "catching up");

    served.run();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut saw_catching_up = false;
    loop {
        let reply = get("/readyz");
        if reply.status == 200 {
            break;
        }
        saw_catching_up |= reply.body["views"]["order_summary"]["events"].as_u64().is_some();
        assert!(std::time::Instant::now() < deadline, "never ready: {:?}", reply.body);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Once ready, every view reflects the whole log appended before start.
    for view in ["order_summary", "product_sales", "customer_ltv"] {
        let reply = get(&format!("/v1/views/{view}?limit=1"));
        assert_eq!(reply.body["freshness"]["events"], json!(lines.len()), "{view}");
    }
    let log = reference::read(&lines);
    let summary = get("/v1/views/order_summary?limit=1000");
    assert_eq!(summary.body["rows"].as_array().unwrap(), &reference::order_summary(&log.orders));
    assert!(saw_catching_up, "the pipeline was ready before it read anything");
    served.stop();
}

/// Server-Sent Events read off a raw HTTP/1.0 connection (so the body is
/// not chunked): `(event, data)` pairs.
struct EventStream(std::io::BufReader<std::net::TcpStream>);

impl EventStream {
    fn open(address: SocketAddr, path: &str, token: &str) -> EventStream {
        use std::io::{BufRead, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
        }
        EventStream(reader)
    }

    fn next(&mut self) -> (String, Value) {
        use std::io::BufRead;
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            assert!(self.0.read_line(&mut line).unwrap() > 0, "the stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    return (event, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if let Some(text) = line.strip_prefix("data:") {
                data.push_str(text.trim_start());
            }
        }
    }
}

#[test]
fn a_change_stream_brings_a_snapshot_and_every_later_change_of_the_callers_stores() {
    use projector_tests::kafka;
    let topic = kafka::create_topic(&kafka::fresh_topic("stream"), 4);
    let config = GeneratorConfig { events: 20_000, seed: 21, stores: 3, bad_ratio: 0.0, ..GeneratorConfig::default() };
    let records: Vec<(String, String)> = Generator::new(config).map(|r| (r.key, r.line)).collect();
    let lines: Vec<String> = records.iter().map(|(_, line)| line.clone()).collect();
    let half = records.len() / 2;
    kafka::append(&topic, records[..half].to_vec());
    let auth = Auth::new(&[token("store_one", STORE_1, Some(vec![1]), true, false)]).unwrap();
    let mut served = KafkaServed::start(&topic, auth);
    served.run();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while served.store.readiness().is_err() {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    // No filter: store 1's token streams store 1's rows only.
    let mut stream = EventStream::open(served.api.address, "/v1/views/customer_ltv/changes", STORE_1);
    let (event, snapshot) = stream.next();
    assert_eq!(event, "snapshot");
    let key = |row: &Value| (row["store_id"].as_u64().unwrap(), row["customer_id"].as_u64().unwrap());
    let mut held: BTreeMap<(u64, u64), Value> =
        snapshot["rows"].as_array().unwrap().iter().map(|row| (key(row), row.clone())).collect();
    let first = reference::read(&lines[..half]);
    let want_first: BTreeMap<(u64, u64), Value> =
        of_store(reference::customer_ltv(&first.orders), 1).into_iter().map(|row| (key(&row), row)).collect();
    assert_eq!(held, want_first, "the snapshot is the view of the first half, store 1 only");

    kafka::append(&topic, records[half..].to_vec());
    let log = reference::read(&lines);
    let want: BTreeMap<(u64, u64), Value> =
        of_store(reference::customer_ltv(&log.orders), 1).into_iter().map(|row| (key(&row), row)).collect();
    let mut batches = 0;
    while held != want {
        let (event, data) = stream.next();
        assert_eq!(event, "changes", "{data}");
        assert!(data["freshness"]["events"].as_u64().unwrap() > half as u64 - 1);
        for op in data["changes"].as_array().unwrap() {
            match op["op"].as_str().unwrap() {
                "upsert" => {
                    assert_eq!(op["row"]["store_id"], json!(1), "a row of another store leaked");
                    held.insert(key(&op["row"]), op["row"].clone());
                }
                "delete" => {
                    assert_eq!(op["key"]["store_id"], json!(1), "a key of another store leaked");
                    held.remove(&key(&op["key"]));
                }
                other => panic!("unknown op {other}"),
            }
        }
        batches += 1;
    }
    assert!(batches >= 1);
    served.stop();
}

#[test]
fn a_token_over_its_rate_limit_gets_429_with_retry_after() {
    let mut limited = token("limited", STORE_1, Some(vec![1]), true, false);
    limited.rate_limit = Some(5);
    let served = Served::start_with(Auth::new(&[limited, token("free", EVERY_STORE, None, true, false)]).unwrap());
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(served.get_as(STORE_1, "/v1/stores/1/customers/segments"));
    }
    let ok = statuses.iter().filter(|r| r.status == 200).count();
    assert!((5..=10).contains(&ok), "{ok} of 20 quick requests passed a limit of 5 a second");
    let limited = statuses.iter().find(|r| r.status == 429).expect("a 429");
    assert_eq!(limited.headers["retry-after"], "1");
    assert!(limited.body["error"].as_str().unwrap().contains("more than 5 requests a second"));
    // Another token is not held back; after a second the limit lets requests through again.
    assert_eq!(served.get_as(EVERY_STORE, "/v1/stores/1/customers/segments").status, 200);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(served.get_as(STORE_1, "/v1/stores/1/customers/segments").status, 200);
    served.api.stop();
}

/// `cents` as the dashboard writes money: `12,345.67`.
fn money(cents: i64) -> String {
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{grouped}.{:02}", cents % 100)
}

/// The texts of the cells with `data-field="{field}"`, in page order.
fn cells(html: &str, field: &str) -> Vec<String> {
    let marker = format!("data-field=\"{field}\">");
    html.match_indices(&marker)
        .map(|(at, _)| {
            let rest = &html[at + marker.len()..];
            rest[..rest.find('<').unwrap_or(rest.len())].to_string()
        })
        .collect()
}

/// Runs headless Chromium on `url` with `extra` arguments; its stdout.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        format!("--user-data-dir={}", profile.path().display()),
        "--virtual-time-budget=8000".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(url.to_string());
    let output = std::process::Command::new("chromium").args(&args).output().unwrap();
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_dashboard_draws_what_the_api_answers_in_headless_chromium() {
    if !projector_tests::services::available("chromium") {
        return;
    }
    let served = Served::start();
    let url = format!("http://{}/", served.api.address);
    let html = chromium(&url, &["--dump-dom"]);
    assert!(html.contains("data-loaded=\"true\""), "the page did not finish loading:\n{html}");
    assert!(!html.contains("<p id=\"error\">HTTP") && html.contains("<p id=\"error\"></p>"), "{html}");

    // The page shows store 1 by default: the same numbers as the API.
    let summary = served.get("/v1/stores/1/orders/summary?group_by=day").body;
    let rows = summary["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    let sum = |field: &str| rows.iter().map(|r| r[field].as_i64().unwrap()).sum::<i64>();
    assert!(html.contains(&format!("id=\"total-revenue\">{}<", money(sum("revenue_cents")))), "revenue:\n{html}");
    assert!(html.contains(&format!("id=\"total-orders\">{}<", sum("order_count"))), "orders");
    assert!(html.contains(&format!("id=\"total-cancelled\">{}<", sum("cancellation_count"))), "cancelled");
    assert_eq!(html.matches("<rect ").count(), rows.len(), "one bar per day");

    let top = served.get("/v1/stores/1/products/top?limit=10").body;
    let products = top["products"].as_array().unwrap();
    assert!(!products.is_empty());
    let field = |list: &[Value], name: &str| -> Vec<String> { list.iter().map(|p| p[name].to_string()).collect() };
    assert_eq!(cells(&html, "product_id"), field(products, "product_id"));
    assert_eq!(cells(&html, "units_sold"), field(products, "units_sold"));
    let revenue: Vec<String> = products.iter().map(|p| money(p["revenue_cents"].as_i64().unwrap())).collect();
    assert_eq!(cells(&html, "revenue"), revenue);

    let segments = served.get("/v1/stores/1/customers/segments").body;
    let segments = segments["segments"].as_array().unwrap();
    let names: Vec<String> = segments.iter().map(|s| s["segment"].as_str().unwrap().to_string()).collect();
    assert_eq!(cells(&html, "segment"), names);
    assert_eq!(cells(&html, "customers"), field(segments, "customers"));

    // A screenshot, kept next to the test report.
    let folder = std::env::var("PROJECTOR_TEST_REPORT")
        .ok()
        .and_then(|report| std::path::Path::new(&report).parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    let shot = folder.join("dashboard.png");
    chromium(&url, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,900"]);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "the screenshot {} is missing or empty", shot.display());
    projector_tests::report(&format!("dashboard screenshot: {} ({size} bytes)", shot.display()));
    served.api.stop();
}

//! The read API answering from Redis and ClickHouse (`api.read_from`)
//! against real servers: every route answers what the in-process store
//! answers over the same log, with the positions the sink's checkpoint
//! reflects; a read Redis cannot answer without a scan gets a `400` that
//! says so; `ETag`s work; a view read from a sink has no change stream.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use projector::http_client::{ApiClient, ApiReply};
use projector::{api, components};
use projector_core::config::{PipelinePlan, check_text};
use projector_dataflows::runner::{Outputs, RunOptions, run};
use projector_datagen::{Generator, GeneratorConfig};
use projector_query_api::auth::Auth;
use projector_source_file::FileSource;
use projector_tests::services::{ClickHouseServer, RedisServer, available};
use projector_tests::shipped_views_yaml;
use projector_tests::sinks::{clickhouse_sinks_yaml, redis_sinks_yaml};
use serde_json::Value;

struct Api {
    server: api::ApiServer,
    client: ApiClient,
}

impl Api {
    fn start(plan: &PipelinePlan, outputs: &mut Outputs) -> (Api, Arc<projector_query_api::serving::ServingStore>) {
        Api::start_with(plan, outputs, Auth::default())
    }

    fn start_with(
        plan: &PipelinePlan,
        outputs: &mut Outputs,
        auth: Auth,
    ) -> (Api, Arc<projector_query_api::serving::ServingStore>) {
        let store = components::serve_views(plan, outputs).unwrap();
        let server =
            api::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), None, Some(Arc::clone(&store)), auth).unwrap();
        let client = ApiClient::new(server.address);
        (Api { server, client }, store)
    }

    fn get(&self, runtime: &tokio::runtime::Runtime, path: &str, headers: &[(&str, &str)]) -> ApiReply {
        runtime.block_on(self.client.get(path, headers)).unwrap()
    }
}

fn plan(text: &str, dir: &Path) -> PipelinePlan {
    check_text(text, "stores.yaml", dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The body without `freshness`.
fn answer(reply: &ApiReply) -> Value {
    let mut body = reply.body.clone();
    if let Some(object) = body.as_object_mut() {
        object.remove("freshness");
    }
    body
}

#[test]
fn reads_from_redis_and_clickhouse_answer_what_memory_answers() {
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let clickhouse = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let generator = GeneratorConfig { events: 5000, seed: 8, stores: 3, bad_ratio: 0.01, ..GeneratorConfig::default() };
    let lines: Vec<String> = Generator::new(generator).map(|r| r.line).collect();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let base = format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: {}\n{}\nsinks:\n{}{}api:\n  listen: 127.0.0.1:0\n",
        events.display(),
        shipped_views_yaml(),
        redis_sinks_yaml(&redis.url(), "rs:"),
        clickhouse_sinks_yaml(&clickhouse.url(), "reads", 100),
    );

    // One run feeds the sinks and the in-process store.
    let memory_plan = plan(&base, dir.path());
    let mut outputs = components::outputs(&memory_plan).unwrap();
    let (memory, store) = Api::start(&memory_plan, &mut outputs);
    let source: Arc<dyn projector_core::source::Source> = Arc::new(FileSource::new(0, &events, 400));
    let options = RunOptions { workers: 2, ..RunOptions::default() };
    components::watch_run(&store, &options.progress, Vec::new());
    run(Arc::new(memory_plan), vec![("events".into(), source)], outputs, options).unwrap();

    // Two more APIs read the views from the sinks.
    let redis_text =
        format!("{base}  read_from:\n    customer_ltv: customer_ltv_redis\n    order_summary: order_summary_redis\n");
    let clickhouse_text = format!(
        "{base}  read_from:\n    customer_ltv: customer_ltv_ch\n    order_summary: order_summary_ch\n    product_sales: product_sales_ch\n"
    );
    let (from_redis, _) = Api::start(&plan(&redis_text, dir.path()), &mut Outputs::default());
    let (from_clickhouse, _) = Api::start(&plan(&clickhouse_text, dir.path()), &mut Outputs::default());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // The range with data, and some customers of store 1 (and one unknown).
    let summary = memory.get(&runtime, "/v1/stores/1/orders/summary", &[]);
    let (from, to) = (summary.body["from"].as_str().unwrap(), summary.body["to"].as_str().unwrap());
    let page = memory.get(&runtime, "/v1/views/customer_ltv?store_id=1&limit=5", &[]);
    let mut customers: Vec<u64> =
        page.body["rows"].as_array().unwrap().iter().map(|row| row["customer_id"].as_u64().unwrap()).collect();
    assert_eq!(customers.len(), 5, "{page:?}");
    customers.push(999_999_999);

    let mut both = vec![
        format!("/v1/stores/1/orders/summary?from={from}&to={to}"),
        format!("/v1/stores/2/orders/summary?from={from}&to={to}&group_by=overall"),
        format!("/v1/stores/1/orders/summary?from={to}&to={to}"),
    ];
    for customer in &customers {
        both.push(format!("/v1/stores/1/customers/{customer}"));
        both.push(format!("/v1/views/customer_ltv?store_id=1&customer_id={customer}"));
    }
    let clickhouse_only = [
        "/v1/stores/1/orders/summary".to_string(),
        format!("/v1/stores/2/products/top?from={from}&to={to}&limit=7"),
        "/v1/stores/3/products/top".to_string(),
        "/v1/stores/1/customers/segments".to_string(),
        "/v1/views/product_sales?store_id=2&limit=50".to_string(),
        "/v1/views/customer_ltv?limit=1000".to_string(),
    ];
    let sinks = [("redis", &from_redis), ("clickhouse", &from_clickhouse)];
    let cases =
        both.iter().map(|path| (path, &sinks[..])).chain(clickhouse_only.iter().map(|path| (path, &sinks[1..])));
    let mut compared = 0;
    for (path, stores) in cases {
        let want = memory.get(&runtime, path, &[]);
        for (name, api) in stores {
            let got = api.get(&runtime, path, &[]);
            assert_eq!(got.status, want.status, "{name} {path}: {:?}", got.body);
            assert_eq!(answer(&got), answer(&want), "{name} {path}");
            if got.status == 200 {
                assert_eq!(
                    got.body["freshness"]["positions"], want.body["freshness"]["positions"],
                    "{name} {path}: the sink's checkpoint reflects the whole log"
                );
                // Every answer says how old its newest event is, from
                // either sink as from memory.
                let newest = &got.body["freshness"]["newest_event_at"];
                assert!(newest.is_string(), "{name} {path}: {:?}", got.body);
                assert_eq!(newest, &want.body["freshness"]["newest_event_at"], "{name} {path}");
                compared += 1;
            }
        }
    }
    assert!(compared >= 20, "only {compared} answers compared");

    // Pages from ClickHouse follow the same `next` chain as memory's.
    let mut path = Some("/v1/views/product_sales?store_id=1&limit=13".to_string());
    let mut pages = 0;
    while let Some(current) = path {
        let (got, want) = (from_clickhouse.get(&runtime, &current, &[]), memory.get(&runtime, &current, &[]));
        assert_eq!(answer(&got), answer(&want), "{current}");
        path = got.body["next"].as_str().map(str::to_string);
        pages += 1;
    }
    assert!(pages > 2, "{pages} pages");

    // Redis says which reads it cannot answer, and why.
    let refused = from_redis.get(&runtime, "/v1/stores/1/customers/segments", &[]);
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    let message = refused.body["error"].as_str().unwrap();
    assert!(message.contains("Redis sink \"customer_ltv_redis\"") && message.contains("customer_id"), "{message}");
    // Its answers carry the age of the newest event; the ETag gives 304.
    let point = format!("/v1/stores/1/customers/{}", customers[0]);
    let first = from_redis.get(&runtime, &point, &[]);
    assert!(first.body["freshness"]["newest_event_at"].is_string(), "{:?}", first.body);
    let again = from_redis.get(&runtime, &point, &[("if-none-match", &first.headers["etag"])]);
    assert_eq!(again.status, 304);
    let again = from_clickhouse.get(&runtime, &point, &[("if-none-match", &first.headers["etag"])]);
    assert_eq!(again.status, 304, "the same view at the same position has the same ETag");

    // A token for store 1 reads only store 1's rows from the sinks too.
    const STORE_1: &str = "store-one-secret-0123456789";
    let auth = Auth::new(&[projector_tests::token_config("store_one", STORE_1, Some(vec![1]), true, false)]).unwrap();
    let (scoped, _) = Api::start_with(&plan(&clickhouse_text, dir.path()), &mut Outputs::default(), auth);
    let scoped_get = |path: &str| runtime.block_on(scoped.client.with_token(STORE_1).get(path, &[])).unwrap();
    let all = scoped_get("/v1/views/customer_ltv?limit=1000");
    assert_eq!(all.status, 200, "{:?}", all.body);
    let rows = all.body["rows"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|row| row["store_id"] == 1), "{:?}", all.body);
    assert_eq!(scoped_get("/v1/views/customer_ltv?store_id=2").status, 403);
    assert_eq!(scoped_get("/v1/stores/2/orders/summary").status, 403);
    scoped.server.stop();

    // A view read from a sink has no change stream here.
    let stream = from_clickhouse.get(&runtime, "/v1/views/customer_ltv/changes?store_id=1", &[]);
    assert_eq!(stream.status, 400);
    assert!(stream.body["error"].as_str().unwrap().contains("change streams"), "{:?}", stream.body);

    // ClickHouse down: a read answers 503 and says so.
    drop(clickhouse);
    let down = from_clickhouse.get(&runtime, &point, &[]);
    assert_eq!(down.status, 503, "{:?}", down.body);
    assert!(down.body["error"].as_str().unwrap().contains("try again"), "{:?}", down.body);

    drop(redis);
    let down = from_redis.get(&runtime, &point, &[]);
    assert_eq!(down.status, 503, "{:?}", down.body);
    assert!(down.body["error"].as_str().unwrap().contains("Redis sink"), "{:?}", down.body);

    for api in [memory, from_redis, from_clickhouse] {
        api.server.stop();
    }
}

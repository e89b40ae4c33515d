use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
struct Acks(Arc<Mutex<HashMap<(i32, i64), Instant>>>);
impl ClientContext for Acks {}
impl ProducerContext for Acks { type DeliveryOpaque = (); fn delivery(&self, r: &DeliveryResult<'_>, _: ()) { if let Ok(m) = r { self.0.lock().unwrap().insert((m.partition(), m.offset()), Instant::now()); } } }
fn main() {
    let (send, recv) = std::sync::mpsc::channel();
    std::thread::spawn(move || { let c = rdkafka::mocking::MockCluster::new(1).unwrap(); c.create_topic("t", 64, 1).unwrap(); send.send(c.bootstrap_servers()).unwrap(); loop { std::thread::park(); } });
    let brokers: String = recv.recv().unwrap();
    let linger = std::env::args().nth(1).unwrap_or("0".into());
    let fetch_wait = std::env::args().nth(2).unwrap_or("5".into());
    let acks = Arc::new(Mutex::new(HashMap::new()));
    let p: BaseProducer<Acks> = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).set("enable.idempotence","true").set("acks","all").set("linger.ms", &linger).set("compression.type","lz4").create_with_context(Acks(acks.clone())).unwrap();
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id","x").set("enable.auto.commit","false").set("fetch.wait.max.ms", &fetch_wait).set("isolation.level", std::env::args().nth(3).unwrap_or("read_uncommitted".into())).create().unwrap();
    let mut tpl = TopicPartitionList::new(); for i in 0..64 { tpl.add_partition_offset("t", i, Offset::Beginning).unwrap(); } c.assign(&tpl).unwrap();
    let got = Arc::new(Mutex::new(Vec::new())); let g2 = got.clone();
    let ct = std::thread::spawn(move || { let end = Instant::now() + Duration::from_secs(6); while Instant::now() < end { if let Some(Ok(m)) = c.poll(Duration::from_millis(1)) { g2.lock().unwrap().push((m.partition(), m.offset(), Instant::now())); } } });
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now(); let mut sent = 0u64; let payload = "x".repeat(450);
    while start.elapsed() < Duration::from_secs(4) { let due = (start.elapsed().as_secs_f64() * 20000.0) as u64; while sent < due { let k = format!("k{sent}"); let _ = p.send(BaseRecord::to("t").key(&k).payload(&payload)); sent += 1; } p.poll(Duration::from_micros(200)); }
    p.flush(Duration::from_secs(5)).unwrap(); ct.join().unwrap();
    let acks = acks.lock().unwrap(); let mut lat: Vec<f64> = got.lock().unwrap().iter().filter_map(|(pa, o, t)| acks.get(&(*pa, *o)).map(|a| t.saturating_duration_since(*a).as_secs_f64()*1e3)).collect();
    lat.sort_by(|a,b| a.partial_cmp(b).unwrap()); let n = lat.len();
    println!("linger {linger} fetch_wait {fetch_wait}: n={n} p50={:.1}ms p99={:.1}ms", lat[n/2], lat[n*99/100]);
}

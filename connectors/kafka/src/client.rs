//! librdkafka settings shared by the source, the dead-letter producer and
//! tools.

use rdkafka::ClientConfig;

/// A client config for `brokers` with the user's extra `properties` first
/// and Projector's own settings after them (so they win).
pub fn client_config(brokers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        config.set(key, value);
    }
    config.set("bootstrap.servers", brokers);
    config.set("client.id", "projector");
    // Small requests must not wait for Nagle's algorithm (up to 40 ms with
    // delayed acknowledgements): latency matters more than packet counts.
    config.set("socket.nagle.disable", "true");
    config
}

/// Settings of an idempotent producer that waits for all in-sync replicas:
/// a retried send is written once.
pub fn producer_config(brokers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = client_config(brokers, properties);
    config.set("enable.idempotence", "true");
    config.set("acks", "all");
    config.set("linger.ms", "1");
    config
}

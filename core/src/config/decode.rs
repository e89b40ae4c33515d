//! Reads the YAML node tree into the config model, collecting every error.
//!
//! Each component is read on its own and every problem is recorded with
//! its position, so one run of `projector check` shows them all: unknown
//! keys (with the keys allowed there), values of the wrong shape, missing
//! required keys, duplicates.

use std::path::{Path, PathBuf};

use super::model::*;
use super::yaml::{Node, NodeKind, Pos, ScalarKind};
use super::{ConfigError, Diagnostics};

/// Reads a whole config from its root node.
pub(super) fn pipeline(root: Option<&Node>, file: &str, base_dir: &Path, diags: &mut Diagnostics) -> PipelineConfig {
    let mut config = PipelineConfig {
        file: file.to_string(),
        version: 1,
        sources: Vec::new(),
        views: Vec::new(),
        sinks: Vec::new(),
        api: None,
        commands: None,
        state: None,
    };
    let Some(root) = root else {
        diags.push(
            Pos { line: 1, column: 1 },
            "config",
            "",
            "the file is empty; declare at least `views:`".to_string(),
        );
        return config;
    };
    let component = "config";
    let Some(mut top) = Fields::new(root, component, "", diags) else { return config };
    if let Some(node) = top.take("version") {
        match plain_integer(node) {
            Some(1) => {}
            _ => diags.push(node.pos, component, "version", format!("must be 1 (got {})", describe(node))),
        }
    }
    if let Some(node) = top.take("sources")
        && let Some(entries) = named_entries(node, component, "sources", diags)
    {
        for (name, key, value) in entries {
            if let Some(source) = source(name, key.pos, value, base_dir, diags) {
                config.sources.push(source);
            }
        }
    }
    match top.take("views") {
        Some(node) => {
            if let Some(entries) = named_entries(node, component, "views", diags) {
                for (name, key, value) in entries {
                    if let Some(view) = view(name, key.pos, value, diags) {
                        config.views.push(view);
                    }
                }
            }
        }
        None => diags.push(root.pos, component, "views", "is missing; declare at least one view".to_string()),
    }
    if let Some(node) = top.take("sinks")
        && let Some(entries) = named_entries(node, component, "sinks", diags)
    {
        let declared: Vec<&str> = config.views.iter().map(|view| view.name.as_str()).collect();
        for (name, key, value) in entries {
            if let Some(sink) = sink(name, key.pos, value, base_dir, &declared, diags) {
                config.sinks.push(sink);
            }
        }
    }
    if let Some(node) = top.take("api") {
        config.api = api(node, base_dir, diags);
    }
    if let Some(node) = top.take("commands") {
        config.commands = commands(node, base_dir, diags);
        if config.commands.is_some() && top.key_pos("api").is_none() {
            diags.push(
                top.key_pos("commands").unwrap_or(node.pos),
                "commands",
                "",
                "need the HTTP API to be reached: add `api: { listen: 127.0.0.1:8080 }`".to_string(),
            );
        }
    }
    if let Some(node) = top.take("state") {
        config.state = state(node, base_dir, diags);
    }
    top.finish(&["version", "sources", "views", "sinks", "api", "commands", "state"], diags);
    config
}

fn state(node: &Node, base_dir: &Path, diags: &mut Diagnostics) -> Option<StateConfig> {
    let component = "state";
    let mut fields = Fields::new(node, component, "", diags)?;
    let path = required(&mut fields, "path", diags).and_then(|n| path_value(n, component, "path", base_dir, diags));
    let every_ms = match fields.take("every_ms") {
        Some(n) => positive(n, component, "every_ms", diags),
        None => Some(60_000),
    };
    fields.finish(&["path", "every_ms"], diags);
    Some(StateConfig { path: path?, every_ms: every_ms? })
}

fn api(node: &Node, base_dir: &Path, diags: &mut Diagnostics) -> Option<ApiConfig> {
    let component = "api";
    let mut fields = Fields::new(node, component, "", diags)?;
    let listen = match fields.take("listen") {
        Some(value) => {
            let text = text(value, component, "listen", diags)?;
            match text.value.parse() {
                Ok(address) => Some(address),
                Err(_) => {
                    diags.push(
                        value.pos,
                        component,
                        "listen",
                        format!("must be an address and port such as 127.0.0.1:8080 (got {:?})", text.value),
                    );
                    None
                }
            }
        }
        None => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8080))),
    };
    let tokens = match fields.take("tokens") {
        Some(node) => tokens(node, base_dir, diags)?,
        None => Vec::new(),
    };
    let mut read_from = Vec::new();
    if let Some(node) = fields.take("read_from") {
        for (view, key, value) in named_entries(node, component, "read_from", diags)? {
            let sink = text(value, component, &format!("read_from.{view}"), diags)?;
            read_from.push((Spanned { value: view.to_string(), pos: key.pos, exact: true }, sink));
        }
    }
    fields.finish(&["listen", "tokens", "read_from"], diags);
    Some(ApiConfig { listen: listen?, tokens, read_from })
}

/// Shortest secret accepted: a guessable token is no token.
const MIN_SECRET_CHARS: usize = 16;

fn tokens(node: &Node, base_dir: &Path, diags: &mut Diagnostics) -> Option<Vec<TokenConfig>> {
    let component = "api";
    let mut out = Vec::new();
    for (name, _key, value) in named_entries(node, component, "tokens", diags)? {
        let path = format!("tokens.{name}");
        let Some(mut fields) = Fields::new(value, component, &path, diags) else { continue };
        let secret_value = fields.take("secret");
        let secret_file = fields.take("secret_file");
        let secret = match (secret_value, secret_file) {
            (Some(node), None) => {
                let key = format!("{path}.secret");
                text(node, component, &key, diags).and_then(|secret| {
                    if secret.value.chars().count() < MIN_SECRET_CHARS {
                        // The message must not show the secret.
                        diags.push(
                            node.pos,
                            component,
                            &key,
                            format!("must be at least {MIN_SECRET_CHARS} characters long"),
                        );
                        return None;
                    }
                    Some(SecretSource::Value(secret.value))
                })
            }
            (None, Some(node)) => {
                path_value(node, component, &format!("{path}.secret_file"), base_dir, diags).map(SecretSource::File)
            }
            (Some(node), Some(_)) => {
                diags.push(node.pos, component, &path, "give either secret or secret_file, not both".to_string());
                None
            }
            (None, None) => {
                diags.push(
                    value.pos,
                    component,
                    &path,
                    "needs secret (such as ${DASHBOARD_TOKEN}) or secret_file".to_string(),
                );
                None
            }
        };
        let stores = required(&mut fields, "stores", diags).and_then(|node| token_stores(node, &path, diags));
        let rights = required(&mut fields, "rights", diags).and_then(|node| token_rights(node, &path, diags));
        let rate_limit = match fields.take("rate_limit") {
            Some(node) => positive(node, component, &format!("{path}.rate_limit"), diags).map(Some),
            None => Some(None),
        };
        fields.finish(&["secret", "secret_file", "stores", "rights", "rate_limit"], diags);
        if let (Some(secret), Some(stores), Some((read, command)), Some(rate_limit)) =
            (secret, stores, rights, rate_limit)
        {
            out.push(TokenConfig { name: name.to_string(), secret, stores, read, command, rate_limit });
        }
    }
    Some(out)
}

/// `stores`: `"*"` (all, `None`) or a list of store ids.
fn token_stores(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Option<Vec<u64>>> {
    let key = format!("{path}.stores");
    let message = "must be \"*\" (every store) or a list of store ids such as [7, 8]";
    match &node.kind {
        NodeKind::Scalar { text, .. } if text == "*" => Some(None),
        NodeKind::Seq(items) if !items.is_empty() => {
            let mut stores = Vec::new();
            for item in items {
                match plain_integer(item) {
                    Some(id) if (0..=i128::from(u64::MAX)).contains(&id) => stores.push(id as u64),
                    _ => {
                        diags.push(item.pos, "api", &key, format!("{message} (got {})", describe(item)));
                        return None;
                    }
                }
            }
            Some(Some(stores))
        }
        _ => {
            diags.push(node.pos, "api", &key, format!("{message} (got {})", describe(node)));
            None
        }
    }
}

/// `rights`: a non-empty list of `read` and `command`.
fn token_rights(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<(bool, bool)> {
    let key = format!("{path}.rights");
    let NodeKind::Seq(items) = &node.kind else {
        diags.push(
            node.pos,
            "api",
            &key,
            format!("must be a list such as [read] or [read, command] (got {})", describe(node)),
        );
        return None;
    };
    let (mut read, mut command) = (false, false);
    for item in items {
        match item.as_scalar() {
            Some("read") => read = true,
            Some("command") => command = true,
            _ => {
                diags.push(item.pos, "api", &key, format!("{} is not a right; allowed: read, command", describe(item)));
                return None;
            }
        }
    }
    if !read && !command {
        diags.push(node.pos, "api", &key, "must grant read, command or both".to_string());
        return None;
    }
    Some((read, command))
}

fn commands(node: &Node, base_dir: &Path, diags: &mut Diagnostics) -> Option<CommandsConfig> {
    let component = "commands";
    let mut fields = Fields::new(node, component, "", diags)?;
    let brokers = required(&mut fields, "brokers", diags).and_then(|n| text(n, component, "brokers", diags));
    let events_topic =
        required(&mut fields, "events_topic", diags).and_then(|n| text(n, component, "events_topic", diags));
    let inventory_topic = fields.take("inventory_topic").and_then(|n| text(n, component, "inventory_topic", diags));
    let audit_topic = fields.take("audit_topic").and_then(|n| text(n, component, "audit_topic", diags));
    let state_dir = match fields.take("state_dir") {
        Some(n) => path_value(n, component, "state_dir", base_dir, diags),
        None => Some(base_dir.join(".projector/commands")),
    };
    let properties = fields.take("properties").map(|n| properties(n, component, diags)).unwrap_or_default();
    fields.finish(&["brokers", "events_topic", "inventory_topic", "audit_topic", "state_dir", "properties"], diags);
    let events_topic = events_topic?.value;
    Some(CommandsConfig {
        brokers: brokers?.value,
        inventory_topic: inventory_topic.map_or_else(|| format!("{events_topic}-inventory"), |t| t.value),
        audit_topic: audit_topic.map_or_else(|| format!("{events_topic}-audit"), |t| t.value),
        events_topic,
        state_dir: state_dir?,
        properties,
    })
}

fn source(name: &str, pos: Pos, node: &Node, base_dir: &Path, diags: &mut Diagnostics) -> Option<SourceConfig> {
    let component = format!("source {name:?}");
    let mut fields = Fields::new(node, &component, "", diags)?;
    let kind = match component_type(&mut fields, &component, &["file", "kafka"], diags)?.as_str() {
        "kafka" => SourceKind::Kafka(kafka_source(name, &mut fields, &component, diags)?),
        "file" => {
            let path =
                required(&mut fields, "path", diags).and_then(|n| path_value(n, &component, "path", base_dir, diags));
            let batch_records = match fields.take("batch_records") {
                Some(n) => positive(n, &component, "batch_records", diags)?,
                None => 100_000,
            };
            let dead_letters =
                fields.take("dead_letters").and_then(|n| path_value(n, &component, "dead_letters", base_dir, diags));
            fields.finish(&["type", "path", "batch_records", "dead_letters"], diags);
            SourceKind::File(FileSourceConfig { path: path?, batch_records, dead_letters })
        }
        _ => return None,
    };
    Some(SourceConfig { name: name.to_string(), pos, kind })
}

fn kafka_source(
    name: &str,
    fields: &mut Fields<'_>,
    component: &str,
    diags: &mut Diagnostics,
) -> Option<KafkaSourceConfig> {
    let brokers = required(fields, "brokers", diags).and_then(|n| text(n, component, "brokers", diags));
    let topic = required(fields, "topic", diags).and_then(|n| text(n, component, "topic", diags));
    let start = match fields.take("start") {
        Some(node) => start_position(node, component, diags),
        None => Some(StartPosition::Earliest),
    };
    let bounded = match fields.take("bounded") {
        Some(node) => boolean(node, component, "bounded", diags),
        None => Some(false),
    };
    let batch_ms = match fields.take("batch_ms") {
        Some(node) => positive(node, component, "batch_ms", diags),
        None => Some(20),
    };
    let catch_up_batch_ms = match fields.take("catch_up_batch_ms") {
        Some(node) => positive(node, component, "catch_up_batch_ms", diags),
        None => Some(DEFAULT_CATCH_UP_BATCH_MS),
    };
    let dead_letter_topic =
        fields.take("dead_letter_topic").and_then(|n| text(n, component, "dead_letter_topic", diags));
    let group_id = fields.take("group_id").and_then(|n| text(n, component, "group_id", diags));
    let properties = fields.take("properties").map(|n| properties(n, component, diags)).unwrap_or_default();
    let allowed = [
        "type",
        "brokers",
        "topic",
        "start",
        "bounded",
        "batch_ms",
        "catch_up_batch_ms",
        "dead_letter_topic",
        "group_id",
        "properties",
    ];
    fields.finish(&allowed, diags);
    Some(KafkaSourceConfig {
        brokers: brokers?.value,
        topic: topic?.value,
        start: start?,
        bounded: bounded?,
        batch_ms: batch_ms?,
        catch_up_batch_ms: catch_up_batch_ms?,
        dead_letter_topic: dead_letter_topic.map(|t| t.value),
        group_id: group_id.map_or_else(|| format!("projector-{name}"), |g| g.value),
        properties,
    })
}

/// `earliest`, `latest`, `{ offsets: { partition: offset } }` or
/// `{ timestamp: RFC 3339 }`.
fn start_position(node: &Node, component: &str, diags: &mut Diagnostics) -> Option<StartPosition> {
    const ALLOWED: &str = "earliest, latest, { offsets: { 0: 1200 } }, { timestamp: \"2024-03-01T00:00:00Z\" }";
    match &node.kind {
        NodeKind::Scalar { text, .. } if text == "earliest" => Some(StartPosition::Earliest),
        NodeKind::Scalar { text, .. } if text == "latest" => Some(StartPosition::Latest),
        NodeKind::Map(_) => {
            let mut fields = Fields::new(node, component, "start", diags)?;
            let start = if let Some(offsets) = fields.take("offsets") {
                let entries = Fields::new(offsets, component, "start.offsets", diags)?;
                let mut parsed = Vec::new();
                for (partition, key, value, _) in &entries.entries {
                    let partition_number = partition.parse::<i32>().ok().filter(|p| *p >= 0);
                    let offset = plain_integer(value).and_then(|o| i64::try_from(o).ok()).filter(|o| *o >= 0);
                    match (partition_number, offset) {
                        (Some(p), Some(o)) => parsed.push((p, o)),
                        (None, _) => diags.push(
                            key.pos,
                            component,
                            &format!("start.offsets.{partition}"),
                            "is not a partition number; write `partition: offset`, e.g. `0: 1200`".to_string(),
                        ),
                        (_, None) => diags.push(
                            value.pos,
                            component,
                            &format!("start.offsets.{partition}"),
                            format!("must be an offset of at least 0 (got {})", describe(value)),
                        ),
                    }
                }
                Some(StartPosition::Offsets(parsed))
            } else if let Some(instant) = fields.take("timestamp") {
                let text = text(instant, component, "start.timestamp", diags)?;
                match crate::value::Timestamp::parse_rfc3339(&text.value) {
                    Some(t) => Some(StartPosition::Timestamp(t.0)),
                    None => {
                        diags.push(
                            instant.pos,
                            component,
                            "start.timestamp",
                            format!("{:?} is not an RFC 3339 timestamp such as \"2024-03-01T00:00:00Z\"", text.value),
                        );
                        None
                    }
                }
            } else {
                diags.push(node.pos, component, "start", format!("must be one of: {ALLOWED}"));
                None
            };
            fields.finish(&["offsets", "timestamp"], diags);
            start
        }
        _ => {
            diags.push(node.pos, component, "start", format!("must be one of: {ALLOWED} (got {})", describe(node)));
            None
        }
    }
}

/// A `properties` mapping of client settings, names to text values.
fn properties(node: &Node, component: &str, diags: &mut Diagnostics) -> Vec<(String, String)> {
    let mut properties = Vec::new();
    if let Some(mut entries) = Fields::new(node, component, "properties", diags) {
        for (key, _, value, taken) in entries.entries.iter_mut() {
            *taken = true;
            if let Some(value) = text(value, component, &format!("properties.{key}"), diags) {
                properties.push((key.to_string(), value.value));
            }
        }
    }
    properties
}

fn boolean(node: &Node, component: &str, key: &str, diags: &mut Diagnostics) -> Option<bool> {
    match &node.kind {
        NodeKind::Scalar { text, style: ScalarKind::Plain } if text == "true" => Some(true),
        NodeKind::Scalar { text, style: ScalarKind::Plain } if text == "false" => Some(false),
        _ => {
            diags.push(node.pos, component, key, format!("must be true or false (got {})", describe(node)));
            None
        }
    }
}

fn view(name: &str, pos: Pos, node: &Node, diags: &mut Diagnostics) -> Option<ViewConfig> {
    let component = format!("view {name:?}");
    let mut fields = Fields::new(node, &component, "", diags)?;
    let description =
        fields.take("description").and_then(|n| text(n, &component, "description", diags)).map(|s| s.value);
    let from = required(&mut fields, "from", diags).and_then(|n| text(n, &component, "from", diags));
    let filter = fields.take("filter").and_then(|n| text(n, &component, "filter", diags));
    let having = fields.take("having").and_then(|n| text(n, &component, "having", diags));
    let mut group_by = Vec::new();
    if let Some(node) = fields.take("group_by") {
        match &node.kind {
            NodeKind::Seq(items) => {
                for (index, item) in items.iter().enumerate() {
                    if let Some(key) = group_key(item, &component, index, diags) {
                        group_by.push(key);
                    }
                }
            }
            _ => diags.push(
                node.pos,
                &component,
                "group_by",
                format!("must be a list of field names or `name: expression` entries (got a {})", node.type_name()),
            ),
        }
    }
    let mut measures = Vec::new();
    if let Some(node) = fields.take("measures")
        && let Some(entries) = named_entries(node, &component, "measures", diags)
    {
        for (measure_name, key, value) in entries {
            if let Some(m) = measure(measure_name, key, value, &component, diags) {
                measures.push(m);
            }
        }
    }
    let mut labels = Vec::new();
    if let Some(node) = fields.take("labels")
        && let Some(entries) = named_entries(node, &component, "labels", diags)
    {
        for (label_name, key, value) in entries {
            if let Some(l) = label(label_name, key, value, &component, diags) {
                labels.push(l);
            }
        }
    }
    let declares_output = fields.key_pos("group_by").is_some()
        || fields.key_pos("measures").is_some()
        || fields.key_pos("labels").is_some();
    if !declares_output {
        diags.push(pos, &component, "", "has no output fields; declare `group_by` and/or `measures`".to_string());
    }
    let buckets = match fields.take("buckets") {
        Some(node) => match positive(node, &component, "buckets", diags) {
            Some(n) if n <= 1024 => Some(n as u16),
            Some(n) => {
                diags.push(node.pos, &component, "buckets", format!("must be at most 1024 (got {n})"));
                None
            }
            None => None,
        },
        None => Some(1),
    };
    fields.finish(&["description", "from", "filter", "group_by", "measures", "labels", "having", "buckets"], diags);
    Some(ViewConfig {
        name: name.to_string(),
        pos,
        description,
        from: from?,
        filter,
        group_by,
        measures,
        labels,
        having,
        buckets: buckets?,
    })
}

fn group_key(item: &Node, component: &str, index: usize, diags: &mut Diagnostics) -> Option<GroupByConfig> {
    let field = format!("group_by[{index}]");
    match &item.kind {
        NodeKind::Scalar { .. } if !item.is_null() => {
            let name = text(item, component, &field, diags)?;
            Some(GroupByConfig { name: name.clone(), expr: name })
        }
        NodeKind::Map(entries) if entries.len() == 1 => {
            let (key, value) = &entries[0];
            let name = text(key, component, &field, diags)?;
            let expr = text(value, component, &format!("{field}.{}", name.value), diags)?;
            Some(GroupByConfig { name, expr })
        }
        _ => {
            diags.push(
                item.pos,
                component,
                &field,
                format!("must be a field name or one `name: expression` entry (got a {})", item.type_name()),
            );
            None
        }
    }
}

fn measure(name: &str, key: &Node, node: &Node, component: &str, diags: &mut Diagnostics) -> Option<MeasureConfig> {
    let path = format!("measures.{name}");
    let mut fields = Fields::new(node, component, &path, diags)?;
    let mut chosen: Vec<(MeasureFunction, &'static str, &Node)> = Vec::new();
    for (function, function_key) in MeasureFunction::ALL {
        if let Some(value) = fields.take(function_key) {
            chosen.push((function, function_key, value));
        }
    }
    let filter = fields.take("where").and_then(|n| text(n, component, &format!("{path}.where"), diags));
    let allowed: Vec<&str> = MeasureFunction::ALL.iter().map(|(_, k)| *k).chain(["where"]).collect();
    let second_key_pos = chosen.get(1).and_then(|(_, k, _)| fields.key_pos(k));
    fields.finish(&allowed, diags);
    let functions = MeasureFunction::ALL.iter().map(|(_, k)| *k).collect::<Vec<_>>().join(", ");
    let (function, function_key, value) = match chosen.as_slice() {
        [one] => *one,
        [] => {
            diags.push(node.pos, component, &path, format!("needs one aggregate function: {functions}"));
            return None;
        }
        [first, second, ..] => {
            diags.push(
                second_key_pos.unwrap_or(second.2.pos),
                component,
                &path,
                format!("has both '{}' and '{}'; a measure computes one function", first.1, second.1),
            );
            return None;
        }
    };
    let input = text(value, component, &format!("{path}.{function_key}"), diags)?;
    if function == MeasureFunction::Count && input.value != "*" {
        diags.push(
            value.pos,
            component,
            &format!("{path}.count"),
            format!("must be \"*\" (count rows; got {:?}); use count_distinct to count distinct values", input.value),
        );
        return None;
    }
    Some(MeasureConfig { name: spanned_key(key, name), function, input, filter })
}

fn label(name: &str, key: &Node, node: &Node, component: &str, diags: &mut Diagnostics) -> Option<LabelConfig> {
    let path = format!("labels.{name}");
    let NodeKind::Seq(items) = &node.kind else {
        diags.push(
            node.pos,
            component,
            &path,
            format!(
                "must be a list of rules like `- {{ when: \"order_count >= 2\", value: returning }}` (got a {})",
                node.type_name()
            ),
        );
        return None;
    };
    let mut rules = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let rule_path = format!("{path}[{index}]");
        let Some(mut fields) = Fields::new(item, component, &rule_path, diags) else { continue };
        let when = fields.take("when").and_then(|n| text(n, component, &format!("{rule_path}.when"), diags));
        let value = required(&mut fields, "value", diags)
            .and_then(|n| text(n, component, &format!("{rule_path}.value"), diags));
        fields.finish(&["when", "value"], diags);
        if let Some(value) = value {
            rules.push(LabelRule { when, value });
        }
    }
    Some(LabelConfig { name: spanned_key(key, name), rules })
}

/// A sink; `declared`: the names of the views, which its `view` must be
/// one of.
fn sink(
    name: &str,
    pos: Pos,
    node: &Node,
    base_dir: &Path,
    declared: &[&str],
    diags: &mut Diagnostics,
) -> Option<SinkConfig> {
    let component = format!("sink {name:?}");
    let mut fields = Fields::new(node, &component, "", diags)?;
    let view = required(&mut fields, "view", diags).and_then(|n| text(n, &component, "view", diags));
    if let Some(view) = &view
        && !declared.contains(&view.value.as_str())
    {
        let list = if declared.is_empty() { "none".to_string() } else { declared.join(", ") };
        diags.push(
            view.pos,
            &component,
            "view",
            format!("names {:?}, which is not a declared view; declared views: {list}", view.value),
        );
    }
    let kind = match component_type(&mut fields, &component, &["file", "redis", "clickhouse", "parquet"], diags)?
        .as_str()
    {
        "file" => {
            let path =
                required(&mut fields, "path", diags).and_then(|n| path_value(n, &component, "path", base_dir, diags));
            fields.finish(&["type", "view", "path"], diags);
            SinkKind::File(FileSinkConfig { path: path? })
        }
        "parquet" => {
            let path =
                required(&mut fields, "path", diags).and_then(|n| path_value(n, &component, "path", base_dir, diags));
            let every_ms = match fields.take("every_ms") {
                Some(n) => positive(n, &component, "every_ms", diags),
                None => Some(60_000),
            };
            fields.finish(&["type", "view", "path", "every_ms"], diags);
            SinkKind::Parquet(ParquetSinkConfig { path: path?, every_ms: every_ms? })
        }
        "redis" => {
            let url = fields.take("url").and_then(|n| text(n, &component, "url", diags));
            let key = required(&mut fields, "key", diags).and_then(|n| text(n, &component, "key", diags));
            let prefix = fields.take("prefix").and_then(|n| text(n, &component, "prefix", diags));
            let rankings = match fields.take("rankings") {
                Some(node) => rankings(node, &component, diags),
                None => Some(Vec::new()),
            };
            fields.finish(&["type", "view", "url", "key", "prefix", "rankings"], diags);
            let schemes = (&["redis", "valkey", "unix", "redis+unix", "valkey+unix"][..], &["rediss", "valkeys"][..]);
            check_url(url.as_ref(), &component, schemes, "redis://HOST:PORT", diags);
            SinkKind::Redis(RedisSinkConfig {
                url: url.map_or_else(|| "redis://127.0.0.1:6379".to_string(), |u| u.value),
                key: key?,
                prefix: prefix.map(|p| p.value).unwrap_or_default(),
                rankings: rankings?,
            })
        }
        "clickhouse" => {
            let mut optional = |key: &str| fields.take(key).and_then(|n| text(n, &component, key, diags));
            let (url, database, table) = (optional("url"), optional("database"), optional("table"));
            let (user, password) = (optional("user"), optional("password"));
            let batch_rows = match fields.take("batch_rows") {
                Some(n) => positive(n, &component, "batch_rows", diags),
                None => Some(100_000),
            };
            let batch_ms = match fields.take("batch_ms") {
                Some(n) => positive(n, &component, "batch_ms", diags),
                None => Some(1000),
            };
            let allowed = ["type", "view", "url", "database", "table", "user", "password", "batch_rows", "batch_ms"];
            fields.finish(&allowed, diags);
            check_url(url.as_ref(), &component, (&["http"], &["https"]), "http://HOST:8123", diags);
            for (key, value) in [("database", &database), ("table", &table)] {
                if let Some(value) = value
                    && !is_identifier(&value.value)
                {
                    diags.push(
                        value.pos,
                        &component,
                        key,
                        format!("{:?} is not a valid name; use lowercase letters, digits and '_'", value.value),
                    );
                }
            }
            SinkKind::ClickHouse(ClickHouseSinkConfig {
                url: url.map_or_else(|| "http://127.0.0.1:8123".to_string(), |u| u.value),
                database: database.map_or_else(|| "default".to_string(), |d| d.value),
                table: table.map(|t| t.value).unwrap_or_default(),
                user: user.map(|u| u.value),
                password: password.map(|p| p.value),
                batch_rows: batch_rows?,
                batch_ms: batch_ms?,
            })
        }
        _ => return None,
    };
    Some(SinkConfig { name: name.to_string(), pos, view: view?, kind })
}

/// `rankings:` of a Redis sink: `name: { key, member, score }`.
fn rankings(node: &Node, component: &str, diags: &mut Diagnostics) -> Option<Vec<RankingConfig>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (name, key, value) in named_entries(node, component, "rankings", diags)? {
        let path = format!("rankings.{name}");
        let Some(mut fields) = Fields::new(value, component, &path, diags) else {
            ok = false;
            continue;
        };
        let mut part = |field: &str| {
            required(&mut fields, field, diags).and_then(|n| text(n, component, &format!("{path}.{field}"), diags))
        };
        let (ranking_key, member, score) = (part("key"), part("member"), part("score"));
        fields.finish(&["key", "member", "score"], diags);
        match (ranking_key, member, score) {
            (Some(ranking_key), Some(member), Some(score)) => {
                out.push(RankingConfig { name: spanned_key(key, name), key: ranking_key, member, score })
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

// ------------------------------------------------------------- helpers --

/// The entries of a mapping, taken one by one; what is left at the end is
/// reported as unknown keys.
struct Fields<'n> {
    node: &'n Node,
    component: String,
    path: String,
    entries: Vec<(&'n str, &'n Node, &'n Node, bool)>,
}

impl<'n> Fields<'n> {
    /// Reads a mapping; reports a non-mapping or duplicate keys.
    fn new(node: &'n Node, component: &str, path: &str, diags: &mut Diagnostics) -> Option<Fields<'n>> {
        let NodeKind::Map(raw) = &node.kind else {
            let what = if path.is_empty() { "its declaration " } else { "" };
            diags.push(
                node.pos,
                component,
                path,
                format!("{what}must be a mapping of `key: value` entries (got a {})", node.type_name()),
            );
            return None;
        };
        let mut entries: Vec<(&'n str, &'n Node, &'n Node, bool)> = Vec::new();
        for (key, value) in raw {
            let Some(name) = key.as_scalar() else {
                diags.push(key.pos, component, path, "keys must be plain names".to_string());
                continue;
            };
            if let Some((_, first, _, _)) = entries.iter().find(|(n, ..)| *n == name) {
                let first_line = first.pos.line;
                diags.push(
                    key.pos,
                    component,
                    &join(path, name),
                    format!("is declared twice (first on line {first_line})"),
                );
                continue;
            }
            entries.push((name, key, value, false));
        }
        Some(Fields { node, component: component.to_string(), path: path.to_string(), entries })
    }

    /// Where `key` is written, if present.
    fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries.iter().find(|(name, ..)| *name == key).map(|(_, key, ..)| key.pos)
    }

    /// Takes the value of `key`, if present.
    fn take(&mut self, key: &str) -> Option<&'n Node> {
        let entry = self.entries.iter_mut().find(|(name, ..)| *name == key)?;
        entry.3 = true;
        Some(entry.2)
    }

    /// Reports every key not taken, with the keys allowed here (once).
    fn finish(&mut self, allowed: &[&str], diags: &mut Diagnostics) {
        for (name, key, _, taken) in &mut self.entries {
            if !std::mem::replace(taken, true) {
                let hint = match closest(name, allowed) {
                    Some(best) => format!(" (did you mean '{best}'?)"),
                    None => String::new(),
                };
                diags.push(
                    key.pos,
                    &self.component,
                    &join(&self.path, name),
                    format!("is not a known key{hint}; allowed here: {}", allowed.join(", ")),
                );
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// The entries of a `name: declaration` mapping (sources, views, sinks,
/// measures, labels), with names checked.
fn named_entries<'n>(
    node: &'n Node,
    component: &str,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<Vec<(&'n str, &'n Node, &'n Node)>> {
    if node.is_null() {
        return Some(Vec::new());
    }
    let fields = Fields::new(node, component, path, diags)?;
    let mut out = Vec::new();
    for (name, key, value, _) in fields.entries {
        if !is_identifier(name) {
            diags.push(
                key.pos,
                component,
                &join(path, name),
                "is not a valid name; use lowercase letters, digits and '_', starting with a letter or '_'".to_string(),
            );
            continue;
        }
        out.push((name, key, value));
    }
    Some(out)
}

/// A name usable as a file name, a ClickHouse column and a Redis key part.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks that a sink's `url` starts with one of `schemes` (`redis` for
/// `redis://`) and names something after it; `example` shows the form.
/// `tls` are the schemes of TLS connections, which this build's clients
/// cannot make.
fn check_url(
    url: Option<&Spanned<String>>,
    component: &str,
    (schemes, tls): (&[&str], &[&str]),
    example: &str,
    diags: &mut Diagnostics,
) {
    let Some(url) = url else { return };
    let scheme = url.value.split_once("://").filter(|(_, rest)| !rest.is_empty()).map(|(s, _)| s.to_ascii_lowercase());
    // A password in the URL stays out of the message.
    let shown = match (url.value.split_once("://"), url.value.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        (None, Some((_, host))) => format!("…@{host}"),
        _ => url.value.clone(),
    };
    let message = match scheme.as_deref() {
        Some(scheme) if schemes.contains(&scheme) => return,
        Some(scheme) if tls.contains(&scheme) => format!(
            "{shown:?}: this build of Projector makes no TLS connections; use {example} (through a TLS proxy if \
             the server needs one)"
        ),
        _ => {
            let allowed: Vec<String> = schemes.iter().map(|scheme| format!("{scheme}://")).collect();
            format!(
                "{shown:?} is not a URL this sink can use; write it as {example} (it may start with {})",
                allowed.join(", ")
            )
        }
    };
    diags.push(url.pos, component, "url", message);
}

fn required<'n>(fields: &mut Fields<'n>, key: &str, diags: &mut Diagnostics) -> Option<&'n Node> {
    let value = fields.take(key);
    if value.is_none() {
        let pos = fields.node.pos;
        let component = fields.component.clone();
        let path = join(&fields.path, key);
        diags.push(pos, &component, &path, "is required but missing".to_string());
    }
    value
}

/// Reads `type` and checks it is one of `allowed`.
fn component_type(
    fields: &mut Fields<'_>,
    component: &str,
    allowed: &[&str],
    diags: &mut Diagnostics,
) -> Option<String> {
    let node = required(fields, "type", diags)?;
    let kind = text(node, component, "type", diags)?;
    if !allowed.contains(&kind.value.as_str()) {
        diags.push(
            node.pos,
            component,
            "type",
            format!("{:?} is not a known type; allowed: {}", kind.value, allowed.join(", ")),
        );
        return None;
    }
    Some(kind.value)
}

/// A scalar as text.
fn text(node: &Node, component: &str, path: &str, diags: &mut Diagnostics) -> Option<Spanned<String>> {
    match &node.kind {
        NodeKind::Scalar { text, style } if !node.is_null() => {
            let exact = match style {
                ScalarKind::Plain => !text.contains('\n'),
                ScalarKind::SingleQuoted => !text.contains(['\n', '\'']),
                ScalarKind::DoubleQuoted => !text.contains(['\n', '\\', '"']),
                ScalarKind::Block => false,
            };
            let quoted = matches!(style, ScalarKind::SingleQuoted | ScalarKind::DoubleQuoted);
            let pos = if quoted { node.pos.shifted(1) } else { node.pos };
            Some(Spanned { value: text.clone(), pos, exact })
        }
        _ => {
            diags.push(node.pos, component, path, format!("must be a single value (got a {})", node.type_name()));
            None
        }
    }
}

fn spanned_key(key: &Node, name: &str) -> Spanned<String> {
    Spanned { value: name.to_string(), pos: key.pos, exact: true }
}

fn path_value(node: &Node, component: &str, key: &str, base_dir: &Path, diags: &mut Diagnostics) -> Option<PathBuf> {
    let value = text(node, component, key, diags)?;
    if value.value.trim().is_empty() {
        diags.push(node.pos, component, key, "must not be empty".to_string());
        return None;
    }
    let path = PathBuf::from(&value.value);
    Some(if path.is_absolute() { path } else { base_dir.join(path) })
}

fn plain_integer(node: &Node) -> Option<i128> {
    match &node.kind {
        NodeKind::Scalar { text, style: ScalarKind::Plain } => text.replace('_', "").parse().ok(),
        _ => None,
    }
}

fn positive(node: &Node, component: &str, key: &str, diags: &mut Diagnostics) -> Option<u64> {
    match plain_integer(node) {
        Some(n) if n >= 1 && n <= i128::from(u64::MAX) => Some(n as u64),
        _ => {
            diags.push(
                node.pos,
                component,
                key,
                format!("must be a whole number of at least 1 (got {})", describe(node)),
            );
            None
        }
    }
}

fn describe(node: &Node) -> String {
    match node.as_scalar() {
        Some(text) if !node.is_null() => text.to_string(),
        _ => format!("a {}", node.type_name()),
    }
}

/// The allowed word nearest to a misspelt one, if it is close.
fn closest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|candidate| (edit_distance(word, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 4) && *distance < candidate.len())
        .min()
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push((previous[j] + cost).min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

impl Diagnostics {
    /// Records an error about `path` (`'path' message`).
    pub(crate) fn push(&mut self, pos: Pos, component: &str, path: &str, message: String) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos,
            component: component.to_string(),
            field: path.to_string(),
            message,
        });
    }
}

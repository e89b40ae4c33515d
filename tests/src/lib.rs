//! Test support: a plain recomputation of the contract's views, written
//! separately from Projector's code, and a way to run Projector on lines.
//!
//! [`reference`] reads events with `serde_json::Value` and checks them with
//! its own code, then folds orders and computes each view with ordinary
//! maps, so a bug in Projector's decoding, dataflow or YAML views shows up
//! as a difference.
#![allow(clippy::unwrap_used, missing_docs)]

pub mod kafka;
pub mod reference;
pub mod services;
pub mod sinks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use projector::commands;
use projector_core::config;
use projector_core::value::Row;
use projector_dataflows::runner::{RunOptions, RunSummary};

/// The shipped config.
pub fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines.yaml")
}

/// What a file run wrote: each view's rows and the dead letters, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    pub views: BTreeMap<String, Vec<serde_json::Value>>,
    pub dead_letters: Vec<serde_json::Value>,
    pub summary_records: u64,
}

/// Runs `config_text` over `lines` with `--input/--output-dir` semantics.
pub fn run_lines(config_text: &str, lines: &[String], workers: usize, batch_records: u64) -> RunOutput {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&input, text).unwrap();
    let plan = config::check_text(config_text, "test.yaml", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("out");
    let summary: RunSummary = commands::run_file(
        plan.clone(),
        &input,
        &out,
        batch_records,
        RunOptions { workers, poll_records: 7, ..RunOptions::default() },
    )
    .unwrap();
    let mut views = BTreeMap::new();
    for view in &plan.views {
        views.insert(view.name.clone(), read_json_lines(&out.join(format!("{}.jsonl", view.name))));
    }
    let mut dead_letters = read_json_lines(&out.join("dead_letters.jsonl"));
    for letter in &mut dead_letters {
        // The input lives in a temporary folder whose name differs per run.
        letter.as_object_mut().unwrap().remove("source");
    }
    RunOutput { views, dead_letters, summary_records: summary.records }
}

/// Compares two lists of rows and names the first difference, instead of
/// printing thousands of rows.
pub fn first_difference(got: &[serde_json::Value], want: &[serde_json::Value]) -> Option<String> {
    if let Some(index) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        return Some(format!("row {index} differs:\n  got  {}\n  want {}", got[index], want[index]));
    }
    if got.len() != want.len() {
        let (longer, which) = if got.len() > want.len() { (got, "got") } else { (want, "want") };
        return Some(format!(
            "{} rows in got, {} in want; first extra in {which}: {}",
            got.len(),
            want.len(),
            longer[got.len().min(want.len())]
        ));
    }
    None
}

/// Where two state snapshots differ (the rows of one only, or with other
/// values), at most a few of them named; `None` when they hold the same
/// rows.
pub fn state_difference(one: &Path, other: &Path) -> Option<String> {
    let (one_rows, other_rows) = (state_rows(one), state_rows(other));
    let differ: Vec<_> = one_rows
        .iter()
        .filter(|(key, values)| other_rows.get(*key) != Some(values))
        .map(|(key, values)| format!("{key:?}: {values:?} in {} only", one.display()))
        .chain(
            other_rows
                .iter()
                .filter(|(key, values)| one_rows.get(*key) != Some(values))
                .map(|(key, values)| format!("{key:?}: {values:?} in {} only", other.display())),
        )
        .collect();
    (!differ.is_empty())
        .then(|| format!("{} state rows differ, as: {}", differ.len(), differ[..differ.len().min(3)].join("; ")))
}

/// The rows of a state snapshot, by key (each key once).
fn state_rows(path: &Path) -> BTreeMap<Row, Row> {
    let (rows, _) = projector_sink_parquet::read_rows(&projector::components::state_shape(), path).unwrap();
    let count = rows.len();
    let rows: BTreeMap<Row, Row> = rows.into_iter().collect();
    assert_eq!(rows.len(), count, "a key twice in {}", path.display());
    rows
}

/// Parses a JSON Lines file.
pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))).collect()
}

/// The shipped config's text.
pub fn shipped_config_text() -> String {
    std::fs::read_to_string(shipped_config()).unwrap()
}

/// The `views:` section of the shipped config (from its `views:` line to
/// its `sinks:` line), to build test configs with other sources and sinks.
pub fn shipped_views_yaml() -> String {
    let shipped = shipped_config_text();
    let start = shipped.find("\nviews:").unwrap();
    let end = shipped.find("\nsinks:").unwrap();
    shipped[start..end].to_string()
}

/// Prints a line and appends it to `$PROJECTOR_TEST_REPORT` (the test
/// command shows that file at the end: output of passing tests is hidden).
pub fn report(line: &str) {
    println!("{line}");
    if let Ok(path) = std::env::var("PROJECTOR_TEST_REPORT")
        && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        use std::io::Write;
        let _ = writeln!(file, "{line}");
    }
}

/// An API token of `secret` for `stores` (`None`: all) with the read
/// and/or command right, without a rate limit.
pub fn token_config(
    name: &str,
    secret: &str,
    stores: Option<Vec<u64>>,
    read: bool,
    command: bool,
) -> projector_core::config::TokenConfig {
    projector_core::config::TokenConfig {
        name: name.into(),
        secret: projector_core::config::SecretSource::Value(secret.into()),
        stores,
        read,
        command,
        rate_limit: None,
    }
}

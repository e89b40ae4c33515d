//! The subcommands, callable from the binary and from tests.

use std::path::Path;
use std::sync::Arc;

use projector_core::config::{self, ConfigErrors, PipelinePlan};
use projector_dataflows::runner::{RunError, RunOptions, RunSummary, run};
use projector_datagen::{Generator, GeneratorConfig};
use projector_source_file::FileSource;

use crate::components;

/// Why a command failed; the binary maps these to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The config has errors (exit code 2).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The run failed (exit code 1).
    #[error("{0}")]
    Run(#[from] RunError),
    /// Input or output failed (exit code 1).
    #[error("{0}")]
    Io(String),
}

/// Loads and checks a config.
pub fn load(path: &Path) -> Result<PipelinePlan, CommandError> {
    Ok(config::load(path)?)
}

/// `projector run --input FILE --output-dir DIR`: the config's views over
/// one events file, final rows to `DIR/<view>.jsonl`, dead letters to
/// `DIR/dead_letters.jsonl`. Sources and sinks of the config are not used.
pub fn run_file(
    plan: PipelinePlan,
    input: &Path,
    output_dir: &Path,
    batch_records: u64,
    options: RunOptions,
) -> Result<RunSummary, CommandError> {
    if !input.is_file() {
        return Err(CommandError::Io(format!("--input {}: no such file", input.display())));
    }
    std::fs::create_dir_all(output_dir)
        .map_err(|e| CommandError::Io(format!("--output-dir {}: cannot create it: {e}", output_dir.display())))?;
    let source_name = input.display().to_string();
    let outputs = components::directory_outputs(&plan, output_dir, vec![source_name.clone()]);
    let sources: Vec<(String, Arc<dyn projector_core::source::Source>)> =
        vec![(source_name, Arc::new(FileSource::new(0, input, batch_records)))];
    Ok(run(Arc::new(plan), sources, outputs, RunOptions { until_idle: true, ..options })?)
}

/// `projector run -c FILE`: the config's sources into its sinks, and its
/// HTTP API (with the command side) when it declares one.
pub fn run_config(plan: PipelinePlan, options: RunOptions) -> Result<RunSummary, CommandError> {
    if plan.config.sources.is_empty() {
        return Err(CommandError::Io(format!(
            "{}: no sources are declared; add one under `sources:` or pass --input EVENTS.jsonl --output-dir DIR",
            plan.config.file
        )));
    }
    let sources = components::sources(&plan);
    let mut outputs = components::outputs(&plan).map_err(|e| CommandError::Io(e.to_string()))?;
    // With an API, the views are also served from memory.
    let reads = match plan.config.api {
        Some(_) => Some(components::serve_views(&plan, &mut outputs).map_err(|e| CommandError::Io(e.to_string()))?),
        None => None,
    };
    if let Some(store) = &reads {
        components::watch_run(store, &options.progress);
    }
    let api = crate::api::start(&plan, reads)?;
    let result = run(Arc::new(plan), sources, outputs, options);
    if let Some(api) = api {
        api.stop();
    }
    Ok(result?)
}

/// `projector generate`: writes a generated log, one event per line.
pub fn generate(config: GeneratorConfig, out: &mut dyn std::io::Write) -> Result<u64, CommandError> {
    let mut written = 0;
    for record in Generator::new(config) {
        out.write_all(record.line.as_bytes()).map_err(|e| CommandError::Io(format!("cannot write: {e}")))?;
        out.write_all(b"\n").map_err(|e| CommandError::Io(format!("cannot write: {e}")))?;
        written += 1;
    }
    out.flush().map_err(|e| CommandError::Io(format!("cannot write: {e}")))?;
    Ok(written)
}

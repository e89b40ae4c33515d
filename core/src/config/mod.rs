//! `pipelines.yaml`: reading, checking and compiling a config.
//!
//! Two steps, as in Vector: [`load`] / [`check_text`] do no I/O beyond
//! reading the file and return every problem at once, each with
//! `file:line:column`, the component and field, and what is allowed; the
//! runtime then builds sources and sinks from the checked [`PipelinePlan`].

pub mod decode;
pub mod expr;
pub mod model;
mod plan;
pub mod yaml;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use model::*;
use yaml::Pos;

use crate::view::ViewPlan;

/// A checked config with its compiled views.
#[derive(Clone, Debug)]
pub struct PipelinePlan {
    /// The config as written.
    pub config: PipelineConfig,
    /// The compiled views, in config order.
    pub views: Vec<Arc<ViewPlan>>,
}

impl PipelinePlan {
    /// A compiled view by name.
    pub fn view(&self, name: &str) -> Option<&Arc<ViewPlan>> {
        self.views.iter().find(|v| v.name == name)
    }

    /// The first Kafka source that starts at `latest`, which names another
    /// place (the end of the topic then) at every start: neither a restart
    /// nor `validate` can rebuild from it what the first run started from.
    pub fn source_starting_at_latest(&self) -> Option<&SourceConfig> {
        self.config
            .sources
            .iter()
            .find(|source| matches!(&source.kind, SourceKind::Kafka(kafka) if kafka.start == StartPosition::Latest))
    }
}

/// One problem in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// Where the problem is.
    pub pos: Pos,
    /// The component: `view "order_summary"`, `sink "summary_file"`, `config`.
    pub component: String,
    /// The field within the component, as a path (`measures.revenue.sum`);
    /// empty when the problem is the component itself.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}: ", self.file, self.pos.line, self.pos.column, self.component)?;
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "'{}' {}", self.field, self.message)
        }
    }
}

/// Every problem found in a config, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Collects errors while a config is read.
#[derive(Debug, Default)]
pub struct Diagnostics {
    file: String,
    errors: Vec<ConfigError>,
}

/// Reads, checks and compiles a config file. Relative paths in it are
/// resolved against the file's folder.
pub fn load(path: &Path) -> Result<PipelinePlan, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            pos: Pos { line: 0, column: 0 },
            component: "config".into(),
            field: String::new(),
            message: format!("cannot be read: {error}"),
        }])
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    check_text(&text, &file, &base_dir)
}

/// Checks and compiles config text; `file` names it in messages and
/// `base_dir` resolves its relative paths.
pub fn check_text(text: &str, file: &str, base_dir: &Path) -> Result<PipelinePlan, ConfigErrors> {
    let mut diags = Diagnostics { file: file.to_string(), errors: Vec::new() };
    let mut root = match yaml::parse(text) {
        Ok(root) => root,
        Err(error) => {
            diags.push(error.pos, "config", "", format!("is not valid YAML: {}", error.message));
            return Err(ConfigErrors(diags.errors));
        }
    };
    if let Some(root) = root.as_mut() {
        for (pos, name) in yaml::expand_env(root, &|name| std::env::var(name).ok()) {
            diags.push(
                pos,
                "config",
                "",
                format!("environment variable {name} is not set; set it, or write ${{{name}:-default}} for a default"),
            );
        }
    }
    let config = decode::pipeline(root.as_ref(), file, base_dir, &mut diags);
    let plan = plan::plan(config, &mut diags);
    if diags.errors.is_empty() {
        Ok(plan)
    } else {
        diags.errors.sort_by_key(|e| e.pos);
        Err(ConfigErrors(diags.errors))
    }
}

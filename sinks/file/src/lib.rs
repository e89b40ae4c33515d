//! The `file` sink: a view's current rows as JSON Lines, and dead letters
//! as JSON Lines.
//!
//! [`FileViewSink`] keeps the view's rows in key order and replaces the file
//! atomically (write to a temporary file, then rename) at most once per
//! interval and at the end, so a reader never sees a half-written file.
//! [`FileDeadLetterSink`] appends each batch's dead letters.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use projector_core::record::DeadLetter;
use projector_core::sink::{DeadLetterSink, SinkError, SnapshotRows, ViewBatch, ViewSink};
use projector_core::value::Value;
use projector_core::view::ViewPlan;

/// A view materialized as a JSON Lines file.
pub struct FileViewSink {
    plan: Arc<ViewPlan>,
    path: PathBuf,
    snapshot: SnapshotRows,
}

impl FileViewSink {
    /// Writes `plan`'s rows to `path`, replacing it at most every
    /// `write_every` (never before the end when `None`).
    pub fn new(plan: Arc<ViewPlan>, path: impl AsRef<Path>, write_every: Option<Duration>) -> FileViewSink {
        FileViewSink { plan, path: path.as_ref().to_path_buf(), snapshot: SnapshotRows::new(write_every) }
    }

    fn write(&mut self) -> Result<(), SinkError> {
        let field_names: Vec<String> = self
            .plan
            .output_fields()
            .into_iter()
            .map(|(name, _)| serde_json::to_string(&name).unwrap_or_default())
            .collect();
        let rows = &self.snapshot.rows;
        replace_file(&self.path, |out| {
            let mut line = String::new();
            for (key, values) in rows {
                line.clear();
                row_json_line(&field_names, key, values, &mut line);
                out.write_all(line.as_bytes())?;
            }
            Ok(())
        })?;
        self.snapshot.written();
        Ok(())
    }
}

impl ViewSink for FileViewSink {
    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        if self.snapshot.apply(batch.changes, false) {
            self.write()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if self.snapshot.due_at_end(self.path.exists()) {
            self.write()?;
        }
        Ok(())
    }
}

/// Appends one row as a JSON object with the view's fields in order, and a
/// line break. `field_names` are already JSON-quoted.
pub fn row_json_line(field_names: &[String], key: &[Value], values: &[Value], out: &mut String) {
    out.push('{');
    for (index, (name, value)) in field_names.iter().zip(key.iter().chain(values)).enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&value.to_json().to_string());
    }
    out.push_str("}\n");
}

/// Writes a file through a temporary sibling and renames it into place.
fn replace_file(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<(), SinkError> {
    let failed =
        |what: &str, error: std::io::Error| SinkError::Retryable(format!("cannot {what} {}: {error}", path.display()));
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| failed("create the folder of", e))?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let file = File::create(&temporary).map_err(|e| failed("create", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    fill(&mut out).map_err(|e| failed("write", e))?;
    out.flush().map_err(|e| failed("write", e))?;
    std::fs::rename(&temporary, path).map_err(|e| failed("replace", e))?;
    Ok(())
}

/// Dead letters as JSON Lines: the original line, its line number, the
/// reason, the kind and the source.
pub struct FileDeadLetterSink {
    path: PathBuf,
    source_names: Vec<String>,
    out: Option<BufWriter<File>>,
}

impl FileDeadLetterSink {
    /// Writes to `path` (replacing it); `source_names` names sources by index.
    pub fn new(path: impl AsRef<Path>, source_names: Vec<String>) -> FileDeadLetterSink {
        FileDeadLetterSink { path: path.as_ref().to_path_buf(), source_names, out: None }
    }

    fn open(&mut self) -> Result<&mut BufWriter<File>, SinkError> {
        if self.out.is_none() {
            if let Some(parent) = self.path.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    SinkError::Retryable(format!("cannot create the folder of {}: {e}", self.path.display()))
                })?;
            }
            let file = File::create(&self.path)
                .map_err(|e| SinkError::Retryable(format!("cannot create {}: {e}", self.path.display())))?;
            self.out = Some(BufWriter::new(file));
        }
        self.out.as_mut().ok_or_else(|| SinkError::Fatal("dead-letter file is not open".into()))
    }
}

impl DeadLetterSink for FileDeadLetterSink {
    fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let names = self.source_names.clone();
        let path = self.path.display().to_string();
        let out = self.open()?;
        for letter in letters {
            let name = names.get(usize::from(letter.source)).map_or("", String::as_str);
            let line = letter.to_file_json(name);
            writeln!(out, "{line}").map_err(|e| SinkError::Retryable(format!("cannot write {path}: {e}")))?;
        }
        out.flush().map_err(|e| SinkError::Retryable(format!("cannot write {path}: {e}")))
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let path = self.path.display().to_string();
        let out = self.open()?;
        out.flush().map_err(|e| SinkError::Retryable(format!("cannot write {path}: {e}")))
    }
}

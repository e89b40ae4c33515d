//! The `file` source: a JSON Lines file of events.
//!
//! Every worker scans the whole file and takes the lines whose number
//! modulo the worker count is its own, so decoding spreads evenly while the
//! batch boundaries (every `batch_records` lines) are the same for all
//! workers. A record's position is its 1-based line number. Blank lines
//! carry no record and are skipped; a line's trailing `\r` is dropped.
//! Lines are handed over straight from the read buffer, not copied.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use projector_core::record::{LogPosition, RecordRef};
use projector_core::sink::SourcePositions;
use projector_core::source::{Poll, Source, SourceError, SourceReader};

/// A file of events, read once to its end.
#[derive(Clone, Debug)]
pub struct FileSource {
    source_index: u16,
    path: PathBuf,
    batch_records: u64,
}

impl FileSource {
    /// The file at `path`, as source number `source_index` of the pipeline,
    /// in batches of `batch_records` lines.
    pub fn new(source_index: u16, path: impl AsRef<Path>, batch_records: u64) -> FileSource {
        FileSource { source_index, path: path.as_ref().to_path_buf(), batch_records: batch_records.max(1) }
    }
}

/// The next line number after the last line of the file at `path`: where
/// it ends, in the file source's positions.
pub fn end(path: &Path) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut lines = 0u64;
    let mut ends_with_newline = true;
    loop {
        let buffer = reader.fill_buf().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if buffer.is_empty() {
            break;
        }
        lines += memchr::memchr_iter(b'\n', buffer).count() as u64;
        ends_with_newline = buffer.last() == Some(&b'\n');
        let read = buffer.len();
        reader.consume(read);
    }
    Ok(lines + u64::from(!ends_with_newline) + 1)
}

impl Source for FileSource {
    fn bounds(&self) -> Option<projector_core::source::LogBounds> {
        end(&self.path).ok().map(|end| [(0, (0, end))].into_iter().collect())
    }

    fn reader(&self, index: usize, peers: usize) -> Result<Box<dyn SourceReader>, SourceError> {
        let file = File::open(&self.path)
            .map_err(|error| SourceError::Fatal(format!("cannot open {}: {error}", self.path.display())))?;
        Ok(Box::new(FileReader {
            source_index: self.source_index,
            path: self.path.clone(),
            reader: BufReader::with_capacity(1 << 20, file),
            batch_records: self.batch_records,
            worker: index as u64,
            peers: peers.max(1) as u64,
            next_line: 1,
            partial: Vec::new(),
            in_line: false,
            finished: false,
        }))
    }
}

struct FileReader {
    source_index: u16,
    path: PathBuf,
    reader: BufReader<File>,
    batch_records: u64,
    worker: u64,
    peers: u64,
    /// Number of the line the reader is in or will read next, from 1.
    next_line: u64,
    /// The start of the current line when it spans reads (and is ours).
    partial: Vec<u8>,
    /// Whether some bytes of line `next_line` were already consumed.
    in_line: bool,
    finished: bool,
}

/// Hands a line over unless it is blank; drops a trailing `\r`, and a
/// UTF-8 byte order mark at the start of the file.
fn deliver_line(line: u64, bytes: &[u8], deliver: &mut dyn FnMut(RecordRef<'_>)) -> bool {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let bytes = if line == 1 { bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes) } else { bytes };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return false;
    }
    deliver(RecordRef { position: LogPosition { partition: 0, offset: line }, key: None, bytes });
    true
}

impl FileReader {
    fn owns(&self, line: u64) -> bool {
        (line - 1) % self.peers == self.worker
    }

    fn epoch_of(&self, line: u64) -> u64 {
        (line - 1) / self.batch_records
    }
}

impl SourceReader for FileReader {
    fn caught_up(&self) -> bool {
        self.finished
    }

    fn poll(&mut self, max: usize, deliver: &mut dyn FnMut(RecordRef<'_>)) -> Result<Poll, SourceError> {
        if self.finished {
            return Ok(Poll::Finished);
        }
        let epoch = self.epoch_of(self.next_line);
        let max = max.max(1);
        let mut delivered = 0usize;
        // Lines of other workers also count, so a poll returns regularly.
        let mut lines_seen = 0usize;
        while delivered < max && lines_seen < max * self.peers as usize {
            if self.epoch_of(self.next_line) != epoch {
                break;
            }
            let owned = self.owns(self.next_line);
            let buffer = match self.reader.fill_buf() {
                Ok(buffer) => buffer,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(SourceError::Fatal(format!("cannot read {}: {error}", self.path.display())));
                }
            };
            if buffer.is_empty() {
                // The last line has no line break.
                if self.in_line && owned {
                    deliver_line(self.next_line, &self.partial, deliver);
                }
                if self.in_line {
                    self.next_line += 1;
                }
                self.partial.clear();
                self.finished = true;
                break;
            }
            match memchr::memchr(b'\n', buffer) {
                Some(end) => {
                    if owned {
                        let sent = if self.in_line {
                            self.partial.extend_from_slice(&buffer[..end]);
                            deliver_line(self.next_line, &self.partial, deliver)
                        } else {
                            deliver_line(self.next_line, &buffer[..end], deliver)
                        };
                        delivered += usize::from(sent);
                    }
                    self.reader.consume(end + 1);
                    self.partial.clear();
                    self.in_line = false;
                    self.next_line += 1;
                    lines_seen += 1;
                }
                None => {
                    let length = buffer.len();
                    if owned {
                        self.partial.extend_from_slice(buffer);
                    }
                    self.reader.consume(length);
                    self.in_line = true;
                }
            }
        }
        Ok(Poll::Records { epoch })
    }

    fn positions(&self) -> SourcePositions {
        SourcePositions([((self.source_index, 0), self.next_line)].into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(path: &Path, peers: usize, batch: u64) -> Vec<(usize, u64, u64, String)> {
        let source = FileSource::new(0, path, batch);
        let mut all = Vec::new();
        for worker in 0..peers {
            let mut reader = source.reader(worker, peers).unwrap();
            loop {
                let mut lines = Vec::new();
                let poll = reader
                    .poll(2, &mut |record| {
                        lines.push((record.position.offset, String::from_utf8(record.bytes.to_vec()).unwrap()))
                    })
                    .unwrap();
                match poll {
                    Poll::Records { epoch } => {
                        all.extend(lines.into_iter().map(|(line, text)| (worker, epoch, line, text)))
                    }
                    Poll::Idle { .. } => {}
                    Poll::Finished => break,
                }
            }
        }
        all.sort_by_key(|(_, _, line, _)| *line);
        all
    }

    #[test]
    fn splits_lines_over_workers_and_batches() {
        let dir = std::env::temp_dir().join(format!("projector-file-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let mut file = File::create(&path).unwrap();
        write!(file, "\u{feff}a\r\nb\n\n   \nc\nd\ne").unwrap();
        drop(file);
        let lines = read_all(&path, 2, 3);
        let expected = [(0, 0, 1, "a"), (1, 0, 2, "b"), (0, 1, 5, "c"), (1, 1, 6, "d"), (0, 2, 7, "e")];
        assert_eq!(lines.len(), expected.len(), "{lines:?}");
        for (got, want) in lines.iter().zip(expected) {
            assert_eq!((got.0, got.1, got.2, got.3.as_str()), want);
        }
        assert_eq!(read_all(&path, 1, 100).len(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_longer_than_the_buffer_arrive_whole() {
        let dir = std::env::temp_dir().join(format!("projector-file-source-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let long = "x".repeat(3 << 20);
        std::fs::write(&path, format!("short\n{long}\nlast")).unwrap();
        let lines = read_all(&path, 1, 10);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].3.len(), long.len());
        assert_eq!(lines[2].3, "last");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

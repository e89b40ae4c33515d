//! The seam between sources (file, Kafka) and the dataflow.
//!
//! Each timely worker asks every source for the readers it owns (the file
//! source gives each worker every N-th line; the Kafka source gives each
//! worker a share of the partitions). The runtime polls the readers, decodes
//! the records they hand over (without copying them) and feeds the events
//! into the dataflow, batch by batch.

use crate::record::RecordRef;
use crate::sink::SourcePositions;

/// What a poll produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Records were delivered; they all belong to batch `epoch`. Epochs
    /// never decrease from one poll to the next.
    Records {
        /// The batch the records belong to.
        epoch: u64,
    },
    /// Nothing now; more may come later. Everything before `epoch` has been
    /// delivered.
    Idle {
        /// The lowest batch a later record can belong to.
        epoch: u64,
    },
    /// The source is exhausted (a bounded source reached its end).
    Finished,
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A retry may succeed.
    #[error("{0} (will retry)")]
    Retryable(String),
    /// A retry will not help.
    #[error("{0}")]
    Fatal(String),
}

/// Reads one worker's share of a source.
///
/// Calling order: [`SourceReader::poll`] repeatedly until it returns
/// [`Poll::Finished`] (never, for an unbounded source);
/// [`SourceReader::positions`] at any time between polls.
pub trait SourceReader: Send {
    /// Hands up to `max` records of one batch to `deliver`, borrowed (the
    /// reader may reuse the bytes afterwards).
    fn poll(&mut self, max: usize, deliver: &mut dyn FnMut(RecordRef<'_>)) -> Result<Poll, SourceError>;
    /// For each partition this reader owns, the next offset it will read.
    fn positions(&self) -> SourcePositions;
    /// Whether the reader has read up to where its log ended when it
    /// started (a file: to its end). Readiness waits for this.
    fn caught_up(&self) -> bool {
        false
    }
}

/// A source that can be split over workers.
pub trait Source: Send + Sync {
    /// The reader for worker `index` of `peers`.
    fn reader(&self, index: usize, peers: usize) -> Result<Box<dyn SourceReader>, SourceError>;
}

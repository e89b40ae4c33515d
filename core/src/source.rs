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
    /// reader may reuse the bytes afterwards). A poll with `max` 0 asks
    /// only where the batch stands now (a reader whose batches go by line
    /// count may still hand one record).
    fn poll(&mut self, max: usize, deliver: &mut dyn FnMut(RecordRef<'_>)) -> Result<Poll, SourceError>;
    /// For each partition this reader owns, the next offset it will read.
    fn positions(&self) -> SourcePositions;
    /// Whether the reader has read up to where its log ended when it
    /// started (a file: to its end). Readiness waits for this.
    fn caught_up(&self) -> bool {
        false
    }
    /// How long the worker may sleep with nothing to read: `Some(t)` if
    /// this reader wakes the worker's thread itself when records come and
    /// has nothing to do before `t` (where its batch ends); `None` (the
    /// default) if it must be polled every moment.
    fn idle_until(&self) -> Option<std::time::Instant> {
        None
    }
}

/// Per partition: where a log starts and where it ends ([`Source::bounds`]).
pub type LogBounds = std::collections::BTreeMap<u32, (u64, u64)>;

/// A source that can be split over workers.
pub trait Source: Send + Sync {
    /// The reader for worker `index` of `peers`.
    fn reader(&self, index: usize, peers: usize) -> Result<Box<dyn SourceReader>, SourceError>;

    /// Readers made after this call may skip what comes before `positions`
    /// (a run that starts from a state snapshot); the runner drops such
    /// records anyway, so a source that cannot seek ignores this.
    fn start_at(&self, _positions: &SourcePositions) {}

    /// Where the log starts and ends now: per partition, its first
    /// position (a Kafka partition's low watermark, which retention moves
    /// on; 0 for a log that never drops its front) and the position after
    /// its last record (the high watermark, a file's next line number).
    /// `None` when the source cannot tell now (the broker does not answer).
    /// A position past the end means the log was truncated, or its topic
    /// deleted and created anew, since that position was read; one before
    /// the start, that records were deleted before they were read.
    fn bounds(&self) -> Option<LogBounds> {
        None
    }
}

/// How far a [`BoundedSource`] may read, shared with whoever moves it.
#[derive(Debug, Default)]
pub struct Bound {
    state: std::sync::Mutex<BoundState>,
}

#[derive(Debug, Default)]
struct BoundState {
    /// Read no record at or after these positions (a partition not listed:
    /// nothing of it). `None`: no limit yet.
    limit: Option<SourcePositions>,
    /// Once set, a reader at its limit is finished instead of idle.
    closed: bool,
}

impl Bound {
    /// A bound at `limit` (`None`: none yet).
    pub fn new(limit: Option<SourcePositions>) -> Bound {
        Bound { state: std::sync::Mutex::new(BoundState { limit, closed: false }) }
    }

    /// Moves the limit (only ever forward, for what was read stays read).
    pub fn set(&self, limit: SourcePositions) {
        self.lock().limit = Some(limit);
    }

    /// The current limit.
    pub fn limit(&self) -> Option<SourcePositions> {
        self.lock().limit.clone()
    }

    /// Readers that reach the limit finish.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A source read only up to a [`Bound`] that may move while it is read:
/// records at or after the limit of their partition are held back until
/// the limit passes them, and a reader whose partitions all reached the
/// limit waits for it to move, or finishes once it is closed. `replay`
/// builds a shadow of a view this way, up to exactly the position a live
/// sink holds.
pub struct BoundedSource {
    inner: std::sync::Arc<dyn Source>,
    source_index: u16,
    bound: std::sync::Arc<Bound>,
}

impl BoundedSource {
    /// `inner` (source number `source_index` in positions), read up to
    /// `bound`.
    pub fn new(inner: std::sync::Arc<dyn Source>, source_index: u16, bound: std::sync::Arc<Bound>) -> BoundedSource {
        BoundedSource { inner, source_index, bound }
    }
}

impl Source for BoundedSource {
    fn reader(&self, index: usize, peers: usize) -> Result<Box<dyn SourceReader>, SourceError> {
        let inner = self.inner.reader(index, peers)?;
        Ok(Box::new(BoundedReader {
            inner,
            source_index: self.source_index,
            bound: std::sync::Arc::clone(&self.bound),
            epoch: 0,
            held: std::collections::VecDeque::new(),
        }))
    }

    fn start_at(&self, positions: &SourcePositions) {
        self.inner.start_at(positions);
    }

    fn bounds(&self) -> Option<LogBounds> {
        self.inner.bounds()
    }
}

/// Records a bounded reader holds beyond its limit before it stops reading.
const HOLD_AT_MOST: usize = 200_000;

/// A record read beyond the limit: position, key, bytes.
type HeldRecord = (crate::record::LogPosition, Option<Vec<u8>>, Vec<u8>);

struct BoundedReader {
    inner: Box<dyn SourceReader>,
    source_index: u16,
    bound: std::sync::Arc<Bound>,
    /// The latest epoch the inner reader reported.
    epoch: u64,
    /// Records read beyond the limit, in the order read.
    held: std::collections::VecDeque<HeldRecord>,
}

impl BoundedReader {
    fn below(&self, limit: Option<&SourcePositions>, position: crate::record::LogPosition) -> bool {
        limit.is_none_or(|limit| limit.before(self.source_index, position))
    }
}

impl SourceReader for BoundedReader {
    fn poll(&mut self, max: usize, deliver: &mut dyn FnMut(RecordRef<'_>)) -> Result<Poll, SourceError> {
        let (limit, closed) = {
            let state = self.bound.lock();
            (state.limit.clone(), state.closed)
        };
        let mut delivered = 0usize;
        // What the limit now lets through, in the order it was read (a
        // partition's records stay in order: all held ones are beyond the
        // limit the poll that read them saw, and it only moves forward).
        let mut still_held = std::collections::VecDeque::new();
        for (position, key, bytes) in std::mem::take(&mut self.held) {
            let blocked = still_held.iter().any(|(p, _, _): &HeldRecord| p.partition == position.partition);
            if !blocked && self.below(limit.as_ref(), position) {
                deliver(RecordRef { position, key: key.as_deref(), bytes: &bytes });
                delivered += 1;
            } else {
                still_held.push_back((position, key, bytes));
            }
        }
        self.held = still_held;
        // Read on while not too much is held back: the limit trails the
        // head of the log by about a live sink's lag. (The reader cannot
        // stop one partition, so a partition ahead must not stop the rest.)
        // Holding all it may, it asks for no records but still polls: the
        // inner reader's batch must move on, or the batch of the last
        // records below the limit would never close.
        loop {
            let room = self.held.len() < HOLD_AT_MOST.max(max);
            let source_index = self.source_index;
            let held = &mut self.held;
            let poll = self.inner.poll(if room { max } else { 0 }, &mut |record| {
                let wanted = held.iter().all(|(p, _, _)| p.partition != record.position.partition)
                    && limit.as_ref().is_none_or(|l| l.before(source_index, record.position));
                if wanted {
                    delivered += 1;
                    deliver(record);
                } else {
                    held.push_back((record.position, record.key.map(<[u8]>::to_vec), record.bytes.to_vec()));
                }
            })?;
            match poll {
                // Everything read was held back: read on.
                Poll::Records { epoch } if delivered == 0 && room => self.epoch = self.epoch.max(epoch),
                Poll::Records { epoch } | Poll::Idle { epoch } => {
                    self.epoch = self.epoch.max(epoch);
                    break;
                }
                Poll::Finished if self.held.is_empty() => return Ok(Poll::Finished),
                Poll::Finished => break,
            }
        }
        if delivered > 0 {
            return Ok(Poll::Records { epoch: self.epoch });
        }
        let at_limit = limit.as_ref().is_some_and(|limit| {
            self.positions().0.iter().all(|(&(source, partition), &next)| next >= limit.get(source, partition))
        });
        Ok(if closed && at_limit { Poll::Finished } else { Poll::Idle { epoch: self.epoch } })
    }

    fn positions(&self) -> SourcePositions {
        let mut positions = self.inner.positions();
        // A partition with held records is read up to its first held one,
        // or to the limit if that is lower (offsets may have gaps).
        let limit = self.bound.limit();
        for (position, _, _) in self.held.iter().rev() {
            let cap = limit.as_ref().map_or(u64::MAX, |l| l.get(self.source_index, position.partition));
            positions.0.insert((self.source_index, position.partition), position.offset.min(cap));
        }
        positions
    }

    fn caught_up(&self) -> bool {
        self.inner.caught_up() && self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::LogPosition;

    /// Two partitions of ten records each, read a few at a time.
    struct Fixed;

    struct FixedReader {
        next: [u64; 2],
    }

    impl Source for Fixed {
        fn reader(&self, _index: usize, _peers: usize) -> Result<Box<dyn SourceReader>, SourceError> {
            Ok(Box::new(FixedReader { next: [0, 0] }))
        }
    }

    impl SourceReader for FixedReader {
        fn poll(&mut self, max: usize, deliver: &mut dyn FnMut(RecordRef<'_>)) -> Result<Poll, SourceError> {
            let mut delivered = 0;
            for partition in 0..2u32 {
                while delivered < max && self.next[partition as usize] < 10 {
                    let offset = self.next[partition as usize];
                    let bytes = format!("{partition}:{offset}");
                    deliver(RecordRef {
                        position: LogPosition { partition, offset },
                        key: None,
                        bytes: bytes.as_bytes(),
                    });
                    self.next[partition as usize] += 1;
                    delivered += 1;
                }
            }
            Ok(if delivered > 0 { Poll::Records { epoch: 0 } } else { Poll::Idle { epoch: 0 } })
        }

        fn positions(&self) -> SourcePositions {
            SourcePositions([((3, 0), self.next[0]), ((3, 1), self.next[1])].into_iter().collect())
        }
    }

    fn limit(first: u64, second: u64) -> SourcePositions {
        SourcePositions([((3, 0), first), ((3, 1), second)].into_iter().collect())
    }

    fn drain(reader: &mut dyn SourceReader, seen: &mut Vec<String>) -> Poll {
        loop {
            let poll = reader.poll(4, &mut |r| seen.push(String::from_utf8_lossy(r.bytes).into_owned())).unwrap();
            if !matches!(poll, Poll::Records { .. }) {
                return poll;
            }
        }
    }

    #[test]
    fn a_bounded_reader_stops_at_the_limit_and_goes_on_when_it_moves() {
        let bound = Arc::new(Bound::new(Some(limit(3, 5))));
        let source = BoundedSource::new(Arc::new(Fixed), 3, Arc::clone(&bound));
        let mut reader = source.reader(0, 1).unwrap();
        let mut seen = Vec::new();
        assert_eq!(drain(reader.as_mut(), &mut seen), Poll::Idle { epoch: 0 });
        assert_eq!(seen.len(), 8, "{seen:?}");
        assert_eq!(reader.positions(), limit(3, 5));
        bound.set(limit(7, 5));
        assert_eq!(drain(reader.as_mut(), &mut seen), Poll::Idle { epoch: 0 });
        assert_eq!(reader.positions(), limit(7, 5));
        bound.set(limit(10, 10));
        bound.close();
        assert_eq!(drain(reader.as_mut(), &mut seen), Poll::Finished);
        // Every record once, each partition in order.
        for partition in 0..2 {
            let offsets: Vec<u64> = seen
                .iter()
                .filter_map(|s| s.split_once(':'))
                .filter(|(p, _)| *p == partition.to_string())
                .map(|(_, o)| o.parse().unwrap())
                .collect();
            assert_eq!(offsets, (0..10).collect::<Vec<_>>());
        }
    }

    /// One partition that never ends; its batch number counts the polls,
    /// as a clock would.
    struct Endless {
        next: u64,
        polls: u64,
    }

    impl SourceReader for Endless {
        fn poll(&mut self, max: usize, deliver: &mut dyn FnMut(RecordRef<'_>)) -> Result<Poll, SourceError> {
            self.polls += 1;
            for _ in 0..max {
                deliver(RecordRef {
                    position: LogPosition { partition: 0, offset: self.next },
                    key: None,
                    bytes: b"e",
                });
                self.next += 1;
            }
            Ok(if max > 0 { Poll::Records { epoch: self.polls } } else { Poll::Idle { epoch: self.polls } })
        }

        fn positions(&self) -> SourcePositions {
            SourcePositions([((3, 0), self.next)].into_iter().collect())
        }
    }

    /// A reader that holds back all it may beyond the limit still lets its
    /// batch move on: otherwise the batch of the last records below the
    /// limit never closes, and a replay following a live sink far behind
    /// the log waits for ever.
    #[test]
    fn a_bounded_reader_holding_all_it_may_lets_its_batch_move_on() {
        let bound = Arc::new(Bound::new(Some(SourcePositions([((3, 0), 5)].into_iter().collect()))));
        let mut reader = BoundedReader {
            inner: Box::new(Endless { next: 0, polls: 0 }),
            source_index: 3,
            bound,
            epoch: 0,
            held: std::collections::VecDeque::new(),
        };
        let mut seen = 0;
        let mut epochs = Vec::new();
        for _ in 0..4 {
            match reader.poll(4096, &mut |_| seen += 1).unwrap() {
                Poll::Records { epoch } | Poll::Idle { epoch } => epochs.push(epoch),
                Poll::Finished => panic!("an endless source finished"),
            }
        }
        assert_eq!(seen, 5);
        assert!(reader.held.len() <= HOLD_AT_MOST + 4096, "held {}", reader.held.len());
        assert!(epochs.windows(2).skip(1).all(|pair| pair[0] < pair[1]), "the batch stood still: {epochs:?}");
        assert_eq!(reader.positions(), SourcePositions([((3, 0), 5)].into_iter().collect()));
    }
}

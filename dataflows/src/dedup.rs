//! Deduplication by `event_id`: which copies of an event must not count.
//!
//! Every event is sent, by its `event_id`, to one worker, which keeps the
//! copies of each `event_id` it has seen in a hash map. When a batch is
//! complete (the input frontier has passed it), each copy of the batch is
//! added to its `event_id`'s copies, and what that changes is emitted:
//!
//! - a *stray copy*: a copy of an order event whose `event_id` was first
//!   seen (lowest position) in another order or on an event of another
//!   type. The order fold must ignore it.
//! - with `first_copies`, the *first copy* of each `event_id` (for state
//!   snapshots).
//!
//! Each copy's effect is emitted as what it took away and what it added,
//! so a batch's net output depends only on the batch, not on the order its
//! copies arrive in, nor on the number of workers. A well-behaved log
//! (each `event_id` once, or redelivered within its own order) gives no
//! stray copies.
//!
//! This replaces an arrangement of every copy by `event_id` and a `reduce`
//! over it, which gave the same collections: in `perf` samples of an
//! `order_summary` replay, 19% of the workers' time went there, and 13 to
//! 14% goes to this operator (a log's `event_id`s nearly all occur once,
//! and a hash map finds that without sorting them).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;

use differential_dataflow::collection::AsCollection;
use differential_dataflow::{Hashable, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use projector_core::event::EventId;

use crate::EventPosition;
use crate::decode::KeyedEvent;

/// One copy of an event: its position, and its order if it is an order
/// event. Copies order by position first: the first copy in the log is the
/// least.
type EventCopy = (EventPosition, Option<Arc<str>>);

/// What deduplication says of a batch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dedup {
    /// The copy of an order event at this position, in this order, does
    /// not count.
    Stray(Arc<str>, EventPosition),
    /// The first copy of an `event_id` is at this position.
    First(EventId, EventPosition),
}

/// The copies of one `event_id` seen so far.
enum Copies {
    /// One copy, counted once: nearly every `event_id` (held without an
    /// allocation of its own).
    One(EventCopy),
    /// Any other case: each copy with its count, sorted (first copy
    /// first), without zero counts.
    Many(Vec<(EventCopy, isize)>),
}

impl Copies {
    /// The copies as a list, made one if it was a single copy.
    fn many(&mut self) -> &mut Vec<(EventCopy, isize)> {
        if let Copies::One(first) = self {
            let first = first.clone();
            *self = Copies::Many(vec![(first, 1)]);
        }
        match self {
            Copies::Many(copies) => copies,
            // Not reached: a single copy was just made a list.
            Copies::One(_) => self.many(),
        }
    }
}

/// The stray copies among `copies`: those of order events after the first
/// copy, in another order than the first copy's (or the first copy is not
/// an order event).
fn strays(copies: &[(EventCopy, isize)]) -> impl Iterator<Item = (Arc<str>, EventPosition)> + '_ {
    let first_order = copies.first().and_then(|((_, order), _)| order.as_ref());
    copies.iter().skip(1).filter_map(move |((position, order), _)| match order {
        Some(order) if first_order != Some(order) => Some((Arc::clone(order), *position)),
        _ => None,
    })
}

/// Adds `diff` of `copy` to `copies`, keeping them sorted and without
/// zero counts.
fn add(copies: &mut Vec<(EventCopy, isize)>, copy: EventCopy, diff: isize) {
    match copies.binary_search_by(|(c, _)| c.cmp(&copy)) {
        Ok(index) => {
            copies[index].1 += diff;
            if copies[index].1 == 0 {
                copies.remove(index);
            }
        }
        Err(index) => copies.insert(index, (copy, diff)),
    }
}

/// The stray copies of `events` (with `first_copies`, also the first copy
/// of every `event_id`), as a collection of [`Dedup`].
pub fn dedup<'scope>(
    events: VecCollection<'scope, u64, KeyedEvent>,
    first_copies: bool,
) -> VecCollection<'scope, u64, Dedup> {
    type Update = ((EventId, EventCopy), u64, isize);
    let copies = events.map(|(event_id, (position, event))| (event_id, (position, event.map(|e| e.order_id))));
    let by_event_id = Exchange::new(|((event_id, _), _, _): &Update| event_id.hashed());
    copies
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(Dedup, u64, isize)>>, _, _, _>(
            by_event_id,
            "DedupByEventId",
            move |_capability, _info| {
                let mut seen: Seen = Seen::default();
                // Copies of batches not complete yet, by batch.
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Update>)> = BTreeMap::new();
                let mut emitted: Vec<(Dedup, isize)> = Vec::new();
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        for update in data.drain(..) {
                            let time = update.1;
                            pending
                                .entry(time)
                                .or_insert_with(|| (capability.delayed(&time, 0), Vec::new()))
                                .1
                                .push(update);
                        }
                    });
                    while let Some(batch) = pending.first_entry()
                        && !frontier.less_equal(batch.key())
                    {
                        let (time, (capability, updates)) = batch.remove_entry();
                        let mut session = output.session(&capability);
                        for ((event_id, copy), _, diff) in updates {
                            seen.take(event_id, copy, diff, first_copies, &mut emitted);
                            session.give_iterator(emitted.drain(..).map(|(out, diff)| (out, time, diff)));
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// Every `event_id` a worker has seen, with its copies.
///
/// Nearly every `event_id` is seen once, and nearly every lookup misses, so
/// the index is kept small: a 64-bit fingerprint of the `event_id` to its
/// place in `copies` (a list that only grows at its end). Two `event_id`s
/// with the same fingerprint (about one pair in 10^7 logs of a million) are
/// told apart in `collided`.
#[derive(Default)]
struct Seen<F = RandomState> {
    index: HashMap<u64, usize, BuildHasherDefault<Fingerprinted>>,
    collided: HashMap<EventId, usize>,
    copies: Vec<(EventId, Copies)>,
    fingerprints: F,
}

/// Hashes a fingerprint, which is already a hash, to itself.
#[derive(Default)]
struct Fingerprinted(u64);

impl Hasher for Fingerprinted {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed with it; anything else folds in.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, fingerprint: u64) {
        self.0 = fingerprint;
    }
}

impl<F: BuildHasher> Seen<F> {
    /// Where the copies of `event_id` are, and whether it is new (then it
    /// was added, with no copies).
    fn find_or_add(&mut self, event_id: &EventId) -> (usize, bool) {
        let next = self.copies.len();
        let fingerprint = self.fingerprints.hash_one(event_id);
        let place = match self.index.entry(fingerprint) {
            Entry::Vacant(vacant) => {
                vacant.insert(next);
                None
            }
            Entry::Occupied(occupied) if self.copies[*occupied.get()].0 == *event_id => Some(*occupied.get()),
            Entry::Occupied(_) => match self.collided.entry(event_id.clone()) {
                Entry::Vacant(vacant) => {
                    vacant.insert(next);
                    None
                }
                Entry::Occupied(occupied) => Some(*occupied.get()),
            },
        };
        match place {
            Some(place) => (place, false),
            None => {
                self.copies.push((event_id.clone(), Copies::Many(Vec::new())));
                (next, true)
            }
        }
    }

    /// Adds one copy, and notes in `emitted` what that changes of the
    /// stray copies and (with `first_copies`) of the first copy.
    fn take(
        &mut self,
        event_id: EventId,
        copy: EventCopy,
        diff: isize,
        first_copies: bool,
        emitted: &mut Vec<(Dedup, isize)>,
    ) {
        let (place, new) = self.find_or_add(&event_id);
        let copies = &mut self.copies[place].1;
        if new && diff == 1 {
            // The usual case: an `event_id` seen for the first time.
            if first_copies {
                emitted.push((Dedup::First(event_id, copy.0), 1));
            }
            *copies = Copies::One(copy);
            return;
        }
        let copies = copies.many();
        let first_before = copies.first().map(|((position, _), _)| *position);
        emitted.extend(strays(copies).map(|(order, position)| (Dedup::Stray(order, position), -1)));
        add(copies, copy, diff);
        emitted.extend(strays(copies).map(|(order, position)| (Dedup::Stray(order, position), 1)));
        let first_after = copies.first().map(|((position, _), _)| *position);
        if first_copies && first_before != first_after {
            emitted.extend(first_before.map(|position| (Dedup::First(event_id.clone(), position), -1)));
            emitted.extend(first_after.map(|position| (Dedup::First(event_id.clone(), position), 1)));
        }
        // An `event_id` whose copies all went keeps its (empty) place.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_core::record::LogPosition;

    fn at(offset: u64) -> EventPosition {
        (0, LogPosition { partition: 0, offset })
    }

    fn copy(offset: u64, order: Option<&str>) -> EventCopy {
        (at(offset), order.map(Arc::from))
    }

    /// Takes copies one by one and sums what was emitted.
    fn net(copies: &[(&str, EventCopy, isize)], first_copies: bool) -> BTreeMap<Dedup, isize> {
        let answer = net_with::<RandomState>(copies, first_copies);
        // The same when every `event_id` has the same fingerprint.
        assert_eq!(net_with::<BuildHasherDefault<Colliding>>(copies, first_copies), answer);
        answer
    }

    /// Hashes everything to 0.
    #[derive(Default)]
    struct Colliding;

    impl Hasher for Colliding {
        fn finish(&self) -> u64 {
            0
        }

        fn write(&mut self, _bytes: &[u8]) {}
    }

    fn net_with<F: BuildHasher + Default>(
        copies: &[(&str, EventCopy, isize)],
        first_copies: bool,
    ) -> BTreeMap<Dedup, isize> {
        let mut seen = Seen::<F>::default();
        let mut emitted = Vec::new();
        for (event_id, copy, diff) in copies {
            seen.take(EventId::new(event_id), copy.clone(), *diff, first_copies, &mut emitted);
        }
        let mut net = BTreeMap::new();
        for (out, diff) in emitted {
            *net.entry(out).or_insert(0) += diff;
        }
        net.retain(|_, diff| *diff != 0);
        net
    }

    fn stray(order: &str, offset: u64) -> Dedup {
        Dedup::Stray(order.into(), at(offset))
    }

    #[test]
    fn a_redelivery_within_its_order_is_no_stray() {
        let copies = [("e1", copy(3, Some("o1")), 1), ("e1", copy(9, Some("o1")), 1), ("e2", copy(4, None), 1)];
        assert!(net(&copies, false).is_empty());
        let firsts = net(&copies, true);
        assert_eq!(
            firsts.keys().cloned().collect::<Vec<_>>(),
            vec![Dedup::First(EventId::new("e1"), at(3)), Dedup::First(EventId::new("e2"), at(4))]
        );
    }

    #[test]
    fn a_copy_in_another_order_or_after_another_type_is_a_stray() {
        let copies = [
            ("e1", copy(3, Some("o1")), 1),
            ("e1", copy(5, Some("o2")), 1),
            ("e2", copy(4, None), 1),
            ("e2", copy(6, Some("o3")), 1),
        ];
        assert_eq!(net(&copies, false), BTreeMap::from([(stray("o2", 5), 1), (stray("o3", 6), 1)]));
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_copies_arrive_in() {
        // The first copy in the log arrives last: the earlier answer is
        // taken back.
        let mut copies = vec![
            ("e1", copy(5, Some("o2")), 1),
            ("e1", copy(7, Some("o1")), 1),
            ("e1", copy(3, Some("o1")), 1),
            ("e1", copy(7, Some("o1")), 1),
        ];
        let expected = BTreeMap::from([(stray("o2", 5), 1), (Dedup::First(EventId::new("e1"), at(3)), 1)]);
        for _ in 0..copies.len() {
            assert_eq!(net(&copies, true), expected);
            copies.rotate_left(1);
        }
    }

    #[test]
    fn a_retracted_copy_takes_its_effects_back() {
        let copies = [("e1", copy(3, Some("o1")), 1), ("e1", copy(5, Some("o2")), 1), ("e1", copy(3, Some("o1")), -1)];
        assert_eq!(net(&copies, true), BTreeMap::from([(Dedup::First(EventId::new("e1"), at(5)), 1)]));
    }
}

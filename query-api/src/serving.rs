//! The in-process serving store: every view's rows, fed by the dataflow's
//! output, for the read routes.
//!
//! Each view is a sink of the pipeline ([`ServingSink`]). A batch is applied
//! under the view's write lock and readers hold its read lock while they
//! compute an answer, so every answer is consistent as of one completed
//! batch (one dataflow frontier): no half-applied batch is ever visible.
//! Rows are kept sorted by key, so a read for one store (the first key
//! field of the seed views) is a range scan.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use projector_core::config::PipelinePlan;
use projector_core::order::ORDER_FIELDS;
use projector_core::sink::{
    Selection, SinkError, SourcePositions, ViewBatch, ViewChange, ViewReader, ViewSink, positions_to_value,
};
use projector_core::value::{FieldType, Row, Timestamp, Value};

/// What one view holds as of one completed batch.
#[derive(Debug, Default)]
pub struct ViewState {
    /// The rows, by key.
    pub rows: BTreeMap<Row, Row>,
    /// Batches taken so far (0: none yet).
    pub batches: u64,
    /// The last batch's upper: the rows reflect all input before it.
    pub upper: u64,
    /// The source positions the rows reflect.
    pub positions: SourcePositions,
    /// The latest `occurred_at` of the events the rows reflect.
    pub newest_event_at: Option<Timestamp>,
}

/// One view of the store.
#[derive(Debug)]
pub struct ServingView {
    /// The view's name.
    pub name: String,
    /// Output fields (keys first), with their types.
    pub fields: Vec<(String, FieldType)>,
    /// How many of `fields` are key fields.
    pub key_len: usize,
    state: RwLock<ViewState>,
    /// Each applied batch, for the change streams.
    changes: tokio::sync::broadcast::Sender<Arc<AppliedBatch>>,
    /// Where the view is read from when not from this store (`api.read_from`).
    reader: std::sync::OnceLock<Arc<dyn ViewReader>>,
}

/// One batch as applied to a view, for the change streams.
#[derive(Debug)]
pub struct AppliedBatch {
    /// The changes, sorted by key (an update: the old row removed, the new
    /// one added).
    pub changes: Vec<ViewChange>,
    /// The positions the view reflects after it.
    pub positions: SourcePositions,
    /// The latest `occurred_at` the view reflects after it.
    pub newest_event_at: Option<Timestamp>,
}

/// Batches a change stream may fall behind before it is cut off.
const STREAM_BACKLOG: usize = 256;

impl ServingView {
    fn new(name: String, fields: Vec<(String, FieldType)>, key_len: usize) -> ServingView {
        let (changes, _) = tokio::sync::broadcast::channel(STREAM_BACKLOG);
        ServingView {
            name,
            fields,
            key_len,
            state: RwLock::new(ViewState::default()),
            changes,
            reader: std::sync::OnceLock::new(),
        }
    }

    /// The view as of its last completed batch, and every batch applied
    /// after it: no batch is missed or seen twice.
    pub fn subscribe(&self) -> (RwLockReadGuard<'_, ViewState>, tokio::sync::broadcast::Receiver<Arc<AppliedBatch>>) {
        // A batch is applied and sent under the write lock, so none can
        // fall between the state read here and the subscription.
        let state = self.read();
        let receiver = self.changes.subscribe();
        (state, receiver)
    }
}

impl ServingView {
    /// The store the view is read from instead of this process, if any.
    pub fn reader(&self) -> Option<&Arc<dyn ViewReader>> {
        self.reader.get()
    }

    /// The view as of its last completed batch; hold it only while
    /// computing one answer (a batch waits for it).
    pub fn read(&self) -> RwLockReadGuard<'_, ViewState> {
        // A panic while applying a batch poisons the lock; the state is
        // still a whole batch's (apply does not panic mid-way), so read on.
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The index of field `name`, if the view has it.
    pub fn field(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|(field, _)| field == name)
    }

    /// The key fields' names.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.fields[..self.key_len].iter().map(|(name, _)| name.as_str())
    }
}

/// The rows of `state` that `selection` selects, in key order.
pub fn scan<'a>(state: &'a ViewState, selection: &'a Selection) -> impl Iterator<Item = (&'a Row, &'a Row)> + 'a {
    // The equal key fields from the first on bound a range of the rows.
    let prefix: Vec<Value> =
        (0..).map_while(|index| selection.equal.iter().find(|(i, _)| *i == index).map(|(_, v)| v.clone())).collect();
    let prefix_len = prefix.len();
    let start = match &selection.after {
        Some(after) if after[..] >= prefix[..] => Bound::Excluded(after.clone()),
        _ => Bound::Included(Row::from(prefix.clone())),
    };
    state
        .rows
        .range((start, Bound::Unbounded))
        .take_while(move |(key, _)| key.len() >= prefix_len && key[..prefix_len] == prefix[..])
        .filter(|(key, _)| selection.matches(key))
        .take(selection.limit.unwrap_or(usize::MAX))
}

/// Tells, once the pipeline's readers have caught up with where their logs
/// ended at start, the batch upper that output must pass to reflect that.
pub type CaughtUp = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// Every declared view, by name.
pub struct ServingStore {
    views: BTreeMap<String, Arc<ServingView>>,
    /// The current state of every order, by `order_id`.
    orders: Arc<ServingView>,
    /// Source names by index, to render positions.
    pub source_names: Vec<String>,
    caught_up: std::sync::OnceLock<CaughtUp>,
    pipeline: std::sync::OnceLock<Arc<dyn crate::metrics::PipelineCounters>>,
}

impl std::fmt::Debug for ServingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingStore").field("views", &self.views.keys()).finish_non_exhaustive()
    }
}

impl ServingStore {
    /// An empty store for the views of `plan`.
    pub fn new(plan: &PipelinePlan) -> ServingStore {
        let views = plan
            .views
            .iter()
            .map(|view| {
                let serving = ServingView::new(view.name.clone(), view.output_fields(), view.keys.len());
                (view.name.clone(), Arc::new(serving))
            })
            .collect();
        let mut fields = vec![("order_id".to_string(), FieldType::Text)];
        let types = [
            FieldType::UInt,
            FieldType::UInt,
            FieldType::Text,
            FieldType::Text,
            FieldType::Timestamp,
            FieldType::Int,
            FieldType::Text,
        ];
        fields.extend(ORDER_FIELDS.iter().zip(types).map(|(name, ty)| (name.to_string(), ty)));
        let orders = ServingView::new("orders".into(), fields, 1);
        ServingStore {
            views,
            orders: Arc::new(orders),
            source_names: plan.config.sources.iter().map(|s| s.name.clone()).collect(),
            caught_up: std::sync::OnceLock::new(),
            pipeline: std::sync::OnceLock::new(),
        }
    }

    /// The counters of the pipeline that feeds the store, for `/metrics`;
    /// set once.
    pub fn set_pipeline(&self, pipeline: Arc<dyn crate::metrics::PipelineCounters>) {
        let _ = self.pipeline.set(pipeline);
    }

    /// The pipeline's counters, if set.
    pub fn pipeline(&self) -> Option<&Arc<dyn crate::metrics::PipelineCounters>> {
        self.pipeline.get()
    }

    /// Every declared view.
    pub fn views(&self) -> impl Iterator<Item = &Arc<ServingView>> {
        self.views.values()
    }

    /// Where readiness comes from (the pipeline's progress); set once.
    pub fn set_caught_up(&self, caught_up: CaughtUp) {
        let _ = self.caught_up.set(caught_up);
    }

    /// Whether every view reflects the logs up to where they ended when the
    /// pipeline started; `Err` says how far each view is.
    pub fn readiness(&self) -> Result<(), Vec<(String, u128)>> {
        let target = self.caught_up.get().and_then(|caught_up| caught_up());
        let behind: Vec<(String, u128)> = self
            .views
            .values()
            .filter(|view| view.reader().is_none())
            .filter_map(|view| {
                let state = view.read();
                let ready = target.is_some_and(|upper| state.upper >= upper);
                (!ready).then(|| (view.name.clone(), state.positions.total()))
            })
            .collect();
        if behind.is_empty() { Ok(()) } else { Err(behind) }
    }

    /// The view named `name`.
    pub fn view(&self, name: &str) -> Option<&Arc<ServingView>> {
        self.views.get(name)
    }

    /// The names of all views.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.views.keys().map(String::as_str)
    }

    /// The current state of every order (fields: `order_id`, then
    /// [`ORDER_FIELDS`]).
    pub fn orders(&self) -> &Arc<ServingView> {
        &self.orders
    }

    /// The sink that feeds the orders.
    pub fn orders_sink(&self) -> ServingSink {
        ServingSink(Arc::clone(&self.orders))
    }

    /// The sink that feeds view `name` (`None` for a view read from
    /// another store).
    pub fn sink(&self, name: &str) -> Option<ServingSink> {
        self.views.get(name).filter(|view| view.reader().is_none()).map(|view| ServingSink(Arc::clone(view)))
    }

    /// Reads view `name` from `reader` instead of this store; set before the
    /// store is fed (the view then takes no sink here).
    pub fn read_from(&self, name: &str, reader: Arc<dyn ViewReader>) {
        if let Some(view) = self.views.get(name) {
            let _ = view.reader.set(reader);
        }
    }

    /// How fresh `state` is, now.
    pub fn freshness(&self, state: &ViewState) -> Freshness {
        self.freshness_of(&state.positions, state.newest_event_at)
    }

    /// How fresh a view at `positions` with newest event `newest` is, now.
    pub fn freshness_of(&self, positions: &SourcePositions, newest: Option<Timestamp>) -> Freshness {
        let now = Timestamp::now().0;
        Freshness {
            positions: positions_to_value(positions, &self.source_names),
            events: positions.total(),
            newest_event_at: newest,
            newest_event_age_ms: newest.map(|at| ((now - at.0).max(0) / 1_000_000) as u64),
        }
    }
}

/// How fresh an answer is.
#[derive(Clone, Debug, PartialEq)]
pub struct Freshness {
    /// The log position the answer reflects: next offset per source and
    /// partition (`{"events": {"0": 1200, "1": 1187}}`).
    pub positions: serde_json::Value,
    /// The sum of those offsets (records read), a number that only grows.
    pub events: u128,
    /// The latest `occurred_at` of the events reflected.
    pub newest_event_at: Option<Timestamp>,
    /// Its age now, in milliseconds.
    pub newest_event_age_ms: Option<u64>,
}

/// Feeds one view of the store from the pipeline.
pub struct ServingSink(Arc<ServingView>);

impl ViewSink for ServingSink {
    fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        // A run that starts over in the same process (a sink's store lost
        // its data) goes on from what readers see now, never back.
        let state = self.0.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok((state.batches > 0).then(|| state.positions.clone()))
    }

    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        let mut state = self.0.state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for change in batch.changes.iter().filter(|c| c.diff < 0) {
            if state.rows.get(&change.key) == Some(&change.values) {
                state.rows.remove(&change.key);
            }
        }
        for change in batch.changes.iter().filter(|c| c.diff > 0) {
            state.rows.insert(change.key.clone(), change.values.clone());
        }
        state.batches += 1;
        state.upper = batch.upper;
        state.positions = batch.positions.clone();
        if batch.newest_event_at.is_some() {
            state.newest_event_at = batch.newest_event_at;
        }
        if self.0.changes.receiver_count() > 0 && !batch.changes.is_empty() {
            let applied = AppliedBatch {
                changes: batch.changes.to_vec(),
                positions: state.positions.clone(),
                newest_event_at: state.newest_event_at,
            };
            // No receiver left is fine: nobody streams this view now.
            let _ = self.0.changes.send(Arc::new(applied));
        }
        drop(state);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

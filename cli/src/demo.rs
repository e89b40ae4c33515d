//! `projector demo`: the shipped views over live generated traffic, with a
//! summary in the terminal every second. Needs no services and no files.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use projector_core::config;
use projector_core::sink::{SinkError, ViewBatch, ViewSink};
use projector_core::value::{Row, Value};
use projector_dataflows::runner::{Outputs, RunOptions, RunSummary, run};
use projector_datagen::{DatagenSource, GeneratorConfig};

use crate::commands::CommandError;

/// The shipped `pipelines.yaml`, built into the binary.
pub const SHIPPED_PIPELINES: &str = include_str!("../../pipelines.yaml");

/// Settings of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Generated events per second.
    pub rate: f64,
    /// Worker threads.
    pub workers: usize,
    /// Stop after this long (run until Ctrl-C when `None`).
    pub duration: Option<Duration>,
    /// Generator seed.
    pub seed: u64,
    /// Set to stop the demo (Ctrl-C).
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

/// The `order_summary` rows and the positions they reflect.
#[derive(Default)]
struct Board {
    rows: BTreeMap<Row, Row>,
    reflected: u64,
    batches: u64,
}

struct BoardSink(Arc<Mutex<Board>>);

impl ViewSink for BoardSink {
    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        let mut board = self.0.lock().map_err(|_| SinkError::Fatal("board lock poisoned".into()))?;
        for change in batch.changes.iter().filter(|c| c.diff < 0) {
            board.rows.remove(&change.key);
        }
        for change in batch.changes.iter().filter(|c| c.diff > 0) {
            board.rows.insert(change.key.clone(), change.values.clone());
        }
        board.reflected = batch.positions.0.values().map(|next| next.saturating_sub(1)).sum();
        board.batches += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Runs the demo until Ctrl-C or the duration ends.
pub fn demo(options: DemoOptions) -> Result<RunSummary, CommandError> {
    let plan = config::check_text(SHIPPED_PIPELINES, "pipelines.yaml (built in)", Path::new("."))?;
    let summary_index = plan
        .views
        .iter()
        .position(|v| v.name == "order_summary")
        .ok_or_else(|| CommandError::Io("the built-in pipelines.yaml has no order_summary view".into()))?;
    let board = Arc::new(Mutex::new(Board::default()));
    let mut view_sinks: Vec<Vec<(String, Box<dyn ViewSink>)>> = plan.views.iter().map(|_| Vec::new()).collect();
    view_sinks[summary_index].push(("terminal".into(), Box::new(BoardSink(Arc::clone(&board)))));
    let outputs = Outputs { view_sinks, dead_letter_sinks: Vec::new() };
    let generator = GeneratorConfig {
        seed: options.seed,
        events: u64::MAX,
        live: true,
        customers_per_store: 200,
        ..GeneratorConfig::default()
    };
    let source = DatagenSource::new(0, generator, Some(options.rate), Duration::from_millis(250));
    let run_options =
        RunOptions { workers: options.workers, until_idle: false, stop: Arc::clone(&options.stop), ..RunOptions::default() };
    let stop = Arc::clone(&run_options.stop);
    let progress = Arc::clone(&run_options.progress);
    let runner = std::thread::spawn(move || run(Arc::new(plan), vec![("generator".into(), Arc::new(source))], outputs, run_options));

    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let terminal = std::io::stdout().is_terminal();
    while options.duration.is_none_or(|d| started.elapsed() < d)
        && !runner.is_finished()
        && !options.stop.load(Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_secs(1));
        let records = progress.records.load(Ordering::Relaxed);
        let rate = (records - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), records);
        let screen = board.lock().map(|b| render(&b, records, rate, started.elapsed())).unwrap_or_default();
        let mut out = std::io::stdout().lock();
        if terminal {
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = writeln!(out, "{screen}");
        let _ = out.flush();
    }
    stop.store(true, Ordering::Relaxed);
    match runner.join() {
        Ok(result) => Ok(result?),
        Err(_) => Err(CommandError::Io("the pipeline thread panicked".into())),
    }
}

fn render(board: &Board, records: u64, rate: f64, elapsed: Duration) -> String {
    let today = board.rows.keys().filter_map(|k| k.get(1).cloned()).max();
    let mut stores: Vec<(&Row, &Row)> = board.rows.iter().filter(|(k, _)| k.get(1) == today.as_ref()).collect();
    let revenue = |values: &Row| match values.get(1) {
        Some(Value::Int(cents)) => *cents,
        _ => 0,
    };
    stores.sort_by_key(|(_, values)| std::cmp::Reverse(revenue(values)));
    let mut text = format!(
        "Projector demo: generated order traffic -> views, {:.0} s\n\
         events read {records}, {rate:.0} events/s, lag {} events, {} batches committed\n\n\
         top stores by revenue on {}\n\
         {:>6} {:>8} {:>14} {:>12} {:>10}\n",
        elapsed.as_secs_f64(),
        records.saturating_sub(board.reflected),
        board.batches,
        today.map_or("-".to_string(), |d| d.to_string()),
        "store",
        "orders",
        "revenue",
        "avg order",
        "cancelled",
    );
    for (key, values) in stores.iter().take(5) {
        let field = |row: &Row, i: usize| row.get(i).map_or("-".to_string(), ToString::to_string);
        text.push_str(&format!(
            "{:>6} {:>8} {:>14} {:>12} {:>10}\n",
            field(key, 0),
            field(values, 0),
            cents(revenue(values)),
            cents(match values.get(2) {
                Some(Value::Int(c)) => *c,
                _ => 0,
            }),
            field(values, 3),
        ));
    }
    text.push_str("\nCtrl-C to stop.");
    text
}

fn cents(value: i64) -> String {
    format!("{}.{:02}", value / 100, value % 100)
}

//! The `projector` binary: parses the command line and calls the commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};

use projector::commands::{self, CommandError};
use projector::demo::{self, DemoOptions};
use projector_dataflows::runner::{RunOptions, RunSummary};
use projector_datagen::GeneratorConfig;

/// Projector keeps commerce read models (daily order summaries, product
/// sales, customer lifetime value) continuously up to date from a log of
/// order events, and materializes them where dashboards read them.
///
/// Start with `projector demo`. Declare your own views in pipelines.yaml,
/// check it with `projector check -c pipelines.yaml`, and run it with
/// `projector run -c pipelines.yaml`.
#[derive(Parser)]
#[command(name = "projector", version, about, long_about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole loop on built-in defaults, with no services: an in-process
    /// Kafka-protocol broker, the command API, generated order traffic
    /// through it, the shipped views updating live, and a summary every
    /// second.
    Demo {
        /// Orders placed per second through the API.
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        /// Where the command API listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Worker threads.
        #[arg(short = 'w', long, default_value_t = default_workers())]
        workers: usize,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Seed of the generated traffic.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run the pipelines of a config: its sources into its views into its
    /// sinks. With --input and --output-dir, run the config's views over one
    /// events file instead and write each view's final rows to
    /// DIR/<view>.jsonl and the bad records to DIR/dead_letters.jsonl.
    Run {
        /// The config file.
        #[arg(short, long, value_name = "FILE", default_value = "pipelines.yaml")]
        config: PathBuf,
        /// A JSON Lines file of events to run the views over instead of the
        /// config's sources (needs --output-dir).
        #[arg(long, value_name = "EVENTS.jsonl", requires = "output_dir")]
        input: Option<PathBuf>,
        /// Where --input writes the views and dead letters.
        #[arg(long, value_name = "DIR", requires = "input")]
        output_dir: Option<PathBuf>,
        /// Worker threads (the results never depend on it).
        #[arg(short = 'w', long, default_value_t = default_workers())]
        workers: usize,
        /// Stop once every bounded source (file) is fully processed and
        /// every sink has flushed. Without it, run until stopped.
        #[arg(long)]
        until_idle: bool,
        /// Lines per batch for --input: the views complete once per batch.
        /// Only the final rows are written, so fewer, larger batches are
        /// faster; smaller ones exercise the incremental path.
        #[arg(long, default_value_t = 1_000_000, value_name = "LINES")]
        batch_records: u64,
    },
    /// Check a config without running it: every error at once, each with
    /// file:line:column, the component and field, and what is allowed.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE", default_value = "pipelines.yaml")]
        config: PathBuf,
    },
    /// Where each source partition and sink stands: per partition the
    /// committed offset, the end of the log and the lag; per sink its
    /// generation, checkpoint and the age of its newest data.
    Status {
        /// The config file.
        #[arg(short, long, value_name = "FILE", default_value = "pipelines.yaml")]
        config: PathBuf,
    },
    /// Check a view's sinks against the log: recompute the view from the
    /// log up to the position each sink claims, with a plain fold (not the
    /// dataflow), and compare. Exits 1 listing every difference (key,
    /// field, expected, found), 0 with the counts when all agree.
    Validate {
        /// The config file.
        #[arg(short, long, value_name = "FILE", default_value = "pipelines.yaml")]
        config: PathBuf,
        /// The view whose sinks to check.
        #[arg(long)]
        view: String,
        /// Check this many keys drawn at random instead of all.
        #[arg(long, value_name = "N")]
        sample_size: Option<usize>,
        /// Seed of the sample.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Rebuild a view (or several, in one pass over the log) into its sinks,
    /// or only the rows of a date window. The view is built into a shadow of each Redis and
    /// ClickHouse sink while the running pipeline goes on, then swapped in
    /// atomically at the position the live sink stands at (its writes wait
    /// for the moment of the swap), so readers never see a half-built view.
    /// An interrupted replay resumes from its shadow's checkpoint. File and
    /// Parquet sinks are rewritten whole (not for a window).
    Replay {
        /// The config file.
        #[arg(short, long, value_name = "FILE", default_value = "pipelines.yaml")]
        config: PathBuf,
        /// The view to rebuild. Name it more than once (or several, comma
        /// separated) to rebuild several views in one pass over the log.
        #[arg(long = "view", value_name = "NAME", required = true, value_delimiter = ',')]
        views: Vec<String>,
        /// Only rows whose date key is on or after this day (YYYY-MM-DD).
        #[arg(long, value_name = "DATE", value_parser = parse_day)]
        from: Option<i32>,
        /// Only rows whose date key is on or before this day (YYYY-MM-DD).
        #[arg(long, value_name = "DATE", value_parser = parse_day)]
        to: Option<i32>,
        /// Worker threads.
        #[arg(short = 'w', long, default_value_t = default_workers())]
        workers: usize,
        /// Seconds to wait for a running pipeline's ClickHouse sink to hold
        /// still before swapping as if none runs.
        #[arg(long, default_value_t = 15, value_name = "SECONDS")]
        ack_wait: u64,
        /// Snapshot the replay's own dataflow state at most this often
        /// (into .projector-replay/ next to the config), so an interrupted
        /// replay resumes its reading of the log too, not only its writes.
        /// Costs throughput; worth it for logs that take long to replay.
        /// Also how often a Redis shadow is written (without it, every 10 s).
        #[arg(long, value_name = "MS")]
        checkpoint_ms: Option<u64>,
        /// Rebuild from what the log still holds even though retention
        /// deleted the first records of a partition (otherwise refused: the
        /// rebuilt view would lack their events). For a topic that lost them
        /// before the pipeline's first run.
        #[arg(long)]
        accept_deleted_records: bool,
    },
    /// Delete everything one sink holds: a Redis sink's rows, rankings and
    /// checkpoint; a ClickHouse sink's tables; a file or Parquet sink's
    /// file. For a view or sink about to be taken out of the config (which
    /// otherwise leaves the data where it is): run it with the config that
    /// still declares the sink. A pipeline still writing the sink is fenced.
    Drop {
        /// The config file that declares the sink.
        #[arg(short, long, value_name = "FILE", default_value = "pipelines.yaml")]
        config: PathBuf,
        /// The sink (its name under `sinks:`).
        #[arg(long)]
        sink: String,
    },
    /// Write a view to a Parquet file: computed from the config's sources as
    /// they stand now (each read from its start to where it ends when the
    /// export starts), with an Arrow schema from the view's declaration and
    /// the log positions it reflects in the file's metadata. The config's
    /// sinks are not touched.
    Export {
        /// The config file.
        #[arg(short, long, value_name = "FILE", default_value = "pipelines.yaml")]
        config: PathBuf,
        /// The view to export.
        #[arg(long)]
        view: String,
        /// The Parquet file to write (replaced atomically).
        #[arg(long, value_name = "FILE.parquet")]
        out: PathBuf,
        /// Worker threads (the results never depend on it).
        #[arg(short = 'w', long, default_value_t = default_workers())]
        workers: usize,
    },
    /// Write a generated, contract-conformant event log (JSON Lines), with
    /// updates, cancels, out-of-order events, redeliveries and optionally
    /// bad records. The same seed gives the same log.
    Generate(GenerateArgs),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// About how many events.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of stores.
    #[arg(long, default_value_t = 20)]
    stores: u64,
    /// Customers per store.
    #[arg(long, default_value_t = 2_000)]
    customers_per_store: u64,
    /// Number of products.
    #[arg(long, default_value_t = 500)]
    products: u64,
    /// Days the orders spread over, from 2024-03-01.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Share of records that are bad (all kinds in turn), 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    bad_ratio: f64,
    /// Share of records that redeliver an earlier one, 0 to 1.
    #[arg(long, default_value_t = 0.02)]
    redelivery_ratio: f64,
    /// Output file (default: standard output).
    #[arg(short, long, value_name = "FILE", conflicts_with = "topic")]
    out: Option<PathBuf>,
    /// Append the events to this Kafka topic instead (keyed by
    /// aggregate_id), at --brokers.
    #[arg(long, requires = "brokers")]
    topic: Option<String>,
    /// Kafka bootstrap servers for --topic.
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
}

impl GenerateArgs {
    fn generator_config(&self) -> GeneratorConfig {
        GeneratorConfig {
            seed: self.seed,
            events: self.events,
            stores: self.stores,
            customers_per_store: self.customers_per_store,
            products: self.products,
            days: self.days,
            bad_ratio: self.bad_ratio,
            redelivery_ratio: self.redelivery_ratio,
            ..GeneratorConfig::default()
        }
    }
}

/// A `YYYY-MM-DD` day as days since 1970-01-01.
fn parse_day(text: &str) -> Result<i32, String> {
    projector_core::value::parse_date(text).ok_or_else(|| format!("{text:?} is not a date (YYYY-MM-DD)"))
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ CommandError::Config(_)) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Sets `stop` on the first SIGINT or SIGTERM, so the run finishes its
/// batch, flushes and exits 0; a second signal exits at once.
fn stop_on_signal(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::warn!(%error, "cannot watch for signals; stop with SIGKILL");
                return;
            }
        };
        runtime.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut terminate), Ok(mut interrupt)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                tracing::warn!("cannot watch for signals; stop with SIGKILL");
                return;
            };
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("stopping: finishing the current batch (signal again to exit at once)");
            stop.store(true, Ordering::Relaxed);
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            std::process::exit(130);
        });
    });
}

fn execute(command: Command) -> Result<(), CommandError> {
    let stop = Arc::new(AtomicBool::new(false));
    match command {
        Command::Demo { rate, listen, workers, seconds, seed } => {
            stop_on_signal(Arc::clone(&stop));
            let duration = seconds.map(Duration::from_secs);
            let summary = demo::demo(DemoOptions { rate, workers, duration, seed, listen, stop })?;
            report(&summary);
        }
        Command::Run { config, input, output_dir, workers, until_idle, batch_records } => {
            let plan = commands::load(&config)?;
            stop_on_signal(Arc::clone(&stop));
            let options = RunOptions { workers, until_idle, stop, ..RunOptions::default() };
            let summary = match (input, output_dir) {
                (Some(input), Some(dir)) => commands::run_file(plan, &input, &dir, batch_records, options)?,
                _ => commands::run_config(plan, options)?,
            };
            report(&summary);
        }
        Command::Check { config } => {
            let plan = commands::load(&config)?;
            println!(
                "{}: ok ({} sources, {} views, {} sinks)",
                config.display(),
                plan.config.sources.len(),
                plan.views.len(),
                plan.config.sinks.len()
            );
        }
        Command::Status { config } => {
            let plan = commands::load(&config)?;
            match projector::status::status(&plan) {
                Ok(text) => print!("{text}"),
                Err((text, error)) => {
                    print!("{text}");
                    return Err(error);
                }
            }
        }
        Command::Validate { config, view, sample_size, seed } => {
            let plan = commands::load(&config)?;
            let options = projector::validate::ValidateOptions { view, sample_size, seed };
            let validation = projector::validate::validate(&plan, &options)?;
            print!("{}", validation.report);
            if validation.differences > 0 {
                return Err(CommandError::Io(format!(
                    "view {:?}: {} differences between its sinks and the log",
                    options.view, validation.differences
                )));
            }
        }
        Command::Replay { config, views, from, to, workers, ack_wait, checkpoint_ms, accept_deleted_records } => {
            let plan = commands::load(&config)?;
            stop_on_signal(Arc::clone(&stop));
            let options = projector::replay::ReplayOptions {
                views: views.clone(),
                from,
                to,
                ack_wait: Duration::from_secs(ack_wait),
                progress_bar: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                checkpoint_every: checkpoint_ms.map(Duration::from_millis),
                accept_deleted_records,
            };
            let run_options = RunOptions { workers, stop, ..RunOptions::default() };
            let summary = projector::replay::replay(&plan, &options, run_options)?;
            print!("{}", summary.report(&views));
        }
        Command::Drop { config, sink } => {
            let plan = commands::load(&config)?;
            println!("{}", commands::drop_sink(&plan, &sink)?);
        }
        Command::Export { config, view, out, workers } => {
            let plan = commands::load(&config)?;
            stop_on_signal(Arc::clone(&stop));
            let options = RunOptions { workers, stop, ..RunOptions::default() };
            let summary = commands::export(plan, &view, &out, options)?;
            let rows = summary.view_rows.iter().find(|(name, _)| *name == view).map_or(0, |(_, rows)| *rows);
            eprintln!(
                "exported {rows} rows of view {view:?} to {} ({} records read in {:.2} s)",
                out.display(),
                summary.records,
                summary.elapsed.as_secs_f64()
            );
        }
        Command::Generate(args) => {
            let config = args.generator_config();
            let written = match (&args.topic, &args.brokers) {
                (Some(topic), Some(brokers)) => {
                    let records = projector_datagen::Generator::new(config).map(|r| (r.key, r.line));
                    projector_source_kafka::produce::append_all(brokers, topic, records).map_err(CommandError::Io)?
                }
                _ => match args.out {
                    Some(path) => {
                        let file = std::fs::File::create(&path)
                            .map_err(|e| CommandError::Io(format!("cannot create {}: {e}", path.display())))?;
                        commands::generate(config, &mut std::io::BufWriter::new(file))?
                    }
                    None => commands::generate(config, &mut std::io::BufWriter::new(std::io::stdout().lock()))?,
                },
            };
            eprintln!("wrote {written} events");
        }
    }
    Ok(())
}

fn report(summary: &RunSummary) {
    let seconds = summary.elapsed.as_secs_f64();
    eprintln!(
        "processed {} records in {seconds:.2} s ({:.0} records/s); {} dead letters",
        summary.records,
        summary.records as f64 / seconds.max(1e-9),
        summary.dead_letter_count()
    );
    if let Some((snapshot, at)) = &summary.restored_from {
        eprintln!("  started from the state snapshot {snapshot} ({} records of the log in it)", at.total());
    }
    if let Some(after) = summary.caught_up_after {
        eprintln!("  the views reflected all the logs held at the start after {:.2} s", after.as_secs_f64());
    }
    for (kind, count) in &summary.dead_letters {
        eprintln!("  dead letters {kind}: {count}");
    }
    for (view, rows) in &summary.view_rows {
        eprintln!("  view {view}: {rows} rows");
    }
}

#[global_allocator]
static ALLOCATOR: projector::Allocator = mimalloc::MiMalloc;

//! Shared helpers of the benchmarks.

use projector_datagen::{Generator, GeneratorConfig};

/// `n` generated event lines (seeded, so every run measures the same log).
pub fn generated_lines(n: u64, seed: u64) -> Vec<String> {
    Generator::new(GeneratorConfig { events: n, seed, ..GeneratorConfig::default() }).map(|r| r.line).collect()
}

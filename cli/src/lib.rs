//! The wiring behind the `projector` binary: which source and sink types
//! exist and how they are built from a checked config, and the commands.
//!
//! [`components`] is the one explicit list of component types: a new source
//! or sink type is its folder under `connectors/` or `sinks/`, its config
//! variant in `projector_core::config`, and one arm here.

/// The memory allocator of the `projector` binary (and of the benchmarks,
/// so they measure what users run): mimalloc, which the dataflow's many
/// small allocations of rows and batches run about twice as fast on as on
/// the system allocator.
pub type Allocator = mimalloc::MiMalloc;

/// How long memory this process frees stays with it, when it is not used
/// again meanwhile, before the allocator gives it back to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepFreed {
    /// Until the process ends: for a command that reads a whole log and
    /// ends (`replay`, `run --input`, `export`).
    UntilExit,
    /// For a while: for `projector run`, which catches up and then runs
    /// for long, and should not stay at its peak size.
    For(std::time::Duration),
}

/// How long `projector run` keeps memory it freed: long enough that a run
/// catching up reuses its batches' memory without giving it back first.
pub const RUN_KEEPS_FREED: KeepFreed = KeepFreed::For(std::time::Duration::from_secs(10));

/// Tells the allocator how long to keep the memory freed from now on.
/// mimalloc gives pages that stayed free for a second back to the kernel
/// (`MADV_DONTNEED`), and each of them, used again, faults and is zeroed
/// anew. The dataflow frees and reuses its batches all the time: in `perf`
/// samples of a replay, 8% of the process went to page faults. Kept for
/// good, a replay of `order_summary` ran 6 to 10% faster (two pairs of runs
/// of `BENCH_PARTS=replay` in `benches/benches/replay_restart.rs`); kept
/// for 10 s, the runs of `BENCH_PARTS=restart` faulted a third less (the
/// figures are in docs/performance.md).
#[allow(unsafe_code)] // The one call into C outside a crate made for it.
pub fn keep_freed_memory(how_long: KeepFreed) {
    /// `mi_option_purge_delay` of `mimalloc.h` (mimalloc v3), which
    /// libmimalloc-sys does not name: milliseconds, or -1 for "never".
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    let delay = match how_long {
        KeepFreed::UntilExit => -1,
        KeepFreed::For(duration) => duration.as_millis().min(i32::MAX as u128) as _,
    };
    // SAFETY: sets one of mimalloc's options, which may be set at any
    // time; it touches no memory of ours.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, delay) };
}

pub mod api;
pub mod commands;
pub mod components;
pub mod demo;
pub mod http_client;
pub mod replay;
pub mod status;
pub mod validate;

#[cfg(test)]
mod tests {
    use super::{KeepFreed, keep_freed_memory};

    /// Option 15 is mimalloc's purge delay: its default (1,000 ms in v3)
    /// is no other option's, and `keep_freed_memory` sets it.
    #[test]
    #[allow(unsafe_code)]
    fn keep_freed_memory_sets_the_purge_delay() {
        // SAFETY: reads one of mimalloc's options.
        let get = || unsafe { libmimalloc_sys::mi_option_get(15) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1000);
        }
        keep_freed_memory(KeepFreed::For(std::time::Duration::from_secs(10)));
        assert_eq!(get(), 10_000);
        keep_freed_memory(KeepFreed::UntilExit);
        assert_eq!(get(), -1);
    }
}

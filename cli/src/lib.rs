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

/// Tells the allocator to keep the memory freed from now on for this
/// process rather than give it back to the kernel: for a command that
/// reads a whole log and ends (`replay`, `run --input`, `export`). mimalloc hands
/// pages that stayed free for a second back to the kernel (`MADV_DONTNEED`
/// by default), and each of them, used again, faults and is zeroed anew.
/// A replay frees and reuses its batches all the time: in `perf` samples
/// of one, 8% of the process went to those page faults, and without the
/// purging a replay of `order_summary` ran 6 to 10% faster (two pairs of
/// runs of `BENCH_PARTS=replay` in `benches/benches/replay_restart.rs`).
/// The cost is that the process stays at its peak size until it ends,
/// which a long-running `projector run` should not, so it does not call
/// this.
#[allow(unsafe_code)] // The one call into C outside a crate made for it.
pub fn keep_freed_memory() {
    /// `mi_option_purge_delay` of `mimalloc.h` (mimalloc v3), which
    /// libmimalloc-sys does not name; -1 is "never".
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one of mimalloc's options, which may be set at any
    // time; it touches no memory of ours.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
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
    /// Option 15 is mimalloc's purge delay: its default (1,000 ms in v3)
    /// is no other option's, and `keep_freed_memory` makes it "never".
    #[test]
    #[allow(unsafe_code)]
    fn keep_freed_memory_sets_the_purge_delay() {
        // SAFETY: reads one of mimalloc's options.
        let get = || unsafe { libmimalloc_sys::mi_option_get(15) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1000);
        }
        super::keep_freed_memory();
        assert_eq!(get(), -1);
    }
}

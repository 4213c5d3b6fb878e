//! Memory hygiene for the allocator (mimalloc, set in `main.rs`): freed memory goes back to the
//! OS even when the proxy falls idle.
//!
//! mimalloc returns freed pages to the OS after a delay (1 s), but only from work done by the
//! thread that owns them: a worker thread that goes quiet after a burst of connections keeps
//! the memory they used, for good (+28 MB per 1,000 closed connections, measured with
//! benches/conn_memory.py). Purging at once (`purge_delay` 0) costs ~15% more CPU per request
//! on the hot path (benches/load.sh). So each worker thread runs a timer that lets mimalloc
//! run its pending purges once a second, whatever the traffic.

use std::cell::Cell;
use std::time::Duration;

/// mimalloc's `mi_option_arena_eager_commit` (its position in v3's `mi_option_t`; the
/// constants of `libmimalloc-sys` follow an older list).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Have mimalloc commit its arena as pages are used, not all of it up front. By default it
/// commits eagerly on Linux (overcommit), and the kernel then backs what a thread touches with
/// transparent huge pages: an idle tollgate held 37.6 MB resident (22.8 MB anonymous), 24.5 MB
/// (9.8 MB) with commit on demand. Call it before the first allocation (the binary does, from
/// an ELF constructor): the arena is reserved then. `MIMALLOC_ARENA_EAGER_COMMIT` in the
/// environment still wins. Allocates nothing.
pub fn commit_on_demand() {
    extern "C" {
        fn getenv(name: *const std::ffi::c_char) -> *mut std::ffi::c_char;
    }
    // SAFETY: the C library's getenv with a NUL-terminated name (std's would allocate).
    if !unsafe { getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()) }.is_null() {
        return;
    }
    // SAFETY: sets one of mimalloc's options; touches no memory of ours.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

thread_local! {
    static COLLECTING: Cell<bool> = const { Cell::new(false) };
}

/// Called for each client connection, on the thread that serves it: the first call on each
/// runtime thread starts that thread's collector task (one timer per thread; nothing after the
/// first call but a thread-local read).
pub fn collect_on_this_thread() {
    if COLLECTING.with(|c| c.replace(true)) {
        return;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        COLLECTING.with(|c| c.set(false));
        return;
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // SAFETY: asks mimalloc to run the purges this thread has pending; touches no
            // memory of ours.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    });
}

//! The thread pool all parallel work runs on.
//!
//! Its size comes from `ALIGNLIB_NUM_THREADS` (or `set_num_threads`), else the number of cores.
//! A pool does not survive `fork()` (its threads stay in the parent), so a child process — a
//! DataLoader worker, say — notices the changed pid and builds its own instead of deadlocking.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

struct PoolState {
    pid: u32,
    threads: usize,
    pool: Arc<ThreadPool>,
}

static POOL: Mutex<Option<PoolState>> = Mutex::new(None);
static REQUESTED: Mutex<Option<usize>> = Mutex::new(None);

/// Overrides `ALIGNLIB_NUM_THREADS` for this process; `None` goes back to the default.
pub fn set_num_threads(threads: Option<usize>) {
    *REQUESTED.lock().unwrap_or_else(|e| e.into_inner()) = threads.map(|n| n.max(1));
}

/// Threads the next parallel call will use.
pub fn num_threads() -> usize {
    if let Some(n) = *REQUESTED.lock().unwrap_or_else(|e| e.into_inner()) {
        return n;
    }
    std::env::var("ALIGNLIB_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// The pool for this process, rebuilt after a fork or a change of thread count.
pub fn pool() -> Arc<ThreadPool> {
    let pid = std::process::id();
    let threads = num_threads();
    let mut state = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = state.as_ref() {
        if s.pid == pid && s.threads == threads {
            return Arc::clone(&s.pool);
        }
    }
    if let Some(old) = state.take() {
        if old.pid != pid {
            // The parent's worker threads do not exist here; dropping the pool would wait on
            // them, so it is leaked instead (once per forked child).
            std::mem::forget(old);
        }
    }
    let pool = Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("alignlib-{i}"))
            .build()
            .expect("building a thread pool"),
    );
    *state = Some(PoolState { pid, threads, pool: Arc::clone(&pool) });
    pool
}

//! SCHED_FIFO for the node's runtime threads (raft, network, WAL sync) on PREEMPT_RT kernels.
//! The priority is set before the runtime starts; each runtime thread applies it as it starts.
//! Without permission (no `CAP_SYS_NICE`, or a container runtime that forbids RT) the node runs
//! with normal scheduling and says so once, clearly.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

static PRIORITY: AtomicI32 = AtomicI32::new(0);
static APPLIED: AtomicU32 = AtomicU32::new(0);
static FAILURE: OnceLock<String> = OnceLock::new();

/// Requests SCHED_FIFO at `priority` for runtime threads started from now on.
pub fn request(priority: i32) {
    PRIORITY.store(priority, Ordering::SeqCst);
}

/// Applies the requested policy to the calling thread (a no-op when none was requested).
pub fn apply_to_current_thread() {
    let priority = PRIORITY.load(Ordering::SeqCst);
    if priority == 0 {
        return;
    }
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if result == 0 {
        APPLIED.fetch_add(1, Ordering::Relaxed);
    } else {
        let _ = FAILURE.set(std::io::Error::last_os_error().to_string());
    }
}

/// Logs what happened to the request: call once the node's logging is up.
pub fn report() {
    let priority = PRIORITY.load(Ordering::SeqCst);
    if priority == 0 {
        return;
    }
    match FAILURE.get() {
        Some(error) => tracing::warn!(
            priority,
            %error,
            "realtime scheduling requested but refused: the container needs CAP_SYS_NICE and an RT-capable \
             kernel and runtime; running with normal scheduling"
        ),
        None => tracing::info!(priority, threads = APPLIED.load(Ordering::Relaxed), "runtime threads run SCHED_FIFO"),
    }
}

//! SCHED_FIFO for the node's latency-critical threads (the async runtime's workers, which carry
//! raft and the network, and the WAL-sync thread) on PREEMPT_RT kernels — and for nothing else:
//! RocksDB's compaction and flush threads, the blocking pool and anything those start keep
//! normal scheduling, so background work never preempts the request path.
//!
//! How the right is obtained on Kubernetes: the image gives the binary the file capability
//! `cap_sys_nice=p` (permitted, not effective, so the binary still starts where the capability
//! is not granted), the pod adds `SYS_NICE` to its bounding set and allows privilege escalation
//! (without which the kernel ignores file capabilities), and [`request`] raises it into the
//! effective set before any thread exists. A capability added to a non-root container alone
//! never becomes effective, which is why real time did not take on containerd and CRI-O.
//!
//! Without the right the node runs with normal scheduling and says so once, clearly.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

static PRIORITY: AtomicI32 = AtomicI32::new(0);
static APPLIED: AtomicU32 = AtomicU32::new(0);
static FAILURE: OnceLock<String> = OnceLock::new();

thread_local! {
    static TRIED: Cell<bool> = const { Cell::new(false) };
}

/// `CAP_SYS_NICE`, from linux/capability.h.
const CAP_SYS_NICE: u32 = 23;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Moves `CAP_SYS_NICE` from the permitted into the effective set of the calling thread (and of
/// the threads it starts from now on), if it is permitted.
fn raise_sys_nice() {
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset with a version-3 header and the two data words it requires.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return;
        }
        let bit = 1u32 << CAP_SYS_NICE;
        if data[0].permitted & bit == 0 || data[0].effective & bit != 0 {
            return;
        }
        data[0].effective |= bit;
        let _ = libc::syscall(libc::SYS_capset, &mut header, data.as_ptr());
    }
}

/// Requests SCHED_FIFO at `priority` for the latency-critical threads started from now on. Call
/// before the runtime starts: the effective capability is inherited by new threads.
pub fn request(priority: i32) {
    PRIORITY.store(priority, Ordering::SeqCst);
    if priority != 0 {
        raise_sys_nice();
    }
}

/// Applies the requested policy to the calling thread, once per thread (a no-op when none was
/// requested). `SCHED_RESET_ON_FORK`: threads this one starts (a RocksDB pool growing from a
/// write on a worker) do not inherit real time.
pub fn apply_to_current_thread() {
    let priority = PRIORITY.load(Ordering::SeqCst);
    if priority == 0 || TRIED.with(|tried| tried.replace(true)) {
        return;
    }
    match set_fifo(priority) {
        Ok(()) => {
            APPLIED.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            let _ = FAILURE.set(error.to_string());
        }
    }
}

fn set_fifo(priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
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
            "realtime scheduling requested but refused: the binary needs the cap_sys_nice file capability, the \
             container SYS_NICE and allowPrivilegeEscalation, and an RT-capable kernel; running with normal scheduling"
        ),
        None => tracing::info!(priority, threads = APPLIED.load(Ordering::Relaxed), "runtime threads run SCHED_FIFO"),
    }
}

/// The scheduling policy of the calling thread, without the reset-on-fork flag.
pub fn current_policy() -> libc::c_int {
    // SAFETY: pid 0 is the calling thread.
    unsafe { libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK }
}

#[cfg(test)]
mod tests {
    /// A thread started by a real-time thread gets normal scheduling. Meaningful where the test
    /// may set SCHED_FIFO (as root, as CI runs); elsewhere the parent's request is refused and
    /// the test checks only that the child is normal.
    #[test]
    fn threads_started_by_a_realtime_thread_do_not_inherit_it() {
        let (parent, child) = std::thread::spawn(|| {
            let parent = super::set_fifo(1).map(|()| super::current_policy());
            (parent, std::thread::spawn(super::current_policy).join().unwrap())
        })
        .join()
        .unwrap();
        if let Ok(parent) = parent {
            assert_eq!(parent, libc::SCHED_FIFO);
        }
        assert_eq!(child, libc::SCHED_OTHER);
    }
}

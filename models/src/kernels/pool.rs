//! A persistent thread pool with low dispatch overhead.
//!
//! A job is a closure `f(task)` run for every task index in `0..n_tasks`; the calling thread
//! takes part, and tasks are handed out through one atomic counter (callers make tasks equal
//! chunks of output rows, so this is static partitioning with a little stealing when a core
//! is busy with something else). Idle workers spin for a short while (so back-to-back kernels
//! of a forward pass find them awake) and then park on a condition variable. Dispatch
//! allocates nothing. A pool of one thread runs everything inline on the caller.
//!
//! The caller never waits for a worker that has not started on the job: when the caller runs
//! out of tasks it closes the job, and only workers already inside it are waited for.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The job closure type: called once per task index.
pub type Task<'a> = dyn Fn(usize) + Sync + 'a;

type JobPtr = *const Task<'static>;

/// High bit of `gate`: the current job is closed to newcomers.
const CLOSED: usize = 1 << (usize::BITS - 1);

struct Shared {
    /// Bumped once per job (and on shutdown); workers wait for it to change.
    epoch: AtomicU64,
    /// `CLOSED` flag plus the number of workers inside the current job.
    gate: AtomicUsize,
    /// Next task index to hand out.
    next: AtomicUsize,
    /// Number of tasks of the current job.
    n_tasks: AtomicUsize,
    /// The current job; written only while no worker can be inside a job.
    job: UnsafeCell<JobPtr>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    shutdown: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    spin: Duration,
}

// SAFETY: `job` is written by the dispatching thread only while the gate is closed with no
// worker inside (so nobody reads it), and read by workers only after joining the gate with an
// Acquire operation that synchronizes with the Release store that reopened it; the closure it
// points to is `Sync`. Every other field is a synchronization primitive.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under the gate protocol.
unsafe impl Send for Shared {}

/// A persistent pool of worker threads for the kernels.
pub struct Pool {
    n_threads: usize,
    shared: Option<Arc<Shared>>,
    workers: Vec<JoinHandle<()>>,
    busy: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("n_threads", &self.n_threads)
            .finish()
    }
}

/// Default time an idle worker spins before parking.
pub const DEFAULT_SPIN: Duration = Duration::from_millis(2);

impl Pool {
    /// A pool of `n_threads` threads in all (the caller counts as one; 0 is treated as 1).
    pub fn new(n_threads: usize) -> Pool {
        Pool::with_spin(n_threads, DEFAULT_SPIN)
    }

    /// Like [`Pool::new`] with a custom spin time before idle workers park.
    pub fn with_spin(n_threads: usize, spin: Duration) -> Pool {
        let n_threads = n_threads.max(1);
        if n_threads == 1 {
            return Pool {
                n_threads,
                shared: None,
                workers: Vec::new(),
                busy: Mutex::new(()),
            };
        }
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            gate: AtomicUsize::new(CLOSED),
            next: AtomicUsize::new(0),
            n_tasks: AtomicUsize::new(0),
            job: UnsafeCell::new(std::ptr::null::<fn(usize)>() as JobPtr),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panic: Mutex::new(None),
            spin,
        });
        let mut workers = Vec::with_capacity(n_threads - 1);
        for i in 1..n_threads {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("cairn-kernels-{i}"))
                .spawn(move || worker(&s));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    tracing::warn!("kernel pool: could not spawn worker {i}: {e}");
                    break;
                }
            }
        }
        let n_threads = workers.len() + 1;
        Pool {
            n_threads,
            shared: if n_threads > 1 { Some(shared) } else { None },
            workers,
            busy: Mutex::new(()),
        }
    }

    /// A process-wide pool sized by `CAIRN_THREADS` or the number of CPUs.
    pub fn global() -> &'static Pool {
        static GLOBAL: OnceLock<Pool> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let n = std::env::var("CAIRN_THREADS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                });
            Pool::new(n)
        })
    }

    /// Number of threads that run tasks (workers plus the caller).
    pub fn threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(i)` for every `i` in `0..n_tasks` across the pool and returns when all are done.
    ///
    /// Re-entrant and concurrent calls are safe: a call that finds the pool busy runs its tasks
    /// inline. A panic in a task is re-raised on the caller after the job has drained.
    pub fn run(&self, n_tasks: usize, f: &Task<'_>) {
        if n_tasks == 0 {
            return;
        }
        let shared = match &self.shared {
            Some(s) if n_tasks > 1 => s,
            _ => return (0..n_tasks).for_each(f),
        };
        let _guard = match self.busy.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return (0..n_tasks).for_each(f),
        };
        // SAFETY: only the lifetime is erased. The pointer is published to workers below and
        // the job is closed and drained (no worker inside) before this function returns, so
        // no worker dereferences it after `f` goes out of scope.
        let ptr: JobPtr = unsafe { std::mem::transmute::<*const Task<'_>, JobPtr>(f) };
        // SAFETY: the gate is CLOSED with no worker inside (state left by the previous job or
        // by construction), so no other thread reads `job` now; we hold `busy`.
        unsafe { *shared.job.get() = ptr };
        shared.n_tasks.store(n_tasks, Ordering::Relaxed);
        shared.next.store(0, Ordering::Relaxed);
        shared.gate.store(0, Ordering::Release);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
            shared.cv.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| run_tasks(shared, f)));
        shared.gate.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while shared.gate.load(Ordering::Acquire) != CLOSED {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        let theirs = shared
            .panic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(p) = theirs {
            resume_unwind(p);
        }
    }

    /// Convenience wrapper of [`Pool::run`] taking the closure by value.
    pub fn for_each(&self, n_tasks: usize, f: impl Fn(usize) + Sync) {
        self.run(n_tasks, &f)
    }

    /// Runs `f(i, piece)` for the `i`-th `chunk`-long piece of `out` (the last may be
    /// shorter) across the pool; a `chunk` of 0 is taken as 1.
    pub fn for_chunks_mut<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunk = chunk.max(1);
        let (len, base) = (out.len(), SendPtr(out.as_mut_ptr()));
        self.for_each(len.div_ceil(chunk), |i| {
            let start = i * chunk;
            let end = (start + chunk).min(len);
            let base = &base;
            // SAFETY: `start..end` is in bounds of `out`, task indices are distinct so the
            // pieces are disjoint, and `out` stays mutably borrowed until every task is done.
            let piece = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
            f(i, piece)
        });
    }
}

/// A pointer to the start of a slice whose disjoint pieces go to different tasks.
struct SendPtr<T>(*mut T);

// SAFETY: only used by `for_chunks_mut`, whose tasks each touch a disjoint piece of a slice of
// `T: Send` while the caller holds its unique borrow.
unsafe impl<T: Send> Sync for SendPtr<T> {}

fn run_tasks(shared: &Shared, f: &Task<'_>) {
    let n = shared.n_tasks.load(Ordering::Relaxed);
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        seen = wait_for_job(shared, seen);
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        // Join the job unless the caller already closed it.
        let mut g = shared.gate.load(Ordering::Acquire);
        let joined = loop {
            if g & CLOSED != 0 {
                break false;
            }
            match shared
                .gate
                .compare_exchange_weak(g, g + 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(v) => g = v,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: we are inside an open job (the gate count we hold keeps the caller from
        // returning), and the Acquire CAS synchronizes with the Release store that opened it,
        // after which `job` was not written; the closure is alive until the caller returns.
        let f: &Task<'_> = unsafe { &**shared.job.get() };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| run_tasks(shared, f))) {
            // Stop handing out tasks, keep the first panic for the caller.
            shared.next.store(usize::MAX / 2, Ordering::Relaxed);
            let mut slot = shared.panic.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(p);
            }
        }
        shared.gate.fetch_sub(1, Ordering::Release);
    }
}

/// Spins, then parks, until the epoch differs from `seen` or shutdown; returns the epoch.
fn wait_for_job(shared: &Shared, seen: u64) -> u64 {
    let start = Instant::now();
    let mut i = 0u32;
    loop {
        let e = shared.epoch.load(Ordering::Acquire);
        if e != seen {
            return e;
        }
        std::hint::spin_loop();
        i = i.wrapping_add(1);
        if i.is_multiple_of(256) && start.elapsed() >= shared.spin {
            break;
        }
    }
    let mut l = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
    shared.sleepers.fetch_add(1, Ordering::SeqCst);
    let e = loop {
        let e = shared.epoch.load(Ordering::SeqCst);
        if e != seen {
            break e;
        }
        l = shared.cv.wait(l).unwrap_or_else(|p| p.into_inner());
    };
    shared.sleepers.fetch_sub(1, Ordering::SeqCst);
    e
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.shutdown.store(true, Ordering::Release);
            shared.epoch.fetch_add(1, Ordering::SeqCst);
            let _l = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
            shared.cv.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

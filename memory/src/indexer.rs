//! The indexer: one background thread per open memory that links newly stored vectors into
//! the HNSW graphs, off the write path.
//!
//! A write puts its record's vector in the index's inbox (see `index`) and wakes the
//! indexer; the indexer moves the inbox into the graphs and links unlinked nodes, taking the
//! graphs' write lock for at most [`SLICE`] at a time so recalls interleave. Searches scan unlinked nodes
//! exactly, so nothing depends on how far the indexer lags: only the cost of a search does.
//! Writes come first: while a write transaction runs, the indexer waits before its next slice
//! (at most [`MAX_DEFER`]), so a bulk load has the machine to itself and linking catches up
//! between writes and after them.
//! The indexer counts its changes in the shared counter the writer uses to decide when to
//! checkpoint the graphs.

use super::index::VectorIndex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest the indexer holds the graphs' write lock at once.
const SLICE: Duration = Duration::from_millis(2);
/// Longest the indexer waits for running writes before its next slice.
const MAX_DEFER: Duration = Duration::from_millis(50);

#[derive(Default)]
struct State {
    /// Work was added since the indexer last looked.
    work: bool,
    /// The memory is closing.
    stop: bool,
    /// The indexer found nothing left to link.
    idle: bool,
    /// Tests hold the indexer still to look at unlinked vectors.
    #[cfg(test)]
    paused: bool,
}

impl State {
    fn held(&self) -> bool {
        #[cfg(test)]
        if self.paused {
            return true;
        }
        false
    }
}

/// The handle of a running indexer; dropping it stops and joins the thread.
pub struct Indexer {
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Indexer {
    /// Starts the indexer over `index`; links made are added to `changes`.
    pub fn start(
        index: Arc<VectorIndex>,
        changes: Arc<AtomicUsize>,
        writers: Arc<AtomicUsize>,
    ) -> std::io::Result<Indexer> {
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name("memory-indexer".into())
            .spawn(move || run(&index, &changes, &writers, &s))?;
        let ix = Indexer {
            state,
            thread: Some(thread),
        };
        ix.wake();
        Ok(ix)
    }

    /// Tells the indexer that unlinked vectors may be waiting.
    pub fn wake(&self) {
        let (m, cv) = &*self.state;
        if let Ok(mut s) = m.lock() {
            s.work = true;
            s.idle = false;
            cv.notify_all();
        }
    }

    /// Holds the indexer still (or lets it go on).
    #[cfg(test)]
    pub fn set_paused(&self, paused: bool) {
        let (m, cv) = &*self.state;
        if let Ok(mut s) = m.lock() {
            s.paused = paused;
            s.work = true;
            cv.notify_all();
        }
    }

    /// Waits until every vector added before the call is linked (or `timeout` passes);
    /// returns whether the indexer is idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.state;
        let deadline = Instant::now() + timeout;
        let Ok(mut s) = m.lock() else { return false };
        while !s.idle || s.work {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = match cv.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
        true
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        if let Ok(mut s) = m.lock() {
            s.stop = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    index: &VectorIndex,
    changes: &AtomicUsize,
    writers: &AtomicUsize,
    state: &(Mutex<State>, Condvar),
) {
    let (m, cv) = state;
    loop {
        {
            let Ok(mut s) = m.lock() else { return };
            while !s.stop && (!s.work || s.held()) {
                s.idle = true;
                cv.notify_all();
                s = match cv.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            if s.stop {
                return;
            }
            s.work = false;
        }
        loop {
            // Writes come first: while one is running, linking waits (searches scan unlinked
            // vectors exactly meanwhile), so a bulk load does not share the machine with it;
            // never more than MAX_DEFER at a time, so linking goes on under any write load.
            let waiting = Instant::now();
            while writers.load(Ordering::Acquire) > 0 && waiting.elapsed() < MAX_DEFER {
                std::thread::sleep(Duration::from_micros(500));
            }
            let Ok(linked) = index.link_some(SLICE) else {
                return;
            };
            if linked == 0 {
                break;
            }
            changes.fetch_add(linked, Ordering::Relaxed);
            match m.lock() {
                Ok(s) if s.stop => return,
                Ok(s) if s.held() => break,
                Ok(_) => {}
                Err(_) => return,
            }
            // Lets waiting readers take the lock between slices.
            std::thread::yield_now();
        }
    }
}

//! Login throttling: after [`MAX_FAILURES`] failures within [`WINDOW`] a user name is locked
//! for [`LOCKOUT`] *from that client address* (so one address cannot lock the administrator out
//! from everywhere); a client address gets [`MAX_ADDR_FAILURES`] over all names (several
//! operators may share one address behind a NAT, and a spray over many names must still stop).
//! An attempt is [`Limiter::reserve`]d before its password is hashed and counts as a failure
//! until the hash says otherwise, so parallel attempts cannot overtake the count; [`InFlight`]
//! lets one login per address run at a time. Kept in memory: a restart clears it, which an
//! attacker cannot trigger remotely.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failures that lock a key.
pub const MAX_FAILURES: u32 = 5;
/// Failures that lock a client address.
pub const MAX_ADDR_FAILURES: u32 = 20;
/// How long a lock lasts.
pub const LOCKOUT: Duration = Duration::from_secs(300);
/// Failures older than this are forgotten.
pub const WINDOW: Duration = Duration::from_secs(900);
/// Keys remembered at most (the oldest are dropped; bounds memory under a spray).
const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

/// Failure counts per key.
pub struct Limiter {
    entries: Mutex<HashMap<String, Entry>>,
    max: u32,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(MAX_FAILURES)
    }
}

impl Limiter {
    /// A limiter that locks a key after `max` failures.
    pub fn new(max: u32) -> Limiter {
        Limiter {
            entries: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// How long `key` stays locked, if it is.
    pub fn locked(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .and_then(|e| e.locked_until)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Atomically checks that `key` is not locked and counts one attempt as a failure (undo
    /// with [`Limiter::refund`] or forget the key with [`Limiter::clear`] when it turns out
    /// not to be one). The attempt that reaches the limit locks the key for later ones.
    pub fn reserve(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = map
            .get(key)
            .and_then(|e| e.locked_until)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
        {
            return Err(d);
        }
        Self::count(&mut map, key, now, self.max);
        Ok(())
    }

    /// Takes back one reserved attempt that was not a failure (and the lock it caused).
    pub fn refund(&self, key: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(key) {
            e.failures = e.failures.saturating_sub(1);
            if e.failures < self.max {
                e.locked_until = None;
            }
        }
    }

    /// Records a failure; returns the lock duration when this failure locked the key.
    pub fn fail(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Self::count(&mut map, key, now, self.max)
    }

    fn count(
        map: &mut HashMap<String, Entry>,
        key: &str,
        now: Instant,
        max: u32,
    ) -> Option<Duration> {
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            let oldest = map
                .iter()
                .min_by_key(|(_, e)| e.first)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let e = map.entry(key.to_string()).or_insert(Entry {
            failures: 0,
            first: now,
            locked_until: None,
        });
        let expired_lock = e.locked_until.is_some_and(|u| u <= now);
        if expired_lock || now.duration_since(e.first) > WINDOW {
            *e = Entry {
                failures: 0,
                first: now,
                locked_until: None,
            };
        }
        e.failures += 1;
        if e.failures >= max {
            e.locked_until = Some(now + LOCKOUT);
            return Some(LOCKOUT);
        }
        None
    }

    /// Forgets `key` (after a successful login).
    pub fn clear(&self, key: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}

/// Keys with an attempt in progress (one login per client address at a time).
#[derive(Debug, Default)]
pub struct InFlight {
    keys: Mutex<HashSet<String>>,
}

/// Marks a key busy until dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    set: Arc<InFlight>,
    key: String,
}

impl InFlight {
    /// Marks `key` busy, or `None` when an attempt for it is already in progress.
    pub fn try_enter(self: &Arc<Self>, key: &str) -> Option<InFlightGuard> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.insert(key.to_string()) {
            return None;
        }
        Some(InFlightGuard {
            set: self.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut keys = self.set.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_and_success_clears() {
        let l = Limiter::default();
        for _ in 1..MAX_FAILURES {
            assert!(l.fail("admin").is_none());
            assert!(l.locked("admin").is_none());
        }
        assert_eq!(l.fail("admin"), Some(LOCKOUT));
        assert!(l.locked("admin").unwrap() > Duration::from_secs(290));
        assert!(l.locked("other").is_none(), "keys are independent");
        l.clear("admin");
        assert!(l.locked("admin").is_none());
    }

    #[test]
    fn parallel_reservations_never_overtake_the_limit() {
        let l = Limiter::default();
        let granted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..30 {
                s.spawn(|| {
                    if l.reserve("admin|addr:127.0.0.1").is_ok() {
                        granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), MAX_FAILURES);
        assert!(l.locked("admin|addr:127.0.0.1").is_some());
        // A reservation that was not a failure gives its place back.
        l.refund("admin|addr:127.0.0.1");
        assert!(l.locked("admin|addr:127.0.0.1").is_none());
        assert!(l.reserve("admin|addr:127.0.0.1").is_ok());
        assert!(l.reserve("admin|addr:127.0.0.1").is_err());
    }

    #[test]
    fn one_attempt_per_key_in_flight() {
        let f = Arc::new(InFlight::default());
        let a = f.try_enter("addr:127.0.0.1").unwrap();
        assert!(f.try_enter("addr:127.0.0.1").is_none());
        assert!(f.try_enter("addr:127.0.0.2").is_some());
        drop(a);
        assert!(f.try_enter("addr:127.0.0.1").is_some());
    }
}

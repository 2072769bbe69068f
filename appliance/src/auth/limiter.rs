//! Login throttling: after [`MAX_FAILURES`] failures within [`WINDOW`] a user name is locked
//! for [`LOCKOUT`]; a client address gets [`MAX_ADDR_FAILURES`] (several operators may share
//! one address behind a NAT, and a spray over many names must still stop). Kept in memory: a restart clears it, which an
//! attacker cannot trigger remotely.

use std::collections::HashMap;
use std::sync::Mutex;
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

    /// Records a failure; returns the lock duration when this failure locked the key.
    pub fn fail(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
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
        if e.failures >= self.max {
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
}

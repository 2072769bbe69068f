//! Per-provider health: circuit breaker, retry budget, backoff with jitter. Time is passed in,
//! so the transitions are tested without sleeping.

use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// The cool-down ended: one probe call is let through; its result closes or reopens.
    HalfOpen,
}

/// A circuit breaker over consecutive failures.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    opened_at: Option<Instant>,
    half_open: bool,
    probe_in_flight: bool,
    opened_count: u64,
}

impl Breaker {
    /// A closed breaker opening after `threshold` consecutive failures for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            opened_at: None,
            half_open: false,
            probe_in_flight: false,
            opened_count: 0,
        }
    }

    /// The state at `now` (an open breaker whose cool-down ended reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.opened_at {
            None => BreakerState::Closed,
            Some(_) if self.half_open => BreakerState::HalfOpen,
            Some(t) if now.saturating_duration_since(t) >= self.cooldown => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// Whether a call could be let through at `now`, without claiming the probe.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => !self.probe_in_flight,
        }
    }

    /// Lets a call through at `now` or refuses it; in half-open state only one probe at a time.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                self.half_open = true;
                if self.probe_in_flight {
                    false
                } else {
                    self.probe_in_flight = true;
                    true
                }
            }
        }
    }

    /// The provider answered properly: close.
    pub fn success(&mut self) {
        self.failures = 0;
        self.opened_at = None;
        self.half_open = false;
        self.probe_in_flight = false;
    }

    /// The provider failed (timeout, connection, 5xx, malformed answer).
    pub fn failure(&mut self, now: Instant) {
        self.probe_in_flight = false;
        if self.opened_at.is_some() {
            // A failed probe (or a late failure while open) restarts the cool-down.
            self.opened_at = Some(now);
            self.half_open = false;
            return;
        }
        self.failures += 1;
        if self.failures >= self.threshold {
            self.opened_at = Some(now);
            self.half_open = false;
            self.opened_count += 1;
        }
    }

    /// A call ended with no verdict on the provider's health (rate limited): the probe slot
    /// is freed, the state kept.
    pub fn release(&mut self) {
        self.probe_in_flight = false;
    }

    /// Consecutive failures counted while closed.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How many times it opened.
    pub fn opened_count(&self) -> u64 {
        self.opened_count
    }

    /// Time until an open breaker lets a probe through.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        match (self.state(now), self.opened_at) {
            (BreakerState::Open, Some(t)) => Some(
                self.cooldown
                    .saturating_sub(now.saturating_duration_since(t)),
            ),
            _ => None,
        }
    }
}

/// Retries allowed in a sliding window: at most `floor + ratio × calls` — so retries stay a
/// small share of the traffic and a failing provider cannot multiply the load on it.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    window: Duration,
    ratio: f64,
    floor: usize,
    calls: VecDeque<Instant>,
    retries: VecDeque<Instant>,
}

impl RetryBudget {
    /// A budget of `floor + ratio × calls` retries per `window`.
    pub fn new(window: Duration, ratio: f64, floor: usize) -> RetryBudget {
        RetryBudget {
            window,
            ratio,
            floor,
            calls: VecDeque::new(),
            retries: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        for q in [&mut self.calls, &mut self.retries] {
            while q
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
            {
                q.pop_front();
            }
        }
    }

    /// Counts a first attempt.
    pub fn record_call(&mut self, now: Instant) {
        self.prune(now);
        self.calls.push_back(now);
    }

    /// Takes one retry from the budget, or says there is none left.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.prune(now);
        let allowed = self.floor + (self.ratio * self.calls.len() as f64) as usize;
        if self.retries.len() < allowed {
            self.retries.push_back(now);
            true
        } else {
            false
        }
    }

    /// (calls, retries) in the current window.
    pub fn counts(&mut self, now: Instant) -> (usize, usize) {
        self.prune(now);
        (self.calls.len(), self.retries.len())
    }
}

/// Exponential backoff with "equal jitter": attempt `n` (0-based) waits between half and all
/// of `min(cap, base × 2ⁿ)`; `unit` is a random number in [0, 1).
pub fn backoff(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(cap);
    let half = exp / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A random number in [0, 1) from the system's generator.
pub fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_the_threshold_probes_once_and_closes_or_reopens() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(10);
        let mut b = Breaker::new(3, cool);
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.failure(t0);
        b.failure(t0);
        b.success(); // a success resets the count
        b.failure(t0);
        b.failure(t0);
        assert!(b.allow(t0));
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        assert_eq!(
            b.retry_in(t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        // Cool-down over: exactly one probe goes through.
        let t1 = t0 + cool;
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.allow(t1));
        assert!(!b.allow(t1));
        assert!(!b.would_allow(t1));
        // The probe fails: open again for a full cool-down.
        b.failure(t1);
        assert_eq!(b.state(t1 + Duration::from_secs(1)), BreakerState::Open);
        let t2 = t1 + cool;
        assert!(b.allow(t2));
        // A probe that was rate limited frees the slot without deciding.
        b.release();
        assert!(b.allow(t2));
        b.success();
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert_eq!(b.failures(), 0);
        assert_eq!(b.opened_count(), 1);
    }

    #[test]
    fn retry_budget_caps_retries_at_a_share_of_calls_in_the_window() {
        let t0 = Instant::now();
        let mut r = RetryBudget::new(Duration::from_secs(60), 0.2, 1);
        for _ in 0..10 {
            r.record_call(t0);
        }
        // 1 + 20% of 10 = 3 retries.
        assert!(r.try_retry(t0));
        assert!(r.try_retry(t0));
        assert!(r.try_retry(t0));
        assert!(!r.try_retry(t0));
        assert_eq!(r.counts(t0), (10, 3));
        // The window slides: old calls and retries no longer count.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(r.counts(later), (0, 0));
        assert!(r.try_retry(later));
        assert!(!r.try_retry(later));
    }

    #[test]
    fn backoff_grows_exponentially_within_jitter_bounds_and_is_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..8 {
            let full = (base * 2u32.pow(attempt)).min(cap);
            let lo = backoff(attempt, base, cap, 0.0);
            let hi = backoff(attempt, base, cap, 0.999_999);
            assert_eq!(lo, full / 2);
            assert!(hi <= full && hi > full / 2, "{attempt}: {hi:?}");
            for _ in 0..50 {
                let d = backoff(attempt, base, cap, random_unit());
                assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
            }
        }
        assert_eq!(backoff(60, base, cap, 1.0), cap);
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}

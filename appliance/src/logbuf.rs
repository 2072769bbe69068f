//! The appliance's recent log lines, kept in memory for `GET /api/v1/system/logs` (the console's
//! events page and `cairn logs`): an air-gapped box has no shell to read them from.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Lines kept.
pub const CAPACITY: usize = 2000;

/// One log line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Line {
    /// Sequence number (increasing from 1).
    pub seq: u64,
    /// RFC 3339 time (UTC).
    pub time: String,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: &'static str,
    /// The message with its fields.
    pub message: String,
}

/// A bounded in-memory record with sequence numbers from 1: the log buffer's and the event
/// stream's. The oldest entry goes when a new one would exceed `cap`.
pub struct SeqRing<T> {
    next: u64,
    items: VecDeque<T>,
    cap: usize,
}

impl<T> SeqRing<T> {
    /// An empty ring of `cap` entries (usable in a `static`).
    pub const fn new(cap: usize) -> SeqRing<T> {
        SeqRing {
            next: 1,
            items: VecDeque::new(),
            cap,
        }
    }

    /// Appends the entry `make` builds with its sequence number.
    pub fn push(&mut self, make: impl FnOnce(u64) -> T) {
        let seq = self.next;
        self.next += 1;
        if self.items.len() >= self.cap {
            self.items.pop_front();
        }
        self.items.push_back(make(seq));
    }

    /// The entries, oldest first.
    pub fn items(&self) -> &VecDeque<T> {
        &self.items
    }

    /// The sequence number of the newest entry (0 when none was ever added).
    pub fn last_seq(&self) -> u64 {
        self.next - 1
    }
}

static RING: Mutex<SeqRing<Line>> = Mutex::new(SeqRing::new(CAPACITY));

/// The tracing layer that fills the buffer.
pub struct Capture;

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// A UTC time as RFC 3339 with milliseconds.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        push(level_name(event.metadata().level()), m.0);
    }
}

fn level_name(l: &tracing::Level) -> &'static str {
    match *l {
        tracing::Level::ERROR => "ERROR",
        tracing::Level::WARN => "WARN",
        tracing::Level::INFO => "INFO",
        tracing::Level::DEBUG => "DEBUG",
        _ => "TRACE",
    }
}

/// Appends a line.
pub fn push(level: &'static str, message: String) {
    let mut r = RING.lock().unwrap_or_else(|p| p.into_inner());
    r.push(|seq| Line {
        seq,
        time: now_rfc3339(),
        level,
        message,
    });
}

fn rank(level: &str) -> u8 {
    match level.to_ascii_uppercase().as_str() {
        "ERROR" => 0,
        "WARN" => 1,
        "INFO" => 2,
        "DEBUG" => 3,
        _ => 4,
    }
}

/// Lines after `since`, at `level` or more severe, containing `contains`, at most `limit`
/// (the newest when there are more); and the sequence number to ask from next time.
pub fn read(
    since: u64,
    level: Option<&str>,
    contains: Option<&str>,
    limit: usize,
) -> (Vec<Line>, u64) {
    let r = RING.lock().unwrap_or_else(|p| p.into_inner());
    let max = level.map(rank).unwrap_or(4);
    let needle = contains.map(str::to_lowercase);
    let mut out: Vec<Line> = r
        .items()
        .iter()
        .filter(|l| l.seq > since && rank(l.level) <= max)
        .filter(|l| {
            needle
                .as_ref()
                .is_none_or(|n| l.message.to_lowercase().contains(n))
        })
        .cloned()
        .collect();
    if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    (out, r.last_seq())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_sequence_level_and_text() {
        push("INFO", "unit-test alpha".into());
        push("WARN", "unit-test beta".into());
        let (all, next) = read(0, None, Some("unit-test"), 100);
        assert!(all.len() >= 2);
        let (warn, _) = read(0, Some("warn"), Some("unit-test"), 100);
        assert!(warn.iter().all(|l| l.level == "WARN" || l.level == "ERROR"));
        assert!(warn.iter().any(|l| l.message == "unit-test beta"));
        let (none, _) = read(next, None, Some("unit-test"), 100);
        assert!(none.is_empty());
        let (one, _) = read(0, None, Some("unit-test"), 1);
        assert_eq!(one.len(), 1);
    }
}

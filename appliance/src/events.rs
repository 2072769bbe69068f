//! The appliance's structured event stream: what operators watch live on the console's events
//! page (`GET /api/v1/events`). Unlike the log, every event has a kind and a subject to filter
//! on: `agent.run` and `agent.denied` (subject: the agent), `router.call` and `router.breaker`
//! (the target), `operator.action` and `auth.login` (the user), `machine.settings`.
//! The last [`CAPACITY`] events are kept in memory; the durable records stay where they are
//! (runs, usage, audit log in redb).

use crate::logbuf::SeqRing;
use serde::Serialize;
use std::sync::Mutex;

/// Events kept.
pub const CAPACITY: usize = 5000;

/// One event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Sequence number (increasing from 1).
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub time_ms: u64,
    /// Dotted kind, e.g. `agent.run`.
    pub kind: String,
    /// What it is about (an agent, a target, a user).
    pub subject: String,
    /// What happened.
    pub message: String,
    /// `info`, `warn` or `error`.
    pub level: &'static str,
}

static RING: Mutex<SeqRing<Event>> = Mutex::new(SeqRing::new(CAPACITY));

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Adds an event.
pub fn emit(kind: &str, subject: &str, level: &'static str, message: impl Into<String>) {
    let mut r = RING.lock().unwrap_or_else(|p| p.into_inner());
    r.push(|seq| Event {
        seq,
        time_ms: now_ms(),
        kind: kind.to_string(),
        subject: subject.to_string(),
        message: message.into(),
        level,
    });
}

/// A filter over the stream.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only events after this sequence number.
    pub since: u64,
    /// Kind or kind prefix (`agent` matches `agent.run` and `agent.denied`).
    pub kind: Option<String>,
    /// Exact subject.
    pub subject: Option<String>,
    /// Text the message must contain (case-insensitive).
    pub contains: Option<String>,
    /// Only `warn` and `error`.
    pub problems: bool,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        e.seq > self.since
            && self.kind.as_deref().is_none_or(|k| {
                e.kind == k || (e.kind.starts_with(k) && e.kind[k.len()..].starts_with('.'))
            })
            && self.subject.as_deref().is_none_or(|s| e.subject == s)
            && self
                .contains
                .as_deref()
                .is_none_or(|c| e.message.to_lowercase().contains(&c.to_lowercase()))
            && (!self.problems || e.level != "info")
    }
}

/// The newest `limit` matching events (oldest first) and the sequence number to poll from.
pub fn read(f: &Filter, limit: usize) -> (Vec<Event>, u64) {
    let r = RING.lock().unwrap_or_else(|p| p.into_inner());
    let mut out: Vec<Event> = r
        .items()
        .iter()
        .rev()
        .filter(|e| f.matches(e))
        .take(limit)
        .cloned()
        .collect();
    out.reverse();
    (out, r.last_seq())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_kind_prefix_subject_text_and_level() {
        let (_, start) = read(&Filter::default(), 1);
        emit("agent.run", "echo-f", "info", "run 1 started");
        emit("agent.denied", "echo-f", "warn", "http: not granted");
        emit("agentx.other", "echo-f", "info", "not an agent event");
        emit("router.call", "echo-f", "info", "chat ok");
        let base = Filter {
            since: start,
            ..Filter::default()
        };
        let kinds = |f: &Filter| {
            read(f, 100)
                .0
                .into_iter()
                .map(|e| e.kind)
                .collect::<Vec<_>>()
        };
        let agent = Filter {
            kind: Some("agent".into()),
            subject: Some("echo-f".into()),
            ..base.clone()
        };
        assert_eq!(kinds(&agent), ["agent.run", "agent.denied"]);
        let problems = Filter {
            problems: true,
            subject: Some("echo-f".into()),
            ..base.clone()
        };
        assert_eq!(kinds(&problems), ["agent.denied"]);
        let text = Filter {
            contains: Some("CHAT".into()),
            subject: Some("echo-f".into()),
            ..base.clone()
        };
        assert_eq!(kinds(&text), ["router.call"]);
        let (last, next) = read(&base, 1);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].seq, next);
        let after = Filter {
            since: next,
            ..Filter::default()
        };
        assert!(read(&after, 10).0.iter().all(|e| e.seq > next));
    }
}

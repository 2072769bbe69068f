//! Console output: init's `tracing` subscriber and the banner writer.
//!
//! Log lines go to `/dev/console` with the kernel's boot clock, like the kernel's own lines.
//! The banner goes to every active console (`/sys/class/tty/console/active`), so the screen of
//! a box and its serial port both show the address, fingerprint and setup code.

use crate::cmdline::LogLevel;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// A minimal subscriber: one line per event, no spans, no allocation beyond the line.
pub struct ConsoleLog {
    max: Level,
    out: Mutex<Option<std::fs::File>>,
}

impl ConsoleLog {
    /// A subscriber writing events up to `level` to `/dev/console` (stderr before devtmpfs).
    pub fn new(level: LogLevel) -> ConsoleLog {
        let max = match level {
            LogLevel::Error => Level::ERROR,
            LogLevel::Warn => Level::WARN,
            LogLevel::Info => Level::INFO,
            LogLevel::Debug => Level::DEBUG,
        };
        ConsoleLog {
            max,
            out: Mutex::new(None),
        }
    }

    fn write_line(&self, line: &str) {
        let mut guard = match self.out.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if guard.is_none() {
            *guard = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/console")
                .ok();
        }
        let ok = guard
            .as_mut()
            .is_some_and(|f| f.write_all(line.as_bytes()).is_ok());
        if !ok {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

struct Fields(String);

impl Visit for Fields {
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

impl Subscriber for ConsoleLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= &self.max
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let ms = crate::sys::boot_ms();
        let lvl = match *e.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        let mut f = Fields(String::with_capacity(96));
        e.record(&mut f);
        let line = format!(
            "[{:5}.{:03}] cairn-init: {lvl}{}\n",
            ms / 1000,
            ms % 1000,
            f.0
        );
        self.write_line(&line);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Writes text to every active console (serial and screen).
pub fn to_all_consoles(text: &str) {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let mut wrote = false;
    for name in active.split_ascii_whitespace() {
        let path = format!("/dev/{name}");
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
            let _ = f.write_all(text.as_bytes());
            wrote = true;
        }
    }
    if !wrote {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
            let _ = f.write_all(text.as_bytes());
        } else {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}

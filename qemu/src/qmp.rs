//! A minimal QMP client: one connection per command.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

fn read_reply(r: &mut impl BufRead) -> Result<Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("QMP connection closed");
        }
        let v: Value = serde_json::from_str(line.trim()).context("QMP sent invalid JSON")?;
        if let Some(ret) = v.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = v.get("error") {
            bail!("QMP error: {err}");
        }
        // Greeting and asynchronous events are skipped.
    }
}

/// Runs `command` with optional arguments on the QMP socket.
pub fn execute(sock: &Path, command: &str, arguments: Option<Value>) -> Result<Value> {
    let s = UnixStream::connect(sock)
        .with_context(|| format!("connecting to QMP at {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut greeting = String::new();
    r.read_line(&mut greeting)?;
    writeln!(w, "{}", json!({"execute": "qmp_capabilities"}))?;
    read_reply(&mut r)?;
    let mut msg = json!({"execute": command});
    if let Some(a) = arguments {
        msg["arguments"] = a;
    }
    writeln!(w, "{msg}")?;
    read_reply(&mut r)
}

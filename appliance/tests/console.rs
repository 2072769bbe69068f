//! The web console in a real browser: a hosted `cairn serve` on a fresh data directory, then
//! `tests/console/console.mjs` (Chromium driven by playwright-core) onboards with the setup
//! code from the server's log, logs in and out, remembers and finds a memory record, trusts a
//! publisher and installs a signed agent by upload and runs it, and changes the site name; the
//! server is restarted on the same data and the second phase checks the site name survived,
//! then the login lockout. With the default models (ignored test, run optimised by
//! `cargo xtask test`) a chat reply streams in. Screenshots land in `target/cairn/console/`.
//!
//! Needs node, Chromium and `tests/console/node_modules` (`cargo xtask test` provides them);
//! without them the test fails naming the command, unless `CAIRN_SKIP_BROWSER=1`.

#[path = "../../agents/tests/common/mod.rs"]
mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHAT: &str = "smollm2-135m-instruct-q4_1";
const EMBED: &str = "all-minilm-l6-v2";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cairn serve` on `data` and answers it, its URL and its log lines as they come.
fn serve(data: &Path, models: &Path) -> (Server, String, mpsc::Receiver<String>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--models"])
        .arg(models)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn serve");
    // The log goes to stdout or stderr depending on how it is set up: read both.
    let (tx, rx) = mpsc::channel();
    let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
    let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
    for stream in [out, err] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("cairn: {line}");
                let _ = tx.send(line);
            }
        });
    }
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "cairn serve did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, format!("https://127.0.0.1:{port}"), rx)
}

/// The `XXXX-XXXX-XXXX` code of a log line containing `setup code:`.
fn setup_code(line: &str) -> Option<String> {
    // Without terminal colour sequences (ESC [ … letter).
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let rest = &plain[plain.find("setup code:")? + "setup code:".len()..];
    rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| {
            let parts: Vec<&str> = w.split('-').collect();
            parts.len() == 3 && parts.iter().all(|p| p.len() == 4)
        })
        .map(str::to_string)
}

/// Waits for the setup code among the server's log lines.
fn wait_for_code(lines: &mpsc::Receiver<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(code) = setup_code(&line) {
                    return code;
                }
            }
            Err(_) => panic!("cairn serve logged no `setup code:` line within 60 s"),
        }
    }
}

/// What is missing to run the browser, with the command that fixes it.
fn browser_missing(chromium: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let major = node.as_deref().and_then(|v| {
        v.trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
    });
    match major {
        None => missing
            .push("node: `cargo xtask deps` (or `sudo apt-get install -y nodejs npm`)".to_string()),
        Some(m) if m < 20 => missing.push(format!(
            "node 20 or newer for playwright-core (found {}): install nodejs 20 from NodeSource",
            node.unwrap_or_default()
        )),
        Some(_) => {}
    }
    if !Path::new(chromium).is_file() {
        missing.push(format!(
            "Chromium at {chromium}: `cargo xtask deps` (or `sudo apt-get install -y chromium`; \
             CAIRN_CHROMIUM names another binary)"
        ));
    }
    let modules = support::repo_root().join("tests/console/node_modules/playwright-core");
    if !modules.is_dir() {
        missing.push(
            "tests/console/node_modules: `cd tests/console && npm ci --no-audit --no-fund`"
                .to_string(),
        );
    }
    missing
}

/// Runs one phase of console.mjs and panics with its output on failure.
fn browser(phase: &str, url: &str, env: &[(&str, String)]) {
    let out = Command::new("node")
        .arg("console.mjs")
        .current_dir(support::repo_root().join("tests/console"))
        .env("CAIRN_URL", url)
        .env("CAIRN_PHASE", phase)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- console.mjs, phase {phase} ---\n{text}");
    assert!(
        out.status.success(),
        "the console's browser tests failed in phase {phase}:\n{text}"
    );
}

/// The Chromium binary, or None when the browser tests are knowingly skipped.
fn prerequisites() -> Option<String> {
    let chromium = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing = browser_missing(&chromium);
    if missing.is_empty() {
        return Some(chromium);
    }
    let list = missing.join("\n  ");
    if std::env::var("CAIRN_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED (CAIRN_SKIP_BROWSER=1): the browser tests need:\n  {list}");
        return None;
    }
    panic!(
        "the console's browser tests cannot run; install what is missing:\n  {list}\n\
         (or set CAIRN_SKIP_BROWSER=1 to skip them knowingly)"
    );
}

/// A fresh folder for one test's screenshots under `target/cairn/console/`.
fn screenshots(name: &str) -> PathBuf {
    let dir = support::repo_root().join("target/cairn/console").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_console_in_a_real_browser() {
    let Some(chromium) = prerequisites() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let models = work.path().join("no-models");
    std::fs::create_dir_all(&models).unwrap();

    // A signed agent for the upload scenario; the page trusts its key first.
    let key = common::key();
    let package = work.path().join("console-echo.cpkg");
    std::fs::write(
        &package,
        common::package(&key, "echo", "console-echo", "[capabilities]\nkv = true\n"),
    )
    .unwrap();
    let env = vec![
        ("CAIRN_CHROMIUM", chromium),
        (
            "CAIRN_SCREENSHOTS",
            screenshots("pages").display().to_string(),
        ),
        ("CAIRN_SITE_NAME", "north-3 (console test)".to_string()),
        ("CAIRN_AGENT_PACKAGE", package.display().to_string()),
        ("CAIRN_AGENT_NAME", "console-echo".to_string()),
        ("CAIRN_AGENT_KEY", key.public_hex()),
    ];

    let (server, url, lines) = serve(&data, &models);
    let mut first = env.clone();
    first.push(("CAIRN_SETUP_CODE", wait_for_code(&lines)));
    browser("first", &url, &first);
    drop(server);

    // Same data, new process: what was saved must still be there.
    let (_server, url, _lines) = serve(&data, &models);
    browser("second", &url, &env);
}

#[test]
#[ignore = "needs the default models; run with cargo xtask test"]
fn a_chat_reply_streams_into_the_console() {
    let Some(chromium) = prerequisites() else {
        return;
    };
    let store = cairn_models::store::ModelStore::new(cairn_models::store::default_dir());
    let catalog = cairn_models::catalog::Catalog::builtin();
    for id in [CHAT, EMBED] {
        assert!(
            store.has(catalog.get(id).expect("catalog entry")),
            "run `cargo xtask fetch-models` first ({})",
            store.root().display()
        );
    }
    let work = tempfile::tempdir().unwrap();
    let (_server, url, lines) = serve(
        &work.path().join("data"),
        &cairn_models::store::default_dir(),
    );
    let env = vec![
        ("CAIRN_CHROMIUM", chromium),
        (
            "CAIRN_SCREENSHOTS",
            screenshots("chat").display().to_string(),
        ),
        ("CAIRN_CHAT_MODEL", CHAT.to_string()),
        ("CAIRN_SETUP_CODE", wait_for_code(&lines)),
    ];
    // The same weights again, uploaded through the models page under another id.
    let gguf = store
        .file(catalog.get(CHAT).expect("catalog entry"), "weights")
        .expect("the chat model's file");
    let mut env = env;
    env.push(("CAIRN_UPLOAD_GGUF", gguf.display().to_string()));
    browser("chat", &url, &env);
}

#[test]
fn setup_codes_are_read_from_log_lines() {
    assert_eq!(
        setup_code("2026-01-01T00:00:00Z  INFO cairn::serve: setup code: ABCD-EFGH-JKMN (one use)")
            .as_deref(),
        Some("ABCD-EFGH-JKMN")
    );
    assert_eq!(
        setup_code("setup code:  \u{1b}[1mWXYZ-2345-6789\u{1b}[0m").as_deref(),
        Some("WXYZ-2345-6789")
    );
    assert_eq!(setup_code("no code here"), None);
}

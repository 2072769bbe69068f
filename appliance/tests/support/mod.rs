//! Shared by the hosted-appliance tests: start `cairn serve` on a data directory, onboard it
//! the way an operator does (the setup code read from its log), and call it with an admin API
//! token.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The administrator the tests create.
pub const ADMIN: &str = "admin";
/// Its password.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running `cairn serve` (killed on drop).
pub struct Server {
    child: Child,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The data directory.
    pub data: PathBuf,
    /// An admin API token (empty until [`Server::authenticate`]).
    pub token: String,
    log: Arc<Mutex<String>>,
    /// A temporary data directory owned by this server, removed with it.
    temp: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository root. `cargo test` sets `CARGO_MANIFEST_DIR` at run time too; that value
/// wins, because a target directory shared between clones makes the compiled-in one stale.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("the crate lives in the repository")
        .to_path_buf()
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A client that accepts the appliance's self-signed certificate, with no credentials.
pub fn anonymous() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// Sends a request; returns the status and the JSON body (`Null` if not JSON).
pub async fn call(rb: reqwest::RequestBuilder) -> (u16, Value) {
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Server {
    /// Starts `cairn serve --data DATA --listen 127.0.0.1:PORT ARGS…` and waits until it listens
    /// (not onboarded: see [`Server::start`]). Its log is echoed with `tag`.
    pub fn spawn(tag: &str, data: &Path, args: &[&str]) -> Server {
        let port = free_port();
        Server::spawn_on(tag, data, port, args)
    }

    fn spawn_on(tag: &str, data: &Path, port: u16, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cairn serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (log2, tag2) = (log.clone(), tag.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("cairn {tag2}: {line}");
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut server = Server {
            child,
            port,
            url: format!("https://127.0.0.1:{port}"),
            data: data.to_path_buf(),
            token: String::new(),
            log,
            temp: None,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!("cairn serve exited with {st}:\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "cairn serve did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The "listening" line (and the setup code before it) is logged after the bind.
        while !server.log().contains("listening on") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// [`Server::spawn`], then onboarding (or a login, when the data directory already has the
    /// administrator) and a fresh admin API token in [`Server::token`].
    pub async fn start(tag: &str, data: &Path, args: &[&str]) -> Server {
        let mut s = Server::spawn(tag, data, args);
        s.authenticate().await;
        s
    }

    /// [`Server::start`] on a fresh temporary data directory, removed when the server drops.
    pub async fn start_temp(tag: &str, args: &[&str]) -> Server {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut s = Server::start(tag, temp.path(), args).await;
        s.temp = Some(temp);
        s
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The one-time setup code from the log, if the server printed one.
    pub fn setup_code(&self) -> Option<String> {
        let log = self.log();
        let at = log.rfind("setup code: ")?;
        Some(log[at + 12..].chars().take(14).collect())
    }

    /// Onboards with the setup code (or logs in) and makes an admin API token.
    pub async fn authenticate(&mut self) {
        let c = anonymous();
        let (path, body) = match self.setup_code() {
            Some(code) => (
                "onboard",
                json!({"code": code, "username": ADMIN, "password": PASSWORD}),
            ),
            None => ("login", json!({"username": ADMIN, "password": PASSWORD})),
        };
        let r = c
            .post(format!("{}/api/v1/auth/{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect(path);
        let st = r.status().as_u16();
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or_default()
            .to_string();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        // Bearer tokens are made through the API with the session just opened.
        assert_eq!(st, 200, "{path}: {v}");
        let csrf = v["csrf"].as_str().expect("csrf").to_string();
        let name = format!(
            "tests-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let (st, v) = call(
            c.post(format!("{}/api/v1/auth/tokens", self.url))
                .header("cookie", cookie)
                .header("x-csrf-token", csrf)
                .json(&json!({"name": name, "scope": "admin"})),
        )
        .await;
        assert_eq!(st, 201, "token: {v}");
        self.token = v["token"].as_str().expect("token").to_string();
    }

    /// Logs in as the administrator and returns the `cookie` header value for the session.
    pub async fn session_cookie(&self, c: &reqwest::Client) -> String {
        let r = c
            .post(format!("{}/api/v1/auth/login", self.url))
            .json(&json!({"username": ADMIN, "password": PASSWORD}))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status().as_u16(), 200, "login");
        let set = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("set-cookie")
            .to_string();
        set.split(';').next().unwrap_or_default().to_string()
    }

    /// A client that sends the admin token with every request.
    pub fn client(&self) -> reqwest::Client {
        token_client(&self.token)
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Stops and starts the server again on the same port and data directory, keeping the
    /// token (tokens are durable).
    pub fn restart(&mut self, tag: &str, args: &[&str]) {
        self.stop();
        let token = std::mem::take(&mut self.token);
        let mut next = Server::spawn_on(tag, &self.data.clone(), self.port, args);
        next.token = token;
        next.temp = self.temp.take();
        std::mem::swap(self, &mut next);
    }
}

/// Runs the `cairn` CLI with its own config file (never the user's) and `env`; whether it
/// succeeded, and its stdout and stderr.
pub fn cli(config: &Path, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .env("CAIRN_CONFIG", config)
        .env_remove("CAIRN_TOKEN")
        .env_remove("CAIRN_REMOTE")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run the cairn CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A client that sends `token` as `Authorization: Bearer`.
pub fn token_client(token: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

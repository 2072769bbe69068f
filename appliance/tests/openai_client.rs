//! The official `openai` Python client against a hosted `cairn serve` on the default models.
//!
//! Needs the default models (`cargo xtask fetch-models`) and a Python with the pinned client
//! (`CAIRN_OPENAI_PYTHON`); `cargo xtask test` provides both and runs this in release mode.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

/// Starts `cairn serve` on a fresh data directory and waits until it accepts connections.
fn serve(extra: &[&str]) -> (Server, u16, PathBuf) {
    let port = free_port();
    let data = std::env::temp_dir().join(format!("cairn-openai-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--data"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--threads", "2"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn serve");
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("cairn: {line}");
        }
    });
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "cairn serve did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, port, data)
}

#[test]
#[ignore = "needs the default models and the openai client; run with cargo xtask test"]
fn official_openai_client_against_hosted_serve() {
    let python = std::env::var("CAIRN_OPENAI_PYTHON").expect(
        "CAIRN_OPENAI_PYTHON must name a Python with the openai client (cargo xtask test sets it)",
    );
    let (_server, port, data) = serve(&[]);
    let st = Command::new(python)
        .arg(repo_root().join("tests/openai/check_client.py"))
        .args(["--base-url", &format!("https://127.0.0.1:{port}/v1")])
        .status()
        .expect("run the client check");
    assert!(st.success(), "the openai client checks failed (see above)");
    let _ = std::fs::remove_dir_all(data);
}

//! The official `openai` Python client against a hosted `cairn serve` on the default models.
//!
//! Needs the default models (`cargo xtask fetch-models`) and a Python with the pinned client
//! (`CAIRN_OPENAI_PYTHON`); `cargo xtask test` provides both and runs this in release mode.

use std::process::Command;

#[path = "support/mod.rs"]
mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the default models and the openai client; run with cargo xtask test"]
async fn official_openai_client_against_hosted_serve() {
    let python = std::env::var("CAIRN_OPENAI_PYTHON").expect(
        "CAIRN_OPENAI_PYTHON must name a Python with the openai client (cargo xtask test sets it)",
    );
    let server = support::Server::start_temp("openai", &["--threads", "2"]).await;
    let st = Command::new(python)
        .arg(support::repo_root().join("tests/openai/check_client.py"))
        .args(["--base-url", &format!("{}/v1", server.url)])
        .args(["--api-key", &server.token])
        .status()
        .expect("run the client check");
    assert!(st.success(), "the openai client checks failed (see above)");
}

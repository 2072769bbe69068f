//! A Python agent (`sdk/python/summarizer.py`, built with componentize-py) through the real
//! runtime: signed, installed, run against the fake services, and refused what its manifest
//! does not grant. Ignored by plain `cargo test`: it needs componentize-py
//! (`CAIRN_COMPONENTIZE_PY`); `cargo xtask test` makes a venv with the pinned version and runs
//! it. Compiling the 18 MB component takes Cranelift ~28 s of CPU (14 s on two free cores).

mod common;

use cairn_agents::db::RunStatus;
use common::*;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs componentize-py (CAIRN_COMPONENTIZE_PY); cargo xtask test runs it"]
async fn a_python_agent_summarizes_with_the_model_and_is_refused_what_it_was_not_granted() {
    let t = Instant::now();
    let wasm = python_agent("summarizer");
    eprintln!(
        "componentize-py: {} bytes in {:.1} s",
        wasm.len(),
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let services = FakeServices::new();
    let rt = runtime(dir.path(), services.clone()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();

    let t = Instant::now();
    rt.install(
        package_of(
            &key,
            wasm.clone(),
            "py-summarizer",
            "[capabilities]\nllm = true\nkv = true\n",
        ),
        true,
    )
    .await
    .unwrap();
    eprintln!("compile and install: {:.1} s", t.elapsed().as_secs_f64());
    let compiled: u64 = std::fs::read_dir(dir.path().join("agents").join("compiled"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    eprintln!("compiled cache: {compiled} bytes");
    let instantiate = rt.instantiate_once("py-summarizer").await.unwrap();
    eprintln!("instantiate: {instantiate:?}");

    // The output is the model's reply (the fake answers "Score 8. Reply to: <last message>").
    let text = "Cairn runs agents offline, on a box.";
    for n in 1..=2 {
        let run = rt.run("py-summarizer", text.into(), None).await.unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
        assert_eq!(
            run.output.as_deref(),
            Some("Score 8. Reply to: Cairn runs agents offline, on a box."),
        );
        assert_eq!(run.usage.prompt_tokens + run.usage.completion_tokens, 10);
        assert_eq!(run.usage.models, ["fake-model"]);
        let logs: Vec<&str> = run.logs.iter().map(|l| l.message.as_str()).collect();
        // Its log lines, and the run count it keeps in kv across runs (and instances).
        assert!(logs.contains(&"summarizing 36 characters"), "{logs:?}");
        assert!(
            logs.contains(&format!("run number {n}").as_str()),
            "{logs:?}"
        );
        assert!(
            logs.contains(&"fake-model answered (5+5 tokens)"),
            "{logs:?}"
        );
        let names: Vec<&str> = run.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["llm.chat"], "{run:?}");
    }
    {
        let seen = services.seen.lock().unwrap();
        let chat = seen.chats.last().unwrap();
        assert_eq!(chat.messages[0].role, "system");
        assert!(chat.messages[0].content.starts_with("Summarize"));
        assert_eq!(chat.messages[1].content, text);
        assert_eq!(chat.max_tokens, Some(80));
        assert_eq!(
            seen.callers.last().map(String::as_str),
            Some("py-summarizer")
        );
    }
    // A Python `raise Err(...)` fails the run with that reason.
    let run = rt.run("py-summarizer", "   ".into(), None).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("nothing to summarize"));
    // Another agent's message is summarized too.
    let reply = rt
        .send(
            "py-summarizer",
            "planner",
            "Night shift starts at 22:00.".into(),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.as_deref(),
        Some("Score 8. Reply to: Night shift starts at 22:00.")
    );

    // The same component without capabilities: kv is refused (logged, the agent goes on),
    // then llm is refused and fails the run; both are audited. The compiled component is
    // reused from the cache.
    let t = Instant::now();
    rt.install(package_of(&key, wasm, "py-bare", ""), true)
        .await
        .unwrap();
    eprintln!("install from the cache: {:.2} s", t.elapsed().as_secs_f64());
    let chats_before = services.seen.lock().unwrap().chats.len();
    let run = rt.run("py-bare", text.into(), None).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let err = run.error.unwrap();
    assert!(err.starts_with("llm: capability: llm"), "{err}");
    assert!(
        run.logs
            .iter()
            .any(|l| l.level == "warn" && l.message.starts_with("no run count: capability: kv")),
        "{:?}",
        run.logs
    );
    assert!(
        run.spans
            .iter()
            .any(|s| s.name == "llm (denied)" && s.error.as_deref() == Some("capability")),
        "{:?}",
        run.spans
    );
    assert_eq!(services.seen.lock().unwrap().chats.len(), chats_before);
    let denied: Vec<String> = rt
        .audit(50)
        .unwrap()
        .into_iter()
        .filter(|a| a.event == "capability_denied" && a.agent.as_deref() == Some("py-bare"))
        .map(|a| a.detail)
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
}

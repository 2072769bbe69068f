//! The runtime against real components built from the SDK's examples: signatures, capabilities,
//! isolation, lifecycle, checkpoints, supervision, messages and quotas.

mod common;

use cairn_agents::db::{AgentState, Restart, RunStatus};
use cairn_agents::package::PackageError;
use cairn_agents::{AgentError, StartOptions};
use common::*;
use std::time::Duration;

const ECHO_CAPS: &str = "[capabilities]\nkv = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let key = key();
    let good = package(&key, "echo", "echo", "");

    // Unknown publisher first, then trusted.
    let e = rt.install(good.clone(), true).await.unwrap_err();
    assert!(
        matches!(e, AgentError::Package(PackageError::UnknownPublisher(_))),
        "{e}"
    );
    rt.trust(&key.public_hex(), "tests").unwrap();

    // Unsigned.
    let mut p = cairn_agents::package::Package::parse(&good).unwrap();
    p.signature = None;
    let e = rt.install(p.to_bytes(), true).await.unwrap_err();
    assert!(e.to_string().contains("unsigned"), "{e}");

    // Tampered: one byte of the component changed after signing.
    let mut tampered = good.clone();
    let at = tampered.len() - 200;
    tampered[at] ^= 0x40;
    let e = rt.install(tampered, true).await.unwrap_err();
    assert!(
        matches!(e, AgentError::Package(PackageError::BadSignature)),
        "{e}"
    );

    // Signed by a key other than the manifest's publisher.
    let other = common::key();
    let mut p = cairn_agents::package::Package::parse(&good).unwrap();
    let by_other =
        cairn_agents::package::Package::parse(&package(&other, "echo", "echo", "")).unwrap();
    p.signature = by_other.signature;
    let e = rt.install(p.to_bytes(), true).await.unwrap_err();
    assert!(
        matches!(e, AgentError::Package(PackageError::WrongKey { .. })),
        "{e}"
    );

    // A component that does not implement the world.
    let manifest = format!(
        "name = \"junk\"\nversion = \"1.0.0\"\npublisher = \"{}\"\n",
        key.public_hex()
    );
    let junk = key
        .sign(&manifest, b"\0asm\x01\0\0\0".to_vec())
        .unwrap()
        .to_bytes();
    let e = rt.install(junk, true).await.unwrap_err();
    assert!(matches!(e, AgentError::World(_)), "{e}");
    assert!(e.to_string().contains("cairn:agent/agent@0.1.0"), "{e}");

    // Good package installs and runs; revoking the key stops it and refuses reinstalls.
    let info = rt.install(good.clone(), true).await.unwrap();
    assert_eq!(info.record.state, AgentState::Running);
    let run = rt.run("echo", "hello".into(), None).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    rt.revoke(&key.public_hex()).await.unwrap();
    assert_eq!(rt.info("echo").unwrap().record.state, AgentState::Stopped);
    let e = rt.install(good, true).await.unwrap_err();
    assert!(
        matches!(e, AgentError::Package(PackageError::Revoked(_))),
        "{e}"
    );
    let events: Vec<String> = rt.audit(50).unwrap().into_iter().map(|a| a.event).collect();
    assert!(
        events.contains(&"install".to_string()) && events.contains(&"trust_revoke".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_keep_state_logs_kv_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    rt.install(package(&key, "echo", "echo", ECHO_CAPS), true)
        .await
        .unwrap();
    for i in 1..=3 {
        let run = rt.run("echo", format!("hi {i}"), None).await.unwrap();
        assert_eq!(
            run.output.as_deref(),
            Some(format!("hi {i} (task {i})").as_str())
        );
        assert!(
            run.usage.fuel > 0 && run.usage.host_calls >= 1,
            "{:?}",
            run.usage
        );
        assert!(
            run.logs
                .iter()
                .any(|l| l.message.contains(&format!("#{i}"))),
            "{:?}",
            run.logs
        );
    }
    let first = rt.run("echo", "kv:alpha".into(), None).await.unwrap();
    assert_eq!(first.output.as_deref(), Some("alpha seen before: false"));
    let second = rt.run("echo", "kv:alpha".into(), None).await.unwrap();
    assert_eq!(second.output.as_deref(), Some("alpha seen before: true"));
    let listed = rt.runs(Some("echo"), 10).unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0].id, second.id, "newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outside_capabilities_fail_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let services = FakeServices::new();
    let rt = runtime(dir.path(), services.clone()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    rt.install(package(&key, "hostile", "hostile", ""), true)
        .await
        .unwrap();
    rt.install(package(&key, "echo", "echo", ""), true)
        .await
        .unwrap();
    for (input, capability) in [
        ("egress", "http"),
        ("memory", "memory"),
        ("spawn", "agents"),
        ("send", "agents"),
    ] {
        let run = rt.run("hostile", input.into(), None).await.unwrap();
        assert_eq!(run.status, RunStatus::Failed, "{input}");
        let err = run.error.unwrap();
        assert!(
            err.contains("Capability") || err.contains("capability"),
            "{input}: {err}"
        );
        assert!(err.contains(capability), "{input}: {err}");
        // The refusal is in the run's trace too.
        assert!(
            run.spans
                .iter()
                .any(|sp| sp.name == format!("{capability} (denied)")
                    && sp.error.as_deref() == Some("capability")),
            "{input}: {:?}",
            run.spans
        );
    }
    let denied: Vec<_> = rt
        .audit(100)
        .unwrap()
        .into_iter()
        .filter(|a| a.event == "capability_denied" && a.agent.as_deref() == Some("hostile"))
        .collect();
    assert_eq!(denied.len(), 4, "{denied:?}");
    assert!(
        services.seen.lock().unwrap().http.is_empty(),
        "no request left the box"
    );

    // Granted, the same calls go through (agents) or reach the services (http).
    rt.install(
        package(
            &key,
            "hostile",
            "hostile",
            "[capabilities]\nagents = [\"echo\"]\nhttp = [\"example.com\"]\n",
        ),
        true,
    )
    .await
    .unwrap();
    let spawned = rt.run("hostile", "spawn".into(), None).await.unwrap();
    assert_eq!(
        spawned.output.as_deref(),
        Some("from hostile (task 1)"),
        "{spawned:?}"
    );
    let child = rt.runs(Some("echo"), 1).unwrap().remove(0);
    assert_eq!(child.parent.as_deref(), Some(spawned.id.as_str()));
    let sent = rt.run("hostile", "send".into(), None).await.unwrap();
    assert_eq!(
        sent.output.as_deref(),
        Some("hostile said ping"),
        "{sent:?}"
    );
    let fetched = rt.run("hostile", "egress".into(), None).await.unwrap();
    assert_eq!(fetched.output.as_deref(), Some("fetched"), "{fetched:?}");
    assert_eq!(fetched.spans.len(), 1, "{fetched:?}");
    assert_eq!(fetched.spans[0].name, "http.fetch");
    assert!(fetched.spans[0].detail.ends_with("https://example.com/"));
    assert_eq!(spawned.spans[0].name, "agents.spawn");
    assert_eq!(
        services.seen.lock().unwrap().http,
        vec!["https://example.com/".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mode_refuses_egress_even_when_granted() {
    let dir = tempfile::tempdir().unwrap();
    let mut services = FakeServices::new();
    std::sync::Arc::get_mut(&mut services).unwrap().offline = true;
    let rt = runtime(dir.path(), services.clone()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    rt.install(
        package(
            &key,
            "hostile",
            "hostile",
            "[capabilities]\nhttp = [\"example.com\"]\n",
        ),
        true,
    )
    .await
    .unwrap();
    let run = rt.run("hostile", "egress".into(), None).await.unwrap();
    assert!(run.error.unwrap().contains("offline"));
    assert!(services.seen.lock().unwrap().http.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_agent_never_affects_another() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    let limits = "[limits]\nwall_time_ms = 3000\nmemory_mb = 16\nfuel_per_task = 2000000000\nhost_calls_per_task = 5000\ninstances = 8\n";
    rt.install(package(&key, "hostile", "hostile", limits), true)
        .await
        .unwrap();
    rt.install(package(&key, "echo", "echo", ""), true)
        .await
        .unwrap();

    let attacks = [
        ("trap", "unreachable"),
        ("loop", ""),
        ("bomb", "memory limit"),
        ("stack", "stack overflow"),
        ("flood", "host-call limit"),
    ];
    let mut handles = Vec::new();
    for (attack, _) in attacks {
        let rt = rt.clone();
        handles.push(tokio::spawn(async move {
            rt.run("hostile", attack.into(), None).await.unwrap()
        }));
    }
    // While the attacks run, the well-behaved agent keeps answering.
    for i in 1..=5 {
        let run = rt
            .run("echo", format!("still here {i}"), None)
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    }
    for ((attack, reason), h) in attacks.into_iter().zip(handles) {
        let run = h.await.unwrap();
        assert_eq!(run.status, RunStatus::Failed, "{attack}: {run:?}");
        let err = run.error.unwrap();
        if attack == "loop" {
            assert!(
                err.contains("out of fuel") || err.contains("wall time"),
                "{attack}: {err}"
            );
        } else if attack == "stack" {
            // Rust's shadow stack lives in linear memory: overflowing it is a bounds trap,
            // deeper native recursion is wasmtime's stack-overflow trap.
            assert!(
                err.contains("stack overflow") || err.contains("out of bounds"),
                "{attack}: {err}"
            );
        } else {
            assert!(err.contains(reason), "{attack}: {err}");
        }
    }
    // The hostile agent itself is still usable afterwards.
    let ok = rt.run("hostile", "nothing".into(), None).await.unwrap();
    assert_eq!(ok.output.as_deref(), Some("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_and_wall_time_each_stop_a_busy_loop() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    rt.install(
        package(
            &key,
            "hostile",
            "fuel",
            "[limits]\nfuel_per_task = 50000000\n",
        ),
        true,
    )
    .await
    .unwrap();
    rt.install(
        package(&key, "hostile", "clock", "[limits]\nwall_time_ms = 500\n"),
        true,
    )
    .await
    .unwrap();
    let run = rt.run("fuel", "loop".into(), None).await.unwrap();
    assert!(
        run.error.as_deref().unwrap().contains("out of fuel"),
        "{run:?}"
    );
    assert!(run.usage.fuel >= 50_000_000 - 1000);
    let run = rt.run("clock", "loop".into(), None).await.unwrap();
    assert!(
        run.error.as_deref().unwrap().contains("wall time"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_kill_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    rt.install(package(&key, "echo", "echo", ""), true)
        .await
        .unwrap();
    rt.install(
        package(
            &key,
            "hostile",
            "hostile",
            "[limits]\nwall_time_ms = 600000\n",
        ),
        true,
    )
    .await
    .unwrap();

    rt.pause("echo").unwrap();
    let id = rt.submit("echo", "later".into(), None).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rt.run_record(&id).unwrap().output.is_none(),
        "a paused agent does not run tasks"
    );
    rt.resume("echo").unwrap();
    let mut done = None;
    for _ in 0..100 {
        let r = rt.run_record(&id).unwrap();
        if r.status == RunStatus::Succeeded {
            done = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        done.expect("resumed task finishes").output.as_deref(),
        Some("later (task 1)")
    );

    // A task spinning forever is suspended by pause (its fuel stops moving) and ended by kill.
    let spin = rt.submit("hostile", "loop".into(), None).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.pause("hostile").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rt.run_record(&spin).unwrap().status, RunStatus::Running);
    rt.kill("hostile").await.unwrap();
    let r = rt.run_record(&spin).unwrap();
    assert_eq!(r.status, RunStatus::Killed, "{r:?}");
    assert_eq!(
        rt.info("hostile").unwrap().record.state,
        AgentState::Stopped
    );
    let e = rt.run("hostile", "nothing".into(), None).await.unwrap_err();
    assert!(
        matches!(e, AgentError::Conflict(_)) && e.to_string().contains("stopped"),
        "{e}"
    );
    let refused = rt.runs(Some("hostile"), 1).unwrap().remove(0);
    assert_eq!(refused.status, RunStatus::Refused);
    rt.start("hostile", StartOptions::default()).unwrap();
    assert_eq!(
        rt.run("hostile", "x".into(), None)
            .await
            .unwrap()
            .output
            .as_deref(),
        Some("ok")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_survive_a_restart_of_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    {
        let rt = runtime(dir.path(), FakeServices::new()).await;
        rt.trust(&key.public_hex(), "tests").unwrap();
        rt.install(package(&key, "echo", "echo", ""), true)
            .await
            .unwrap();
        for _ in 0..3 {
            rt.run("echo", "tick".into(), None).await.unwrap();
        }
        rt.checkpoint("echo").await.unwrap();
        // An agent without snapshots says so.
        rt.install(package(&key, "hostile", "hostile", ""), true)
            .await
            .unwrap();
        let e = rt.checkpoint("hostile").await.unwrap_err();
        assert!(e.to_string().contains("keeps no checkpoints"), "{e}");
    }
    let rt = runtime(dir.path(), FakeServices::new()).await;
    assert!(rt.info("echo").unwrap().checkpoint_ms.is_some());
    let run = rt.run("echo", "tock".into(), None).await.unwrap();
    assert_eq!(run.output.as_deref(), Some("tock (task 4)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_applies_restart_policies() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    rt.install(package(&key, "hostile", "crashy", ""), false)
        .await
        .unwrap();
    rt.install(package(&key, "hostile", "fragile", ""), false)
        .await
        .unwrap();
    rt.start(
        "crashy",
        StartOptions {
            restart: Restart::OnFailure,
            service: Some("trap".into()),
            ..Default::default()
        },
    )
    .unwrap();
    rt.start(
        "fragile",
        StartOptions {
            restart: Restart::Never,
            service: Some("trap".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut restarts = 0;
    for _ in 0..100 {
        restarts = rt.info("crashy").unwrap().record.restarts;
        if restarts >= 3 && rt.info("fragile").unwrap().record.state == AgentState::Failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        restarts >= 3,
        "on-failure restarts a crashing service ({restarts})"
    );
    let fragile = rt.info("fragile").unwrap().record;
    assert_eq!(fragile.state, AgentState::Failed);
    assert!(fragile.reason.unwrap().contains("unreachable"));
    rt.stop("crashy").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_agents_go_through_services_and_quotas_refuse_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let services = FakeServices::new();
    let rt = runtime(dir.path(), services.clone()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    rt.install(
        package(
            &key,
            "summarizer",
            "summarizer",
            "[capabilities]\nllm = true\n[limits]\ntokens_per_hour = 25\n",
        ),
        true,
    )
    .await
    .unwrap();
    rt.install(package(&key, "critic", "critic", ""), true)
        .await
        .unwrap();
    rt.install(
        package(
            &key,
            "researcher",
            "researcher",
            "[capabilities]\nllm = true\nmemory = [\"agent:researcher\"]\n",
        ),
        true,
    )
    .await
    .unwrap();

    let run = rt
        .run("summarizer", "Cairn is an agent OS.".into(), None)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert!(run.output.unwrap().starts_with("Score 8."));
    assert_eq!(run.usage.prompt_tokens + run.usage.completion_tokens, 10);
    // The critic has no llm capability.
    let run = rt.run("critic", "draft".into(), None).await.unwrap();
    assert!(run.error.unwrap().contains("llm"));
    // The researcher recalls, answers and remembers.
    let run = rt
        .run(
            "researcher",
            "When does the night shift start?".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    // Its trace: recall, then the chat, then remember, in order, within the run's time.
    let names: Vec<&str> = run.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["memory.recall", "llm.chat", "memory.remember"],
        "{run:?}"
    );
    let (started, finished) = (run.started_ms.unwrap(), run.finished_ms.unwrap());
    for pair in run.spans.windows(2) {
        assert!(pair[0].end_ms <= pair[1].start_ms, "{:?}", run.spans);
    }
    assert!(
        run.spans
            .iter()
            .all(|s| started <= s.start_ms && s.start_ms <= s.end_ms && s.end_ms <= finished),
        "{run:?}"
    );
    assert_eq!(run.spans[0].detail, "agent:researcher");
    {
        let seen = services.seen.lock().unwrap();
        assert!(
            seen.chats.last().unwrap().messages[1]
                .content
                .contains("22:00")
        );
        assert_eq!(seen.remembered[0].0, "agent:researcher");
    }
    // 25 tokens an hour: the third call goes over and is refused before the run starts.
    rt.run("summarizer", "second".into(), None).await.unwrap();
    rt.run("summarizer", "third".into(), None).await.unwrap();
    let e = rt
        .run("summarizer", "fourth".into(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Quota(_)), "{e}");
    assert_eq!(
        rt.runs(Some("summarizer"), 1).unwrap()[0].status,
        RunStatus::Refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_interrupted_by_a_restart_are_marked() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let id;
    {
        let rt = runtime(dir.path(), FakeServices::new()).await;
        rt.trust(&key.public_hex(), "tests").unwrap();
        rt.install(
            package(
                &key,
                "hostile",
                "hostile",
                "[limits]\nwall_time_ms = 600000\n",
            ),
            true,
        )
        .await
        .unwrap();
        id = rt.submit("hostile", "loop".into(), None).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        rt.kill("hostile").await.unwrap();
    }
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let r = rt.run_record(&id).unwrap();
    assert!(
        matches!(r.status, RunStatus::Killed | RunStatus::Interrupted),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_agents_than_execution_slots_still_run() {
    // Each live instance keeps a fiber stack; the pool must not be sized by running tasks.
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    rt.install(package(&key, "echo", "echo", ""), true)
        .await
        .unwrap();
    rt.install(package(&key, "parrot", "parrot", ""), true)
        .await
        .unwrap();
    assert_eq!(rt.prewarm("echo", 20).await.unwrap(), 20);
    let run = rt.run("parrot", "still room".into(), None).await.unwrap();
    assert_eq!(run.output.as_deref(), Some("still room"), "{run:?}");
    assert_eq!(rt.info("echo").unwrap().idle_instances, 20);
}

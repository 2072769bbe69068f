//! `cargo xtask bench agents`: the agent runtime next to native process spawns of the same
//! trivial work, in the same run. Figures: instantiate latency p50/p99 (target p50 ≤ 10 µs),
//! trivial tasks per second end to end (each run committed durably), memory of 1,000 and 10,000
//! idle agents (target ≤ 512 MB at 10,000), and the router's overhead per call: the same
//! one-token chat on the default on-device model through `Router::chat` and directly on the
//! model, interleaved (target: p99 added latency ≤ 1 ms; `bench_router` example).

use super::inference::{cores, cpu_model};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::process::Command;

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the echo agent and the measuring program, runs it, returns the report.
pub fn run() -> Result<Value> {
    crate::deps::ensure_rust_target("wasm32-wasip2")?;
    let root = crate::build::repo_root();
    let wasm_target = root.join("target").join("wasm-agents");
    eprintln!("bench agents: building the echo agent for wasm32-wasip2");
    let st = cargo()
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &wasm_target)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "-p",
            "cairn-agent-sdk",
            "--example",
            "echo",
        ])
        .status()?;
    if !st.success() {
        bail!("building the echo agent failed");
    }
    let echo = wasm_target.join("wasm32-wasip2/release/examples/echo.wasm");
    eprintln!("bench agents: measuring (instantiate, tasks, spawn peer, 1k and 10k idle agents)");
    let m = run_example("cairn-agents", "bench_agents", &[echo.as_os_str()])?;
    let router = router_overhead()?;
    let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    let r = |x: f64| (x * 100.0).round() / 100.0;
    let idle = m["idle"].as_array().cloned().unwrap_or_default();
    let mut figures = vec![
        json!({"name": "instantiate_p50", "unit": "us", "value": r(f("instantiate_p50_us")),
               "peer": "native process spawn (/bin/true) p50", "peer_value": r(f("spawn_p50_us")),
               "ratio": r(f("spawn_p50_us") / f("instantiate_p50_us")), "better": "lower",
               "target": {"max_value": 10.0}}),
        json!({"name": "instantiate_p99", "unit": "us", "value": r(f("instantiate_p99_us")),
               "peer": "native process spawn (/bin/true) p99", "peer_value": r(f("spawn_p99_us")),
               "ratio": r(f("spawn_p99_us") / f("instantiate_p99_us")), "better": "lower"}),
        json!({"name": "trivial_tasks_per_s", "unit": "tasks/s", "value": r(f("tasks_per_s")),
               "peer": "native process spawns per second", "peer_value": r(f("spawn_per_s")),
               "ratio": r(f("tasks_per_s") / f("spawn_per_s")), "better": "higher"}),
    ];
    let g = |k: &str| router[k].as_f64().unwrap_or(f64::NAN);
    figures.push(
        json!({"name": "router_overhead_p50", "unit": "us", "value": r(g("overhead_p50_us")),
               "better": "lower", "note": "Router::chat time minus its target's time, one-token local chat"}),
    );
    figures.push(
        json!({"name": "router_overhead_p99", "unit": "us", "value": r(g("overhead_p99_us")),
               "better": "lower", "target": {"max_value": 1000.0}}),
    );
    figures.push(
        json!({"name": "routed_chat_p99", "unit": "us", "value": r(g("routed_p99_us")),
               "peer": "the same chat on the local model directly, p99", "peer_value": r(g("direct_p99_us")),
               "ratio": r(g("direct_p99_us") / g("routed_p99_us")), "better": "lower"}),
    );
    figures.push(
        json!({"name": "routed_chat_p50", "unit": "us", "value": r(g("routed_p50_us")),
               "peer": "the same chat on the local model directly, p50", "peer_value": r(g("direct_p50_us")),
               "ratio": r(g("direct_p50_us") / g("routed_p50_us")), "better": "lower"}),
    );
    for i in idle {
        let n = i["agents"].as_u64().unwrap_or(0);
        figures.push(
            json!({"name": format!("idle_agents_{n}_rss"), "unit": "MiB",
            "value": i["rss_mib"], "better": "lower",
            "target": if n == 10_000 { json!({"max_value": 512.0}) } else { json!(null) }}),
        );
    }
    Ok(json!({
        "area": "agents",
        "peer": "native process spawn of /bin/true (same trivial work, same run)",
        "machine": {"cpu": cpu_model(), "cores": cores()},
        "runs": 1,
        "figures": figures,
        "raw": {"runtime": m, "router": router},
    }))
}

/// Fetches the default chat model if needed, builds `bench_router` and runs it.
fn router_overhead() -> Result<Value> {
    let store = crate::models::fetch_models("smollm2-135m-instruct-q4_1")?;
    eprintln!("bench agents: router overhead (500 one-token chats each way)");
    run_example(
        "cairn",
        "bench_router",
        &[
            "--calls".as_ref(),
            "500".as_ref(),
            "--models".as_ref(),
            store.root().as_os_str(),
        ],
    )
}

/// `cargo run --release` of example `example` of `package` with `args`; its stdout as JSON.
pub(super) fn run_example(
    package: &str,
    example: &str,
    args: &[&std::ffi::OsStr],
) -> Result<Value> {
    let out = cargo()
        .current_dir(crate::build::repo_root())
        .args([
            "run",
            "--release",
            "--locked",
            "-q",
            "-p",
            package,
            "--example",
            example,
            "--",
        ])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("{example} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{example} output"))
}

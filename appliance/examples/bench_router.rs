//! The router's own cost per call, the router part of `cargo xtask bench agents`:
//! `cargo run --release -p cairn --example bench_router -- --models DIR [--calls N]`.
//!
//! Loads the default chat model from the model store `DIR` and makes the same one-token chat
//! call `N` times two ways, interleaved so both see the same machine load:
//! - directly on the local model (`router::local::chat`, what the router itself calls);
//! - through `Router::chat` with the default policy, a real redb ledger and usage accounting,
//!   exactly as an agent's `llm.chat` or `POST /v1/chat/completions` does.
//!
//! For every routed call the router reports how long its target took; the rest of the call
//! (planning, budget checks, accounting, events) is the router's overhead. Prints one JSON
//! object with the overhead's p50/p99 and both paths' latency p50/p99, in microseconds.

use cairn::inference::{DeviceChoice, Inference, InferenceOptions, LoadPolicy};
use cairn::metrics::Metrics;
use cairn::router::{CallContext, ChatCall, ChatMessage, Router, RouterOptions};
use cairn::store::Store;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const MODEL: &str = "smollm2-135m-instruct-q4_1";

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn call() -> ChatCall {
    ChatCall {
        model: Some(MODEL.into()),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "Say yes.".into(),
        }],
        max_tokens: Some(1),
        temperature: Some(0.0),
        seed: Some(1),
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let mut models: Option<PathBuf> = None;
    let mut calls = 500usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--models" => models = it.next().map(PathBuf::from),
            "--calls" => {
                calls = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--calls needs a positive number")?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let models = models.ok_or("usage: bench_router --models DIR [--calls N]")?;
    let inference = Arc::new(Inference::new(&InferenceOptions {
        store: Some(models),
        registry: None,
        device: DeviceChoice::Cpu,
        threads: 0,
        load: LoadPolicy::Boot,
    })?);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = Store::open(dir.path()).map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::default());
    let router = Router::open(RouterOptions {
        inference: inference.clone(),
        metrics: metrics.clone(),
        db: Some((store.database(), store.path().to_path_buf())),
        data_dir: dir.path().to_path_buf(),
    });
    let ctx = CallContext::default();

    // Warm up both paths (model pages, the ledger's tables, the KV prefix cache).
    for _ in 0..20 {
        cairn::router::local::chat(&inference, &metrics, MODEL, &call())
            .await
            .map_err(|e| e.message().to_string())?;
        router.chat(&ctx, call()).await.map_err(|e| e.to_string())?;
    }
    let (mut direct, mut routed, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..calls {
        let t = Instant::now();
        cairn::router::local::chat(&inference, &metrics, MODEL, &call())
            .await
            .map_err(|e| e.message().to_string())?;
        direct.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let out = router.chat(&ctx, call()).await.map_err(|e| e.to_string())?;
        let total = t.elapsed();
        routed.push(total.as_secs_f64() * 1e6);
        overhead.push(total.saturating_sub(out.latency).as_secs_f64() * 1e6);
    }
    let usage = router.usage(1).map_err(|e| e.to_string())?;
    let recorded: u64 = usage.iter().map(|u| u.usage.calls).sum();
    let out = json!({
        "calls": calls,
        "recorded_calls": recorded,
        "overhead_p50_us": pct(&overhead, 0.5),
        "overhead_p99_us": pct(&overhead, 0.99),
        "overhead_max_us": pct(&overhead, 1.0),
        "direct_p50_us": pct(&direct, 0.5),
        "direct_p99_us": pct(&direct, 0.99),
        "routed_p50_us": pct(&routed, 0.5),
        "routed_p99_us": pct(&routed, 0.99),
    });
    println!("{out}");
    Ok(())
}

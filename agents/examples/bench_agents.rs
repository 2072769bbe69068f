//! Measures the runtime for `cargo xtask bench agents`: instantiate latency, trivial tasks per
//! second, memory of idle agents, and a native process spawn of the same trivial work as the
//! peer. Usage: `bench_agents ECHO.wasm` (the SDK's echo example); prints one JSON object.

use cairn_agents::package::SigningKey;
use cairn_agents::services::NoServices;
use cairn_agents::{Runtime, RuntimeConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let wasm = std::fs::read(
        std::env::args()
            .nth(1)
            .expect("usage: bench_agents ECHO.wasm"),
    )
    .expect("read the echo component");
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(redb::Database::create(dir.path().join("cairn.redb")).unwrap());
    let mut config = RuntimeConfig::new(dir.path().to_path_buf());
    config.max_instances = 11_200;
    let rt = Runtime::open(db, Arc::new(NoServices), config)
        .await
        .unwrap();
    let key = SigningKey::generate().unwrap();
    rt.trust(&key.public_hex(), "bench").unwrap();
    let manifest = |name: &str| {
        format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\npublisher = \"{}\"\n[limits]\nmemory_mb = 16\n",
            key.public_hex()
        )
    };
    let pkg = key
        .sign(&manifest("echo"), wasm.clone())
        .unwrap()
        .to_bytes();
    rt.install(pkg, true).await.unwrap();

    // Instantiate: a fresh instance from the pre-linked component (pooling allocator).
    for _ in 0..200 {
        rt.instantiate_once("echo").await.unwrap();
    }
    let mut inst: Vec<f64> = Vec::new();
    for _ in 0..3000 {
        inst.push(rt.instantiate_once("echo").await.unwrap().as_secs_f64() * 1e6);
    }
    let inst_p50 = pct(&mut inst, 0.5);
    let inst_p99 = pct(&mut inst, 0.99);

    // Trivial tasks, end to end (scheduling, fuel, run record committed durably in redb).
    let n = 1000;
    let t = Instant::now();
    for i in 0..n {
        rt.run("echo", format!("t{i}"), None).await.unwrap();
    }
    let tasks_per_s = n as f64 / t.elapsed().as_secs_f64();

    // Native peer: spawning a process for the same trivial work.
    let mut spawn: Vec<f64> = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let st = std::process::Command::new("/bin/true").status().unwrap();
        assert!(st.success());
        spawn.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let spawn_p50 = pct(&mut spawn, 0.5);
    let spawn_p99 = pct(&mut spawn, 0.99);
    let spawn_per_s = 1e6 / spawn_p50;

    // Idle agents: instances kept warm, each with its own store and linear memory.
    let mut idle = Vec::new();
    let before = rss_kib();
    let mut made = 0;
    for target in [1000usize, 10_000] {
        made += rt.prewarm("echo", target - made).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mib = (rss_kib() - before) / 1024.0;
        idle.push(serde_json::json!({"agents": target, "rss_mib": (mib * 10.0).round() / 10.0}));
    }
    println!(
        "{}",
        serde_json::json!({
            "instantiate_p50_us": inst_p50, "instantiate_p99_us": inst_p99,
            "tasks_per_s": tasks_per_s,
            "spawn_p50_us": spawn_p50, "spawn_p99_us": spawn_p99, "spawn_per_s": spawn_per_s,
            "idle": idle,
        })
    );
}

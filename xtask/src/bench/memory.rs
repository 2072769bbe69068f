//! `cargo xtask bench memory`: Cairn's memory (redb, BM25 + HNSW) next to SQLite (FTS5 +
//! brute-force numpy vectors) on the same synthetic dataset, in the same run, at 10 000 and
//! 100 000 records: single durable inserts/s, bulk inserts/s, hybrid recall p50/p99 (k = 10),
//! recall@10 against exact search, bytes on disk per record. Targets: recall@10 ≥ 0.95,
//! p50 ≤ 5 ms at 100k, faster than SQLite on insert and recall.
//!
//! The dataset is written once by the `bench_memory` example (`target/bench/memory-dataset`);
//! the SQLite script (`xtask/scripts/sqlite_memory_bench.py`) runs in a venv with numpy.
//! Inserts with the embedding computed on the way in (all-MiniLM-L6-v2) are measured by the
//! `bench_memory_embed` example next to SQLite with sentence-transformers
//! (`xtask/scripts/sqlite_memory_embed_bench.py`, in the inference benchmark's venv).
//!
//! `--power-cuts N` adds the durability run: the booted image's power cut N times while it
//! writes, every acknowledged write checked after each reboot (no peer: the figure is the
//! number of acknowledged writes lost, which must be 0, and the time from power-on to a
//! working memory API).

use super::inference::{bench_dir, cores, cpu_model, parse_json, repo_file, run_measured};
use crate::build::{self, ImageOptions};
use crate::deps;
use anyhow::{Context, Result, bail};
use cairn_image::Arch;
use serde_json::{Value, json};
use std::process::Command;

/// Record counts measured.
const SIZES: [usize; 2] = [10_000, 100_000];

fn figure(
    name: &str,
    unit: &str,
    ours: f64,
    peer: f64,
    higher_better: bool,
    target: Value,
) -> Value {
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "name": name, "unit": unit, "value": r(ours), "peer": "SQLite FTS5 + numpy",
        "peer_value": r(peer),
        // The ratio reads "how many times better than the peer" in both directions.
        "ratio": r(if higher_better { ours / peer } else { peer / ours }),
        "better": if higher_better { "higher" } else { "lower" },
        "target": target,
    })
}

/// Builds example `name` of `package` (release) and returns its path.
fn build_example(package: &str, name: &str) -> Result<std::path::PathBuf> {
    eprintln!("bench memory: building the {name} example (release)");
    let st = build::cargo()
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            package,
            "--example",
            name,
        ])
        .status()?;
    if !st.success() {
        bail!("building {name} failed");
    }
    Ok(build::cargo_target_dir()
        .join("release/examples")
        .join(name))
}

/// The median of each numeric field over the rounds' reports (other fields from the first).
fn medians(rounds: &[Value]) -> Result<Value> {
    let first = rounds.first().context("no rounds")?;
    let mut out = first.clone();
    if let Some(obj) = out.as_object_mut() {
        for (k, v) in obj.iter_mut() {
            if v.is_number() {
                let mut xs: Vec<f64> = rounds
                    .iter()
                    .filter_map(|r| r[k.as_str()].as_f64())
                    .collect();
                *v = json!(super::median(&mut xs));
            }
        }
    }
    Ok(out)
}

/// Runs the memory benchmark, `runs` rounds per size, and returns its report.
///
/// With `power_cuts` = (N, arch), the image of `arch` is booted and its power cut N times
/// while it writes (see [`power_cuts`]).
pub fn run(
    sizes: Option<Vec<usize>>,
    runs: usize,
    power_cuts: Option<(usize, Arch)>,
) -> Result<Value> {
    let runs = runs.max(1);
    let sizes = sizes.unwrap_or_else(|| SIZES.to_vec());
    let example = build_example("cairn-memory", "bench_memory")?;
    eprintln!("bench memory: numpy venv for the SQLite baseline");
    let python = crate::pyenv::venv(
        "memory-bench",
        &repo_file("xtask/scripts/memory_bench_requirements.txt"),
    )?;
    let dataset = bench_dir().join("memory-dataset");
    let work = bench_dir().join("memory-work");
    let mut figures = Vec::new();
    let mut detail = serde_json::Map::new();
    let max = sizes.iter().copied().max().unwrap_or(10_000);
    // The dataset is written once for the largest size; smaller runs use its prefix.
    let have = std::fs::read_to_string(dataset.join("records"))
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    if have.is_none_or(|h| h < max) {
        eprintln!("bench memory: writing the dataset ({max} records)");
        let st = Command::new(&example)
            .arg("--dataset")
            .arg(&dataset)
            .args(["--records", &max.to_string(), "--make-dataset"])
            .status()?;
        if !st.success() {
            bail!("writing the memory dataset failed");
        }
    }
    for n in sizes {
        // Rounds alternate Cairn and SQLite so both see the same load on the machine; each
        // figure is the median over the rounds.
        let (mut ours_rounds, mut peer_rounds) = (Vec::new(), Vec::new());
        for r in 1..=runs {
            eprintln!("bench memory: {n} records, round {r}/{runs}: Cairn");
            let mut cmd = Command::new(&example);
            cmd.arg("--dataset").arg(&dataset).arg("--work").arg(&work);
            cmd.args(["--records", &n.to_string(), "--json"]);
            ours_rounds.push(parse_json(
                "bench_memory",
                &run_measured(&format!("bench_memory-{n}-r{r}"), &mut cmd)?.stdout,
            )?);
            eprintln!("bench memory: {n} records, round {r}/{runs}: SQLite");
            let mut cmd = Command::new(&python);
            cmd.arg(repo_file("xtask/scripts/sqlite_memory_bench.py"))
                .arg("--dataset")
                .arg(&dataset)
                .args(["--records", &n.to_string(), "--work"])
                .arg(bench_dir().join("memory-sqlite"));
            peer_rounds.push(parse_json(
                "sqlite_memory_bench",
                &run_measured(&format!("sqlite_memory-{n}-r{r}"), &mut cmd)?.stdout,
            )?);
        }
        let ours = medians(&ours_rounds)?;
        let peer = medians(&peer_rounds)?;
        let get = |v: &Value, k: &str| v[k].as_f64().with_context(|| format!("{k} missing in {v}"));
        let k = if n >= 1000 {
            format!("{}k", n / 1000)
        } else {
            n.to_string()
        };
        let faster = json!({"min_ratio": 1.0});
        figures.push(figure(
            &format!("single_insert_{k}"),
            "records/s",
            get(&ours, "single_insert_per_s")?,
            get(&peer, "single_insert_per_s")?,
            true,
            faster.clone(),
        ));
        figures.push(figure(
            &format!("bulk_insert_{k}"),
            "records/s",
            get(&ours, "bulk_insert_per_s")?,
            get(&peer, "bulk_insert_per_s")?,
            true,
            faster.clone(),
        ));
        let p50_target = if n >= 100_000 {
            json!({"min_ratio": 1.0, "max_value": 5.0})
        } else {
            faster.clone()
        };
        figures.push(figure(
            &format!("recall_p50_{k}"),
            "ms",
            get(&ours, "recall_p50_ms")?,
            get(&peer, "recall_p50_ms")?,
            false,
            p50_target,
        ));
        figures.push(figure(
            &format!("recall_p99_{k}"),
            "ms",
            get(&ours, "recall_p99_ms")?,
            get(&peer, "recall_p99_ms")?,
            false,
            json!(null),
        ));
        figures.push(figure(
            &format!("recall_at_10_{k}"),
            "fraction",
            get(&ours, "recall_at_10")?,
            get(&peer, "recall_at_10")?,
            true,
            json!({"min_value": 0.95}),
        ));
        figures.push(figure(
            &format!("bytes_per_record_{k}"),
            "bytes",
            get(&ours, "bytes_per_record")?,
            get(&peer, "bytes_per_record")?,
            false,
            json!(null),
        ));
        detail.insert(
            k,
            json!({"cairn": ours, "sqlite": peer, "rounds": {"cairn": ours_rounds, "sqlite": peer_rounds}}),
        );
    }
    with_embedding(&dataset, &mut figures, &mut detail)?;
    if let Some((n, arch)) = power_cuts {
        let report = self::power_cuts(n, arch)?;
        let mut ready: Vec<f64> = report["reboot_to_memory_ms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        let a = arch.name();
        let lost = report["acknowledged_lost"].as_f64().unwrap_or(f64::NAN);
        for mut f in [
            super::figure(
                &format!("power_cuts_acknowledged_lost_{a}"),
                "records",
                lost,
                None,
                Some(json!({"max_value": 0})),
            ),
            super::figure(
                &format!("power_cuts_reboot_to_memory_{a}"),
                "ms",
                super::median(&mut ready),
                None,
                None,
            ),
        ] {
            f["better"] = json!("lower");
            figures.push(f);
        }
        detail.insert(format!("power_cuts_{a}"), report);
    }
    Ok(json!({
        "area": "memory",
        "peer": "SQLite (FTS5 + brute-force numpy vectors), same dataset and fusion",
        "machine": {"cpu": cpu_model(), "cores": cores()},
        "runs": runs,
        "figures": figures,
        "detail": detail,
    }))
}

/// Records embedded on the way in: single durable inserts and one import, both sides.
fn with_embedding(
    dataset: &std::path::Path,
    figures: &mut Vec<Value>,
    detail: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    const RECORDS: &str = "300";
    let store = crate::models::fetch_models("all-minilm-l6-v2")?;
    let catalog = crate::models::catalog::Catalog::parse(crate::models::catalog::BUILTIN)?;
    let model = catalog
        .get("all-minilm-l6-v2")
        .context("the embedding model is not in the catalog")?;
    let model_dir = store
        .file(model, "weights")
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .context("the embedding model has no weights")?;
    let mut cmd = Command::new(build_example("cairn", "bench_memory_embed")?);
    cmd.arg("--dataset")
        .arg(dataset)
        .arg("--models")
        .arg(store.root())
        .arg("--work")
        .arg(bench_dir().join("memory-embed-work"))
        .args(["--records", RECORDS]);
    let ours = parse_json(
        "bench_memory_embed",
        &run_measured("bench_memory_embed", &mut cmd)?.stdout,
    )?;
    let python = super::inference::st_venv()?;
    let st_model = super::inference::st_model_dir(&model_dir)?;
    eprintln!("bench memory: inserts with embedding: SQLite + sentence-transformers");
    let mut cmd = Command::new(&python);
    cmd.arg(repo_file("xtask/scripts/sqlite_memory_embed_bench.py"))
        .arg("--dataset")
        .arg(dataset)
        .arg("--model")
        .arg(&st_model)
        .arg("--work")
        .arg(bench_dir().join("memory-embed-sqlite"))
        .args(["--records", RECORDS])
        .env("HF_HUB_OFFLINE", "1");
    let peer = parse_json(
        "sqlite_memory_embed_bench",
        &run_measured("sqlite_memory_embed", &mut cmd)?.stdout,
    )?;
    let get = |v: &Value, k: &str| v[k].as_f64().with_context(|| format!("{k} missing in {v}"));
    for (name, key) in [
        (
            "single_insert_with_embedding",
            "single_with_embedding_per_s",
        ),
        ("bulk_insert_with_embedding", "bulk_with_embedding_per_s"),
    ] {
        let mut f = figure(
            name,
            "records/s",
            get(&ours, key)?,
            get(&peer, key)?,
            true,
            json!({"min_ratio": 1.0}),
        );
        f["peer"] = json!("SQLite FTS5 + sentence-transformers (all-MiniLM-L6-v2, CPU)");
        figures.push(f);
    }
    detail.insert(
        "with_embedding".into(),
        json!({"cairn": ours, "sqlite": peer}),
    );
    Ok(())
}

/// Boots the image of `arch` (with the default models) and cuts its power `cuts` times while
/// it writes: the end-to-end test `memory_survives_power_cuts` with `CAIRN_MEMORY_CUTS`, which
/// fails on any acknowledged write missing or changed after a reboot, on an unacknowledged
/// one half there, or on a store that does not open. Returns the test's report (cuts, records
/// verified, the reboots' times to a working memory API).
fn power_cuts(cuts: usize, arch: Arch) -> Result<Value> {
    let host = Arch::host().unwrap_or(Arch::X86_64);
    let mut needs = deps::for_image();
    needs.extend(deps::for_build(host));
    needs.extend(deps::for_build(arch));
    needs.extend(deps::for_qemu(arch));
    deps::ensure(&needs)?;
    crate::models::fetch_models("default")?;
    build::image(
        arch,
        &ImageOptions {
            models: Some("default".into()),
            ..ImageOptions::default()
        },
    )?;
    let report = bench_dir().join(format!("power-cuts-{}.json", arch.name()));
    let _ = std::fs::remove_file(&report);
    eprintln!("bench memory: {cuts} power cuts of the booted {arch} image");
    // The same selection as `cargo xtask test`, so its build is reused; one test runs.
    let st = crate::test::workspace_tests(host)?
        .current_dir(build::repo_root())
        .env("CAIRN_MEMORY_CUTS", cuts.to_string())
        .env("CAIRN_MEMORY_CUTS_REPORT", &report)
        .args(["--", "--ignored", "--exact", "--nocapture"])
        .arg(format!(
            "memory::memory_survives_power_cuts::{}",
            arch.name()
        ))
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .context("running the power-cut test")?;
    if !st.success() {
        bail!(
            "the power-cut test failed on {arch}: an acknowledged write was lost, a write half-existed, or the store did not open (its output above says which)"
        );
    }
    let text = std::fs::read_to_string(&report).with_context(|| {
        format!(
            "the power-cut test passed but wrote no report at {}",
            report.display()
        )
    })?;
    serde_json::from_str(&text).context("the power-cut report")
}

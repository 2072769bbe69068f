//! Embedding throughput, the Cairn side of `cargo xtask bench inference`:
//! `cargo run --release -p cairn-models --example bench_embed -- [--threads T] [--runs R]
//! [--batch-sizes 1,32] [--sentences N] [--check N] [--model-dir DIR]
//! [--device cpu|cuda|metal] [--json]`.
//!
//! Embeds N sentences (default 256) with the default embedding model (or `--model-dir`) in
//! batches of each size, one warm-up pass then R timed passes, and prints the median
//! sentences/s per batch size, the process's peak RSS (VmHWM), and the vectors of the first
//! `--check` sentences so a peer's output can be compared. Batches are formed the way
//! sentence-transformers' `encode` forms them: sentences sorted by length, then cut into
//! `batch` consecutive ones. `--threads` sets `RAYON_NUM_THREADS`, which sizes the embedder's
//! kernel pool on the CPU (and candle's thread pool).

// The allocator the `cairn` binary ships with (appliance/src/main.rs), so these are the
// appliance's figures.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cairn_models::catalog::Catalog;
use cairn_models::embed::Embedder;
use cairn_models::store::{ModelStore, default_dir};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// The catalog's default embedding model.
const DEFAULT_MODEL: &str = "all-minilm-l6-v2";

/// Command-line options.
struct Args {
    threads: Option<usize>,
    runs: usize,
    batch_sizes: Vec<usize>,
    sentences: usize,
    check: usize,
    model_dir: Option<PathBuf>,
    device: String,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: None,
        runs: 3,
        batch_sizes: vec![1, 32],
        sentences: 256,
        check: 0,
        model_dir: None,
        device: "cpu".to_string(),
        json: false,
    };
    let number = |v: &str, name: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(format!("{name}: not a positive number: {v:?}"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--threads" => a.threads = Some(number(&value("--threads")?, "--threads")?),
            "--runs" => a.runs = number(&value("--runs")?, "--runs")?,
            "--sentences" => a.sentences = number(&value("--sentences")?, "--sentences")?,
            "--check" => {
                let v = value("--check")?;
                a.check = v
                    .parse()
                    .map_err(|_| format!("--check: not a number: {v:?}"))?;
            }
            "--batch-sizes" => {
                a.batch_sizes = value("--batch-sizes")?
                    .split(',')
                    .map(|b| number(b, "--batch-sizes"))
                    .collect::<Result<_, _>>()?;
            }
            "--model-dir" => a.model_dir = Some(PathBuf::from(value("--model-dir")?)),
            "--device" => a.device = value("--device")?,
            "--json" => a.json = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// A field of /proc/self/status in MiB (`VmHWM`, `VmRSS`).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The benchmark's sentences (the same text the sentence-transformers script embeds).
fn sentences(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Sentence number {i} talks about topic {} in some detail.",
                i % 17
            )
        })
        .collect()
}

/// Embeds every text once in batches of `batch` (longest first, as sentence-transformers).
fn pass(e: &Embedder, texts: &[&str], batch: usize) -> Result<(), String> {
    let mut order: Vec<&str> = texts.to_vec();
    order.sort_by_key(|t| std::cmp::Reverse(t.chars().count()));
    for chunk in order.chunks(batch.min(cairn_models::embed::MAX_BATCH)) {
        std::hint::black_box(e.embed(chunk).map_err(|e| e.to_string())?);
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    if let Some(t) = args.threads {
        // SAFETY: nothing else runs yet (no thread has been spawned), so no one reads the
        // environment concurrently; candle and rayon read it when their pools start.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", t.to_string()) };
    }
    let dir = match &args.model_dir {
        Some(d) => d.clone(),
        None => {
            let cat = Catalog::builtin();
            let m = cat.get(DEFAULT_MODEL).ok_or("no catalog entry")?;
            ModelStore::new(default_dir())
                .file(m, "weights")
                .and_then(|p| p.parent().map(PathBuf::from))
                .ok_or("no weights in the catalog entry")?
        }
    };
    let t_load = Instant::now();
    let device = match args.device.as_str() {
        "cpu" => candle_core::Device::Cpu,
        "cuda" => candle_core::Device::new_cuda(0)?,
        "metal" => candle_core::Device::new_metal(0)?,
        other => {
            return Err(format!("--device: expected cpu, cuda or metal, got {other:?}").into());
        }
    };
    let e = Embedder::load(&dir, &device, 256)?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1000.0;
    let owned = sentences(args.sentences);
    let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
    let threads = candle_core::utils::get_num_threads();
    let mut per_batch = serde_json::Map::new();
    for &b in &args.batch_sizes {
        eprintln!("bench_embed: {threads} threads, batch {b}: warm-up");
        pass(&e, &texts, b)?;
        let mut rates = Vec::new();
        for r in 0..args.runs {
            let t = Instant::now();
            pass(&e, &texts, b)?;
            let rate = texts.len() as f64 / t.elapsed().as_secs_f64();
            eprintln!(
                "bench_embed: batch {b}: run {}/{}: {rate:.1} sentences/s",
                r + 1,
                args.runs
            );
            rates.push(rate);
        }
        per_batch.insert(
            b.to_string(),
            json!({"sentences_per_s": median(&rates), "samples": rates}),
        );
    }
    let check = e.embed(&texts[..args.check.min(texts.len())])?;
    let report = json!({
        "device": args.device,
        "model_dir": dir.display().to_string(),
        "threads": threads,
        "runs": args.runs,
        "sentences": texts.len(),
        "dims": e.dims(),
        "load_ms": load_ms,
        "batches": per_batch,
        "peak_rss_mib": status_mib("VmHWM"),
        "check_vectors": check,
    });
    if args.json {
        println!("{report}");
    } else {
        for (b, r) in &per_batch {
            println!(
                "threads {threads}, batch {b}: {:.1} sentences/s (median of {})",
                r["sentences_per_s"].as_f64().unwrap_or(f64::NAN),
                args.runs
            );
        }
        println!("peak RSS {:.1} MiB", status_mib("VmHWM"));
    }
    Ok(())
}

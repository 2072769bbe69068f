//! Chat-model speed, the Cairn side of `cargo xtask bench inference`:
//! `cargo run --release -p cairn-models --example bench_chat -- [--threads T] [--runs R]
//! [--prompt N] [--gen N] [--model FILE.gguf] [--device cpu|cuda|metal] [--json]`.
//!
//! `--device cpu` (the default) runs Cairn's CPU kernels; `cuda` and `metal` run the
//! device-generic forward pass on candle's GPU backend (a build with that feature).
//!
//! Loads the default chat model (or `--model`), runs one warm-up, then R repetitions of: a new
//! sequence, the N-token prompt in one forward pass (prefill), N greedy decode steps. Prints
//! the medians: prefill and decode tokens/s, time to first token (new sequence + prefill +
//! picking the first token), and the process's peak RSS (VmHWM).

// The allocator the `cairn` binary ships with (appliance/src/main.rs), so these are the
// appliance's figures.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cairn_models::catalog::Catalog;
use cairn_models::kernels::{Pool, dispatch};
use cairn_models::llama::{Backend, Llama};
use cairn_models::store::{ModelStore, default_dir};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The catalog's default chat model.
const DEFAULT_MODEL: &str = "smollm2-135m-instruct-q4_1";

/// Command-line options.
struct Args {
    threads: usize,
    runs: usize,
    prompt: usize,
    gen_tokens: usize,
    model: Option<PathBuf>,
    device: String,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: 2,
        runs: 3,
        prompt: 128,
        gen_tokens: 128,
        model: None,
        device: "cpu".to_string(),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |v: String, name: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(format!("{name}: not a positive number: {v:?}"))
        };
        match arg.as_str() {
            "--threads" => a.threads = number(value("--threads")?, "--threads")?,
            "--runs" => a.runs = number(value("--runs")?, "--runs")?,
            "--prompt" => a.prompt = number(value("--prompt")?, "--prompt")?,
            "--gen" => a.gen_tokens = number(value("--gen")?, "--gen")?,
            "--model" => a.model = Some(PathBuf::from(value("--model")?)),
            "--device" => a.device = value("--device")?,
            "--json" => a.json = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// A field of /proc/self/status in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
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

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Arbitrary but fixed token ids below `vocab` (llama-bench also uses random ids).
fn prompt_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

/// One repetition's timings in seconds: (prefill, time to first token, decode).
fn once(model: &Llama, prompt: &[u32], gen_tokens: usize) -> Result<(f64, f64, f64), String> {
    let t0 = Instant::now();
    let mut seq = model.sequence(prompt.len() + gen_tokens + 1);
    let tp = Instant::now();
    let logits = model.forward(&mut seq, prompt).map_err(|e| e.to_string())?;
    let prefill = tp.elapsed().as_secs_f64();
    let mut next = argmax(&logits);
    let ttft = t0.elapsed().as_secs_f64();
    let td = Instant::now();
    for _ in 0..gen_tokens {
        let logits = model
            .forward(&mut seq, &[next])
            .map_err(|e| e.to_string())?;
        next = argmax(&logits);
    }
    std::hint::black_box(next);
    Ok((prefill, ttft, td.elapsed().as_secs_f64()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let path = match &args.model {
        Some(p) => p.clone(),
        None => {
            let cat = Catalog::builtin();
            let m = cat.get(DEFAULT_MODEL).ok_or("no catalog entry")?;
            ModelStore::new(default_dir())
                .file(m, "weights")
                .ok_or("no weights in the catalog entry")?
        }
    };
    if !path.exists() {
        return Err(format!(
            "{} is missing: run `cargo xtask fetch-models`",
            path.display()
        )
        .into());
    }
    let t_load = Instant::now();
    let backend = match args.device.as_str() {
        "cpu" => Backend::Cpu(Arc::new(Pool::new(args.threads))),
        "cuda" => Backend::Gpu(candle_core::Device::new_cuda(0)?),
        "metal" => Backend::Gpu(candle_core::Device::new_metal(0)?),
        other => {
            return Err(format!("--device: expected cpu, cuda or metal, got {other:?}").into());
        }
    };
    let model = Llama::load(&path, backend)?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1000.0;
    let rss_loaded = status_kib("VmRSS");
    let prompt = prompt_tokens(args.prompt, model.config.vocab);
    eprintln!(
        "bench_chat: {} on {}, {} threads, kernels {}, warm-up",
        path.display(),
        args.device,
        args.threads,
        dispatch::level().name()
    );
    once(&model, &prompt, args.gen_tokens)?;
    let (mut prefill, mut ttft, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..args.runs {
        let (p, t, d) = once(&model, &prompt, args.gen_tokens)?;
        eprintln!(
            "bench_chat: run {}/{}: prefill {:.1} tok/s, decode {:.1} tok/s, ttft {:.1} ms",
            r + 1,
            args.runs,
            args.prompt as f64 / p,
            args.gen_tokens as f64 / d,
            t * 1000.0
        );
        prefill.push(args.prompt as f64 / p);
        ttft.push(t * 1000.0);
        decode.push(args.gen_tokens as f64 / d);
    }
    let report = json!({
        "model": path.display().to_string(),
        "device": args.device,
        "threads": args.threads,
        "runs": args.runs,
        "prompt_tokens": args.prompt,
        "gen_tokens": args.gen_tokens,
        "kernel_level_detected": dispatch::detected().name(),
        "kernel_level": dispatch::level().name(),
        "load_ms": load_ms,
        "prefill_tok_s": median(&prefill),
        "decode_tok_s": median(&decode),
        "ttft_ms": median(&ttft),
        "rss_after_load_mib": mib(rss_loaded),
        "peak_rss_mib": mib(status_kib("VmHWM")),
        "samples": {"prefill_tok_s": prefill, "decode_tok_s": decode, "ttft_ms": ttft},
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "threads {}: prefill {:.1} tok/s, decode {:.1} tok/s, ttft {:.1} ms, peak RSS {:.1} MiB (medians of {})",
            args.threads,
            report["prefill_tok_s"].as_f64().unwrap_or(f64::NAN),
            report["decode_tok_s"].as_f64().unwrap_or(f64::NAN),
            report["ttft_ms"].as_f64().unwrap_or(f64::NAN),
            report["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            args.runs
        );
    }
    Ok(())
}

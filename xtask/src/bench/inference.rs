//! `cargo xtask bench inference`: Cairn's on-device inference next to its peers, on this
//! machine, in one run.
//!
//! - Chat: the default GGUF chat model on Cairn's CPU kernels (`bench_chat` example of
//!   cairn-models) next to llama.cpp's `llama-bench -p 128 -n 128` on the same file, at 1 and 2
//!   threads: prefill and decode tokens/s, time to first token, peak RSS. llama.cpp is built
//!   here from the sources vendored in the llama-cpp-python sdist (cached under
//!   `target/bench/llama.cpp-<version>/`).
//! - Embeddings: all-MiniLM-L6-v2 with `cairn_models::embed` (`bench_embed` example) next to
//!   sentence-transformers on torch's CPU path, in a venv made by [`crate::pyenv`] with the
//!   pins of `xtask/scripts/st_requirements.txt`, sentences/s at batch 1 and 32, at 1 and 2
//!   threads.
//!
//! Every measured program runs as a child process whose peak RSS comes from `wait4`. Each of
//! `--runs` rounds runs Cairn's program then the peer's, each warming up before one measured
//! repetition, so that both see the same load on the machine; the figures are the medians over
//! the rounds. Progress goes to stderr, the children's own output to `target/bench/logs/`.

use super::{figure, median};
use crate::build;
use crate::deps;
use crate::models::catalog::Catalog;
use crate::models::store::ModelStore;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The chat model measured (the catalog's default).
const CHAT_MODEL: &str = "smollm2-135m-instruct-q4_1";
/// The embedding model measured (the catalog's default).
const EMBED_MODEL: &str = "all-minilm-l6-v2";
/// Prompt length of the chat benchmark (llama-bench `-p`).
const PROMPT_TOKENS: usize = 128;
/// Generated tokens of the chat benchmark (llama-bench `-n`).
const GEN_TOKENS: usize = 128;
/// Sentences embedded per pass.
const SENTENCES: usize = 256;
/// Batch sizes of the embedding benchmark.
const BATCH_SIZES: [usize; 2] = [1, 32];
/// Thread counts measured (those above the machine's CPU count are skipped).
const THREADS: [usize; 2] = [1, 2];
/// Embedding vectors compared between Cairn and sentence-transformers.
const CHECK_SENTENCES: usize = 4;
/// Embeddings must be at least this many times sentence-transformers' throughput.
const EMBED_MIN_RATIO: f64 = 2.0;
/// The issue's target for chat prefill and decode: at least llama.cpp's speed.
const CHAT_MIN_RATIO: f64 = 1.0;

/// The llama-cpp-python release whose sdist vendors the llama.cpp we build.
const LLAMA_CPP_PYTHON: &str = "0.3.36";
/// sha256 of `llama_cpp_python-0.3.36.tar.gz` on PyPI.
const LLAMA_CPP_PYTHON_SHA256: &str =
    "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e";
/// CMake options of the llama.cpp build (only the `llama-bench` target is built).
const LLAMA_CMAKE_FLAGS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
];

/// The peer's pinned pip requirements (sentence-transformers, transformers, torch).
const ST_REQUIREMENTS: &str = "xtask/scripts/st_requirements.txt";
/// The peer's measuring script, run inside the venv.
const ST_SCRIPT: &str = "xtask/scripts/st_bench.py";

/// A file of the repository.
pub(super) fn repo_file(rel: &str) -> PathBuf {
    build::repo_root().join(rel)
}

/// Where the benchmark keeps its builds, venv and logs: `<target>/bench`.
pub(super) fn bench_dir() -> PathBuf {
    build::cargo_target_dir().join("bench")
}

fn logs_dir() -> PathBuf {
    bench_dir().join("logs")
}

/// The last lines of a log, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a setup command with its output appended to `log`; fails with the log's tail.
fn run_logged(what: &str, cmd: &mut Command, log: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let st = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .status()
        .with_context(|| format!("running {what}"))?;
    if !st.success() {
        bail!(
            "{what} failed ({st}); last lines of {}:\n{}",
            log.display(),
            tail(log, 30)
        );
    }
    Ok(())
}

/// What a measured child process printed, and what it cost.
pub(super) struct Measured {
    pub(super) stdout: String,
    /// Peak resident set size of the process (`ru_maxrss` from `wait4`).
    max_rss_mib: f64,
    wall_s: f64,
    /// The 1-minute load average when it started (other work on the machine skews figures).
    load_before: f64,
}

/// Waits for child `pid` and returns its wait status and resource usage.
fn wait4(pid: u32) -> Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not yet reaped (std's `Child` is never waited on);
        // both pointers are valid for writes for the duration of the call.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if r == pid as libc::pid_t {
            return Ok((status, ru));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("wait4({pid}): {err}");
        }
    }
}

/// Runs a program to be measured: stdout captured, stderr to `target/bench/logs/<name>.log`,
/// peak RSS from the kernel's accounting of that one process.
pub(super) fn run_measured(name: &str, cmd: &mut Command) -> Result<Measured> {
    std::fs::create_dir_all(logs_dir())?;
    let log = logs_dir().join(format!("{name}.log"));
    let logf = std::fs::File::create(&log)?;
    let load_before = load1();
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(logf)
        .spawn()
        .with_context(|| format!("starting {name}: {cmd:?}"))?;
    let mut stdout = String::new();
    let read = child
        .stdout
        .take()
        .context("no stdout pipe")?
        .read_to_string(&mut stdout);
    let (status, ru) = wait4(child.id())?;
    let wall_s = t.elapsed().as_secs_f64();
    read.with_context(|| format!("reading {name}'s output"))?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "{name} failed (wait status {status:#x}); last lines of {}:\n{}",
            log.display(),
            tail(&log, 30)
        );
    }
    Ok(Measured {
        stdout,
        // ru_maxrss is in KiB on Linux.
        max_rss_mib: ru.ru_maxrss as f64 / 1024.0,
        wall_s,
        load_before,
    })
}

/// Parses a child's JSON output (the last line that parses, so stray lines do not matter).
pub(super) fn parse_json(name: &str, out: &str) -> Result<Value> {
    serde_json::from_str(out.trim())
        .ok()
        .or_else(|| {
            out.lines()
                .rev()
                .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        })
        .with_context(|| format!("{name} printed no JSON: {out:?}"))
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// `model name` of /proc/cpuinfo (or the aarch64 implementer/part), else "unknown".
pub(super) fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    field("model name")
        .or_else(|| {
            Some(format!(
                "implementer {} part {}",
                field("CPU implementer")?,
                field("CPU part")?
            ))
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(super) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The 1-minute load average.
fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Builds the two measuring examples of cairn-models in release mode; returns their directory.
fn build_examples() -> Result<PathBuf> {
    eprintln!("bench inference: building the bench_chat and bench_embed examples (release)");
    let st = build::cargo()
        .current_dir(build::repo_root())
        .args(["build", "--release", "--locked", "-p", "cairn-models"])
        .args(["--example", "bench_chat", "--example", "bench_embed"])
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .context("running cargo")?;
    if !st.success() {
        bail!("building the cairn-models examples failed");
    }
    let dir = build::cargo_target_dir().join("release").join("examples");
    for b in ["bench_chat", "bench_embed"] {
        if !dir.join(b).is_file() {
            bail!("cargo did not produce {}", dir.join(b).display());
        }
    }
    Ok(dir)
}

/// `llama-bench` built from the llama.cpp vendored in the llama-cpp-python sdist, reused when
/// the same version was built with the same options on the same CPU.
fn llama_bench() -> Result<PathBuf> {
    let root = bench_dir().join(format!("llama.cpp-{LLAMA_CPP_PYTHON}"));
    let build_dir = root.join("build");
    let bin = build_dir.join("bin").join("llama-bench");
    let stamp = root.join(".built");
    let key = format!(
        "llama-cpp-python {LLAMA_CPP_PYTHON}\n{}\ncpu {}\n",
        LLAMA_CMAKE_FLAGS.join(" "),
        cpu_model()
    );
    if bin.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) {
        eprintln!("bench inference: llama.cpp: {} (cached)", bin.display());
        return Ok(bin);
    }
    deps::ensure(&deps::for_bench_inference())?;
    let _ = std::fs::remove_file(&stamp);
    std::fs::create_dir_all(&root)?;
    let log = root.join("build.log");
    let _ = std::fs::remove_file(&log);

    // The sdist, downloaded once and checked against its known sha256.
    let sdist_dir = bench_dir().join("sdist");
    std::fs::create_dir_all(&sdist_dir)?;
    let tarball = sdist_dir.join(format!("llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"));
    if !tarball.is_file() {
        eprintln!(
            "bench inference: pip download llama-cpp-python=={LLAMA_CPP_PYTHON} (sdist; pip prepares its metadata, a few minutes)"
        );
        run_logged(
            "pip download llama-cpp-python",
            Command::new("python3")
                .args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:"])
                .args(["--progress-bar", "off", "-d"])
                .arg(&sdist_dir)
                .arg(format!("llama-cpp-python=={LLAMA_CPP_PYTHON}")),
            &log,
        )?;
    }
    let got = sha256_file(&tarball)
        .with_context(|| format!("pip did not produce {}", tarball.display()))?;
    if got != LLAMA_CPP_PYTHON_SHA256 {
        let _ = std::fs::remove_file(&tarball);
        bail!(
            "{} has sha256 {got}, expected {LLAMA_CPP_PYTHON_SHA256}; removed it",
            tarball.display()
        );
    }

    // Only vendor/llama.cpp is needed.
    let src = root.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src)?;
    }
    std::fs::create_dir_all(&src)?;
    run_logged(
        "extracting the llama.cpp sources",
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .arg("--strip-components=3")
            .arg(format!(
                "llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp"
            )),
        &log,
    )?;
    if build_dir.exists() {
        std::fs::remove_dir_all(&build_dir)?;
    }
    let t = Instant::now();
    eprintln!(
        "bench inference: building llama.cpp's llama-bench with cmake (several minutes; log: {})",
        log.display()
    );
    run_logged(
        "cmake (configure llama.cpp)",
        Command::new("cmake")
            // The sources sit inside Cairn's repository: keep llama.cpp's build info from
            // reporting Cairn's git commit.
            .env("GIT_CEILING_DIRECTORIES", &root)
            .arg("-S")
            .arg(&src)
            .arg("-B")
            .arg(&build_dir)
            .args(LLAMA_CMAKE_FLAGS),
        &log,
    )?;
    run_logged(
        "cmake --build (llama-bench)",
        Command::new("cmake")
            .arg("--build")
            .arg(&build_dir)
            .args(["--target", "llama-bench", "-j"])
            .arg(cores().to_string()),
        &log,
    )?;
    if !bin.is_file() {
        bail!(
            "the llama.cpp build did not produce {}; see {}",
            bin.display(),
            log.display()
        );
    }
    std::fs::write(&stamp, key)?;
    eprintln!(
        "bench inference: llama.cpp built in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(bin)
}

/// The venv with sentence-transformers (`xtask/scripts/st_requirements.txt`); returns its
/// python.
pub(super) fn st_venv() -> Result<PathBuf> {
    eprintln!(
        "bench inference: sentence-transformers venv (the first time, pip installs torch: a few minutes)"
    );
    let t = Instant::now();
    let python = crate::pyenv::venv("sentence-transformers", &repo_file(ST_REQUIREMENTS))?;
    eprintln!(
        "bench inference: venv ready ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(python)
}

/// A sentence-transformers model directory over the store's files of all-MiniLM-L6-v2: the
/// weights, config and tokenizer linked from the store, plus the module files
/// (Transformer → mean pooling → normalize, 256 tokens) that make `SentenceTransformer(dir)`
/// compute what `cairn_models::embed` computes.
pub(super) fn st_model_dir(store_dir: &Path) -> Result<PathBuf> {
    let dir = bench_dir().join(format!("st-model-{EMBED_MODEL}"));
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        let (from, to) = (store_dir.join(name), dir.join(name));
        if !from.is_file() {
            bail!("{} is missing from the model store", from.display());
        }
        let _ = std::fs::remove_file(&to);
        std::os::unix::fs::symlink(&from, &to)
            .with_context(|| format!("linking {}", to.display()))?;
    }
    let files = [
        (
            "modules.json",
            json!([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]),
        ),
        (
            "sentence_bert_config.json",
            json!({"max_seq_length": 256, "do_lower_case": false}),
        ),
        (
            "1_Pooling/config.json",
            json!({
                "word_embedding_dimension": 384,
                "pooling_mode_cls_token": false,
                "pooling_mode_mean_tokens": true,
                "pooling_mode_max_tokens": false,
                "pooling_mode_mean_sqrt_len_tokens": false,
            }),
        ),
        (
            "tokenizer_config.json",
            json!({
                "do_lower_case": true, "unk_token": "[UNK]", "sep_token": "[SEP]",
                "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
                "tokenize_chinese_chars": true, "strip_accents": null,
                "tokenizer_class": "BertTokenizer", "model_max_length": 512,
            }),
        ),
        (
            "special_tokens_map.json",
            json!({
                "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                "cls_token": "[CLS]", "mask_token": "[MASK]",
            }),
        ),
    ];
    for (name, v) in files {
        std::fs::write(dir.join(name), serde_json::to_string_pretty(&v)?)?;
    }
    Ok(dir)
}

/// The median of llama-bench's per-repetition samples of one test.
fn llama_test(out: &Value, n_prompt: u64, n_gen: u64) -> Result<&Value> {
    out.as_array()
        .into_iter()
        .flatten()
        .find(|t| t["n_prompt"].as_u64() == Some(n_prompt) && t["n_gen"].as_u64() == Some(n_gen))
        .with_context(|| format!("llama-bench printed no pp{n_prompt}/tg{n_gen} result"))
}

fn samples(t: &Value, key: &str) -> Vec<f64> {
    t[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
}

/// The values of `key` in each round's report.
fn column(rounds: &[Value], key: &str) -> Vec<f64> {
    rounds
        .iter()
        .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// The largest of some values.
fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// One thread count of the chat benchmark: `runs` rounds of Cairn (one warm-up, one measured
/// repetition) then llama.cpp (`llama-bench -r 1`, which warms up too), interleaved so both see
/// the same load on the machine; medians over the rounds.
fn chat_at(
    threads: usize,
    runs: usize,
    examples: &Path,
    bench_bin: &Path,
    gguf: &Path,
) -> Result<(Vec<Value>, Value)> {
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for r in 1..=runs {
        eprintln!(
            "bench inference: chat, {threads} thread(s), round {r}/{runs}: Cairn, then llama-bench -p {PROMPT_TOKENS} -n {GEN_TOKENS} -t {threads}"
        );
        let m = run_measured(
            &format!("bench_chat-t{threads}-r{r}"),
            Command::new(examples.join("bench_chat"))
                .args(["--threads", &threads.to_string(), "--runs", "1"])
                .args(["--prompt", &PROMPT_TOKENS.to_string()])
                .args(["--gen", &GEN_TOKENS.to_string()])
                .arg("--model")
                .arg(gguf)
                .arg("--json"),
        )?;
        let mut o = parse_json("bench_chat", &m.stdout)?;
        o["process_max_rss_mib"] = json!(m.max_rss_mib);
        o["wall_s"] = json!(m.wall_s);
        o["load_1m_before"] = json!(m.load_before);
        ours.push(o);

        let m = run_measured(
            &format!("llama-bench-t{threads}-r{r}"),
            Command::new(bench_bin)
                .arg("-m")
                .arg(gguf)
                .args(["-p", &PROMPT_TOKENS.to_string()])
                .args(["-n", &GEN_TOKENS.to_string()])
                .args(["-t", &threads.to_string()])
                .args(["-r", "1", "-o", "json"]),
        )?;
        let p: Value = serde_json::from_str(m.stdout.trim())
            .with_context(|| format!("llama-bench printed no JSON: {:?}", m.stdout))?;
        let pp = llama_test(&p, PROMPT_TOKENS as u64, 0)?;
        let tg = llama_test(&p, 0, GEN_TOKENS as u64)?;
        peer.push(json!({
            "build_commit": pp["build_commit"],
            "cpu_info": pp["cpu_info"],
            "type_k": pp["type_k"],
            "type_v": pp["type_v"],
            "flash_attn": pp["flash_attn"],
            "pp_tok_s": median(&mut samples(pp, "samples_ts")),
            "pp_ms": median(&mut samples(pp, "samples_ns")) / 1e6,
            "tg_tok_s": median(&mut samples(tg, "samples_ts")),
            "process_max_rss_mib": m.max_rss_mib,
            "wall_s": m.wall_s,
            "load_1m_before": m.load_before,
        }));
    }
    let med = |rounds: &[Value], key: &str| median(&mut column(rounds, key));
    let t = format!("t{threads}");
    let figures = vec![
        figure(
            &format!("chat_prefill_{t}"),
            "tok/s",
            med(&ours, "prefill_tok_s"),
            Some(("llama.cpp llama-bench pp128", med(&peer, "pp_tok_s"))),
            Some(json!({"min_ratio": CHAT_MIN_RATIO})),
        ),
        figure(
            &format!("chat_decode_{t}"),
            "tok/s",
            med(&ours, "decode_tok_s"),
            Some(("llama.cpp llama-bench tg128", med(&peer, "tg_tok_s"))),
            Some(json!({"min_ratio": CHAT_MIN_RATIO})),
        ),
        figure(
            &format!("chat_ttft_{t}"),
            "ms",
            med(&ours, "ttft_ms"),
            Some(("llama.cpp pp128 time (prefill only)", med(&peer, "pp_ms"))),
            None,
        ),
        figure(
            &format!("chat_peak_rss_{t}"),
            "MiB",
            max(&column(&ours, "process_max_rss_mib")),
            Some((
                "llama-bench process",
                max(&column(&peer, "process_max_rss_mib")),
            )),
            None,
        ),
    ];
    Ok((figures, json!({"cairn": ours, "llama_cpp": peer})))
}

/// Largest absolute difference and smallest cosine between two sets of vectors.
fn compare_vectors(a: &Value, b: &Value) -> Value {
    let rows = |v: &Value| -> Vec<Vec<f64>> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                r.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .collect()
            })
            .collect()
    };
    let (a, b) = (rows(a), rows(b));
    if a.is_empty() || a.len() != b.len() {
        return json!({"compared": 0});
    }
    let (mut max_diff, mut min_cos) = (0.0f64, 1.0f64);
    for (x, y) in a.iter().zip(&b) {
        if x.len() != y.len() {
            return json!({"compared": 0, "error": "different dimensions"});
        }
        for (p, q) in x.iter().zip(y) {
            max_diff = max_diff.max((p - q).abs());
        }
        let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let nx = x.iter().map(|p| p * p).sum::<f64>().sqrt();
        let ny = y.iter().map(|q| q * q).sum::<f64>().sqrt();
        min_cos = min_cos.min(dot / (nx * ny));
    }
    json!({"compared": a.len(), "max_abs_diff": max_diff, "min_cosine": min_cos})
}

/// One thread count of the embedding benchmark: `runs` rounds of Cairn then
/// sentence-transformers (each process warms up, then makes one timed pass per batch size),
/// interleaved so both see the same load on the machine; medians over the rounds.
fn embed_at(
    threads: usize,
    runs: usize,
    examples: &Path,
    python: &Path,
    store_dir: &Path,
    st_dir: &Path,
) -> Result<(Vec<Value>, Value)> {
    let batches = BATCH_SIZES.map(|b| b.to_string()).join(",");
    let t = threads.to_string();
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    let mut check = Value::Null;
    for r in 1..=runs {
        eprintln!(
            "bench inference: embeddings, {threads} thread(s), round {r}/{runs}: Cairn, then sentence-transformers ({SENTENCES} sentences, batches {batches})"
        );
        let m = run_measured(
            &format!("bench_embed-t{threads}-r{r}"),
            Command::new(examples.join("bench_embed"))
                .env("RAYON_NUM_THREADS", &t)
                .args(["--threads", &t, "--runs", "1"])
                .args(["--batch-sizes", &batches])
                .args(["--sentences", &SENTENCES.to_string()])
                .args(["--check", &CHECK_SENTENCES.to_string()])
                .arg("--model-dir")
                .arg(store_dir)
                .arg("--json"),
        )?;
        let mut o = parse_json("bench_embed", &m.stdout)?;
        o["process_max_rss_mib"] = json!(m.max_rss_mib);
        o["wall_s"] = json!(m.wall_s);
        o["load_1m_before"] = json!(m.load_before);

        let m = run_measured(
            &format!("st_bench-t{threads}-r{r}"),
            Command::new(python)
                .arg(repo_file(ST_SCRIPT))
                .arg("--model")
                .arg(st_dir)
                .args(["--threads", &t, "--runs", "1"])
                .args(["--batch-sizes", &batches])
                .args(["--sentences", &SENTENCES.to_string()])
                .args(["--check", &CHECK_SENTENCES.to_string()])
                .env("HF_HUB_OFFLINE", "1")
                .env("TRANSFORMERS_OFFLINE", "1")
                .env("HF_HUB_DISABLE_TELEMETRY", "1")
                .env("CUDA_VISIBLE_DEVICES", "")
                .env("OMP_NUM_THREADS", &t)
                .env("MKL_NUM_THREADS", &t)
                .env("RAYON_NUM_THREADS", &t),
        )?;
        let mut p = parse_json("st_bench.py", &m.stdout)?;
        p["process_max_rss_mib"] = json!(m.max_rss_mib);
        p["wall_s"] = json!(m.wall_s);
        p["load_1m_before"] = json!(m.load_before);

        if r == 1 {
            check = compare_vectors(&o["check_vectors"], &p["check_vectors"]);
            if check["min_cosine"].as_f64().is_none_or(|c| c < 0.9999) {
                eprintln!(
                    "bench inference: warning: Cairn's and sentence-transformers' embeddings differ: {check}"
                );
            }
        }
        for v in [&mut o, &mut p] {
            if let Some(m) = v.as_object_mut() {
                m.remove("check_vectors");
            }
        }
        ours.push(o);
        peer.push(p);
    }
    let peer_name = format!(
        "sentence-transformers {} (torch {}, CPU)",
        peer[0]["sentence_transformers"].as_str().unwrap_or("?"),
        peer[0]["torch"].as_str().unwrap_or("?")
    );
    let mut figures = Vec::new();
    for b in BATCH_SIZES {
        let rate = |rounds: &[Value]| {
            let mut v: Vec<f64> = rounds
                .iter()
                .map(|r| {
                    r["batches"][b.to_string()]["sentences_per_s"]
                        .as_f64()
                        .unwrap_or(f64::NAN)
                })
                .collect();
            median(&mut v)
        };
        figures.push(figure(
            &format!("embed_batch{b}_t{threads}"),
            "sentences/s",
            rate(&ours),
            Some((&peer_name, rate(&peer))),
            Some(json!({"min_ratio": EMBED_MIN_RATIO})),
        ));
    }
    figures.push(figure(
        &format!("embed_peak_rss_t{threads}"),
        "MiB",
        max(&column(&ours, "process_max_rss_mib")),
        Some((
            "sentence-transformers process (python + torch)",
            max(&column(&peer, "process_max_rss_mib")),
        )),
        None,
    ));
    let detail = json!({
        "cairn": ours,
        "sentence_transformers": peer,
        "embedding_check": check,
    });
    Ok((figures, detail))
}

/// Marks which way is better for a figure's unit.
fn with_direction(mut f: Value) -> Value {
    let lower = matches!(f["unit"].as_str(), Some("ms" | "MiB"));
    f["better"] = json!(if lower { "lower" } else { "higher" });
    f
}

/// Runs the inference benchmark and returns its report.
pub fn run(runs: usize) -> Result<Value> {
    if runs == 0 {
        bail!("the inference benchmark needs at least 1 run");
    }
    let started = Instant::now();
    let mut setup = serde_json::Map::new();
    let timed = |setup: &mut serde_json::Map<String, Value>, name: &str, t: Instant| {
        setup.insert(
            name.into(),
            json!((t.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        );
    };

    let t = Instant::now();
    let store: ModelStore = crate::models::fetch_models(&format!("{CHAT_MODEL},{EMBED_MODEL}"))?;
    let catalog = Catalog::parse(crate::models::catalog::BUILTIN)?;
    let chat = catalog
        .get(CHAT_MODEL)
        .context("chat model not in catalog")?;
    let embed = catalog
        .get(EMBED_MODEL)
        .context("embedding model not in catalog")?;
    let gguf = store
        .file(chat, "weights")
        .context("the chat model has no weights")?;
    let embed_dir = store
        .file(embed, "weights")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .context("the embedding model has no weights")?;
    timed(&mut setup, "fetch_models_s", t);

    let t = Instant::now();
    let bench_bin = llama_bench()?;
    timed(&mut setup, "llama_cpp_s", t);
    let t = Instant::now();
    let python = st_venv()?;
    let st_dir = st_model_dir(&embed_dir)?;
    timed(&mut setup, "sentence_transformers_venv_s", t);
    let t = Instant::now();
    let examples = build_examples()?;
    timed(&mut setup, "cairn_examples_s", t);

    let threads: Vec<usize> = THREADS.into_iter().filter(|t| *t <= cores()).collect();
    let load_before = load1();
    if load_before > 0.5 {
        eprintln!(
            "bench inference: note: load average {load_before:.2} before measuring; other work on this machine makes the figures noisy"
        );
    }
    // Only this run's logs.
    let _ = std::fs::remove_dir_all(logs_dir());
    let measure = Instant::now();
    let mut figures = Vec::new();
    let mut chat_detail = serde_json::Map::new();
    let mut embed_detail = serde_json::Map::new();
    for &th in &threads {
        let (f, d) = chat_at(th, runs, &examples, &bench_bin, &gguf)
            .with_context(|| format!("chat benchmark at {th} thread(s)"))?;
        figures.extend(f);
        chat_detail.insert(format!("t{th}"), d);
    }
    for &th in &threads {
        let (f, d) = embed_at(th, runs, &examples, &python, &embed_dir, &st_dir)
            .with_context(|| format!("embedding benchmark at {th} thread(s)"))?;
        figures.extend(f);
        embed_detail.insert(format!("t{th}"), d);
    }
    timed(&mut setup, "measuring_s", measure);
    timed(&mut setup, "total_s", started);
    let first = chat_detail
        .values()
        .next()
        .map(|d| d["cairn"][0].clone())
        .unwrap_or(Value::Null);
    Ok(json!({
        "area": "inference",
        "peer": format!("llama.cpp llama-bench (vendored in llama-cpp-python {LLAMA_CPP_PYTHON}, built here) and sentence-transformers on torch's CPU path ({ST_REQUIREMENTS})"),
        "runs": runs,
        "machine": {
            "cpu": cpu_model(),
            "cores": cores(),
            "os_kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "kernel_level_detected": first["kernel_level_detected"],
            "kernel_level": first["kernel_level"],
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": load1(),
        },
        "chat": {
            "model": CHAT_MODEL,
            "file": gguf.display().to_string(),
            "prompt_tokens": PROMPT_TOKENS,
            "gen_tokens": GEN_TOKENS,
            "threads": chat_detail,
        },
        "embeddings": {
            "model": EMBED_MODEL,
            "sentences": SENTENCES,
            "batch_sizes": BATCH_SIZES,
            "threads": embed_detail,
        },
        "figures": figures.into_iter().map(with_direction).collect::<Vec<_>>(),
        "durations": setup,
    }))
}

/// Prints the report as "name: ours unit vs peer unit (peer) → ratio (target)" lines.
pub fn print_table(report: &Value) {
    let m = &report["machine"];
    println!(
        "benchmark: {} (peer: {})",
        report["area"].as_str().unwrap_or("inference"),
        report["peer"].as_str().unwrap_or("")
    );
    if m.get("kernel_level").is_some() {
        println!(
            "machine: {}, {} cores, kernels {} (detected {}), load {} → {}, {} runs, medians",
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["kernel_level"].as_str().unwrap_or("?"),
            m["kernel_level_detected"].as_str().unwrap_or("?"),
            m["load_avg_1m_before"],
            m["load_avg_1m_after"],
            report["runs"]
        );
    } else {
        println!(
            "machine: {}, {} cores",
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"]
        );
    }
    for f in report["figures"].as_array().into_iter().flatten() {
        let unit = f["unit"].as_str().unwrap_or("");
        let mut targets = Vec::new();
        if let Some(r) = f["target"]["min_ratio"].as_f64() {
            targets.push(format!("target ≥ {r}×"));
        }
        if let Some(r) = f["target"]["max_ratio"].as_f64() {
            targets.push(format!("target ≤ {r}×"));
        }
        if let Some(v) = f["target"]["min_value"].as_f64() {
            targets.push(format!("target ≥ {v} {unit}"));
        }
        if let Some(v) = f["target"]["max_value"].as_f64() {
            targets.push(format!("target ≤ {v} {unit}"));
        }
        let target = if targets.is_empty() {
            "no target".to_string()
        } else {
            targets.join(", ")
        };
        if f["peer_value"].is_null() {
            println!(
                "{}: {} {unit} ({target}; {} is better)",
                f["name"].as_str().unwrap_or(""),
                f["value"],
                f["better"].as_str().unwrap_or("higher"),
            );
            continue;
        }
        println!(
            "{}: {} {unit} vs {} {unit} ({}) → {}× ({target}; {} is better)",
            f["name"].as_str().unwrap_or(""),
            f["value"],
            f["peer_value"],
            f["peer"].as_str().unwrap_or(""),
            f["ratio"],
            f["better"].as_str().unwrap_or("higher"),
        );
    }
    for (t, d) in report["embeddings"]["threads"]
        .as_object()
        .into_iter()
        .flatten()
    {
        println!(
            "embedding check ({t}): Cairn vs sentence-transformers {}",
            d["embedding_check"]
        );
    }
}

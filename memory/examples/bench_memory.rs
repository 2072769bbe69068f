//! Memory throughput and recall quality, the Cairn side of `cargo xtask bench memory`:
//! `cargo run --release -p cairn-memory --example bench_memory -- --dataset DIR --records N [--json]`.
//!
//! The dataset (written by `--make-dataset`, which then exits; shared with the SQLite baseline):
//! `texts.txt` (one record per line: 12 words of a 5 000-word vocabulary, Zipf-like),
//! `vectors.f32` (N × 384 little-endian f32, 64 clusters plus noise), `queries.txt` and
//! `queries.f32` (200 queries: 3 words and a vector near a random record).
//!
//! Measures, on a fresh redb file in `--work DIR`: single durable inserts (the first 1 000
//! records, one transaction each, as the API does), bulk load (the rest through
//! `Memory::remember_batch`, 500 per transaction), JSON Lines import of up to 10 000 records
//! with their vectors into a second store (ours only: the API's bulk path), the time the indexer then needs to link every vector into the graph
//! (searches scan unlinked vectors exactly meanwhile), hybrid recall latency p50/p99
//! (k = 10, once everything is linked), recall@10 of the HNSW search against exact brute
//! force, and bytes on disk per record.

// The allocator the `cairn` binary ships with (src/main.rs), so these are the appliance's figures.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cairn_memory::{Access, Memory, Mode, NewRecord, Query};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

const DIMS: usize = 384;
const QUERIES: usize = 200;
const SINGLE: usize = 1000;
/// The database file, as the appliance names it.
const DB_FILE: &str = "cairn.redb";

/// Opens memory on a new database in `dir` as the appliance's store does (same cache size;
/// the memory tables created by `migrate`).
fn open_memory(dir: &Path) -> Result<Memory, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(DB_FILE);
    let db = redb::Database::builder()
        .set_cache_size(32 << 20)
        .create(&path)?;
    let txn = db.begin_write()?;
    cairn_memory::migrate(&txn, 0)?;
    txn.commit()?;
    Ok(Memory::open_database(std::sync::Arc::new(db), &path, None)?)
}

struct Args {
    dataset: PathBuf,
    work: PathBuf,
    records: usize,
    make: bool,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        dataset: PathBuf::from("target/bench/memory-dataset"),
        work: std::env::temp_dir().join("cairn-bench-memory"),
        records: 10_000,
        make: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |n: &str| it.next().ok_or(format!("{n} needs a value"));
        match arg.as_str() {
            "--dataset" => a.dataset = value("--dataset")?.into(),
            "--work" => a.work = value("--work")?.into(),
            "--records" => {
                a.records = value("--records")?
                    .parse()
                    .map_err(|_| "--records: not a number".to_string())?
            }
            "--make-dataset" => a.make = true,
            "--json" => a.json = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
    fn zipf_word(&mut self) -> String {
        // Squaring a uniform skews towards small ranks: frequent words, a long tail.
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        format!("w{}", (u * u * 5000.0) as usize)
    }
}

fn write_f32(path: &Path, v: &[f32]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for x in v {
        f.write_all(&x.to_le_bytes())?;
    }
    f.flush()
}

fn read_f32(path: &Path) -> std::io::Result<Vec<f32>> {
    Ok(std::fs::read(path)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn make_dataset(dir: &Path, n: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut r = Rng(0x5eed_1234_abcd_ef01);
    let centres: Vec<Vec<f32>> = (0..64)
        .map(|_| (0..DIMS).map(|_| r.unit()).collect())
        .collect();
    let mut texts = String::new();
    let mut vecs = Vec::with_capacity(n * DIMS);
    for i in 0..n {
        let words: Vec<String> = (0..12).map(|_| r.zipf_word()).collect();
        texts.push_str(&words.join(" "));
        texts.push('\n');
        let c = &centres[i % 64];
        vecs.extend(c.iter().map(|x| x + 0.8 * r.unit()));
    }
    std::fs::write(dir.join("texts.txt"), texts)?;
    write_f32(&dir.join("vectors.f32"), &vecs)?;
    let mut q = String::new();
    let mut qv = Vec::with_capacity(QUERIES * DIMS);
    for _ in 0..QUERIES {
        let target = (r.next() % n as u64) as usize;
        let words: Vec<String> = (0..3).map(|_| r.zipf_word()).collect();
        q.push_str(&words.join(" "));
        q.push('\n');
        qv.extend(
            vecs[target * DIMS..(target + 1) * DIMS]
                .iter()
                .map(|x| x + 0.3 * r.unit()),
        );
    }
    std::fs::write(dir.join("queries.txt"), q)?;
    write_f32(&dir.join("queries.f32"), &qv)?;
    std::fs::write(dir.join("records"), n.to_string())
}

/// Deletes a work directory and waits until the file system has finished with it: freeing a
/// store of 100 000 records (with online discard) otherwise lands in a later `fdatasync` of
/// whatever is being measured, on either side of the comparison.
fn clear(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// JSON Lines import (`POST /api/v1/memory/import`) into a fresh store: up to 10 000 records
/// with their vectors as JSON numbers, in bodies of 5 000 lines written before the clock starts.
fn import_rate(
    a: &Args,
    texts: &[String],
    vecs: &[f32],
) -> Result<f64, Box<dyn std::error::Error>> {
    let n = texts.len().min(10_000);
    let work = a.work.with_extension("import");
    clear(&work);
    let m = open_memory(&work)?;
    let bodies: Vec<String> = (0..n)
        .collect::<Vec<_>>()
        .chunks(5000)
        .map(|c| {
            let mut body = String::new();
            for &i in c {
                body.push_str(
                    &json!({"tier": "episodic", "namespace": "shared", "text": texts[i],
                        "embedding": &vecs[i * DIMS..(i + 1) * DIMS]})
                    .to_string(),
                );
                body.push('\n');
            }
            body
        })
        .collect();
    let t = Instant::now();
    for body in &bodies {
        let r = m.import(&Access::admin(), body)?;
        if !r.rejected.is_empty() || r.stopped.is_some() {
            return Err(format!("import: {:?} {:?}", r.rejected.first(), r.stopped).into());
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64().max(1e-9);
    eprintln!("bench_memory: JSON Lines import: {rate:.0}/s");
    drop(m);
    clear(&work);
    Ok(rate)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse_args()?;
    let have = std::fs::read_to_string(a.dataset.join("records"))
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    if a.make {
        eprintln!("bench_memory: writing the dataset ({} records)", a.records);
        make_dataset(&a.dataset, a.records)?;
        return Ok(());
    }
    if have.is_none_or(|h| h < a.records) {
        return Err(format!(
            "{} holds no dataset of {} records: run with --make-dataset first",
            a.dataset.display(),
            a.records
        )
        .into());
    }
    let texts: Vec<String> = std::fs::read_to_string(a.dataset.join("texts.txt"))?
        .lines()
        .take(a.records)
        .map(String::from)
        .collect();
    let vecs = read_f32(&a.dataset.join("vectors.f32"))?;
    let queries: Vec<String> = std::fs::read_to_string(a.dataset.join("queries.txt"))?
        .lines()
        .map(String::from)
        .collect();
    let qvecs = read_f32(&a.dataset.join("queries.f32"))?;
    let n = texts.len();
    clear(&a.work);
    let m = open_memory(&a.work)?;
    let admin = Access::admin();

    // Single durable inserts.
    let single = SINGLE.min(n);
    let t = Instant::now();
    for i in 0..single {
        m.remember(
            &admin,
            NewRecord {
                tier: Some("episodic".into()),
                text: texts[i].clone(),
                embedding: Some(vecs[i * DIMS..(i + 1) * DIMS].to_vec()),
                ..Default::default()
            },
        )?;
    }
    let single_rate = single as f64 / t.elapsed().as_secs_f64();
    eprintln!("bench_memory: {single} single inserts: {single_rate:.0}/s");
    // Bulk load of the rest through the Rust batch API (500 records per transaction, as the
    // SQLite baseline's transactions), vectors given as f32 like its numpy blobs.
    let t = Instant::now();
    let mut done = single;
    while done < n {
        let end = (done + 500).min(n);
        let batch = (done..end)
            .map(|i| NewRecord {
                tier: Some("episodic".into()),
                text: texts[i].clone(),
                embedding: Some(vecs[i * DIMS..(i + 1) * DIMS].to_vec()),
                ..Default::default()
            })
            .collect();
        m.remember_batch(&admin, batch)?;
        done = end;
    }
    let bulk_secs = t.elapsed().as_secs_f64().max(1e-9);
    let bulk_rate = (n - single) as f64 / bulk_secs;
    eprintln!("bench_memory: bulk load: {bulk_rate:.0}/s");
    let import_rate = import_rate(&a, &texts, &vecs)?;
    // The graph links new vectors in the background (searches scan the unlinked ones
    // exactly meanwhile): how long until every vector is linked, from the end of the load.
    let backlog = m.unindexed();
    let t = Instant::now();
    if !m.wait_indexed(std::time::Duration::from_secs(1800)) {
        return Err("the indexer did not catch up within 30 minutes".into());
    }
    let catch_up = t.elapsed().as_secs_f64();
    eprintln!(
        "bench_memory: {backlog} vectors left to link at the end of the load, linked in {catch_up:.2} s"
    );
    // Recall latency (hybrid: keywords + query vector) and recall@10 (vector half vs exact).
    let mut lat = Vec::new();
    let mut hits = 0usize;
    for (i, q) in queries.iter().enumerate() {
        let qv = qvecs[i * DIMS..(i + 1) * DIMS].to_vec();
        let t = Instant::now();
        let r = m.recall(
            &admin,
            &Query {
                query: q.clone(),
                k: Some(10),
                embedding: Some(qv.clone()),
                ..Default::default()
            },
        )?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(r);
        let approx = m.recall(
            &admin,
            &Query {
                query: q.clone(),
                k: Some(10),
                embedding: Some(qv.clone()),
                mode: Mode::Vector,
                ..Default::default()
            },
        )?;
        let exact = m.exact_neighbours("shared", &qv, 10)?;
        hits += approx
            .results
            .iter()
            .filter(|h| exact.contains(&h.record.id))
            .count();
    }
    let recall_at_10 = hits as f64 / (10 * queries.len()) as f64;
    let p50 = percentile(&mut lat, 0.5);
    let p99 = percentile(&mut lat, 0.99);
    m.flush()?;
    drop(m);
    let bytes = std::fs::metadata(a.work.join(DB_FILE))?.len();
    let report = json!({
        "records": n,
        "single_insert_per_s": single_rate,
        "bulk_insert_per_s": bulk_rate,
        "import_jsonl_per_s": import_rate,
        "unindexed_after_load": backlog,
        "index_catch_up_s": catch_up,
        "indexed_per_s": (n - single) as f64 / (bulk_secs + catch_up),
        "recall_p50_ms": p50,
        "recall_p99_ms": p99,
        "recall_at_10": recall_at_10,
        "bytes_per_record": bytes as f64 / n as f64,
    });
    clear(&a.work);
    if a.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

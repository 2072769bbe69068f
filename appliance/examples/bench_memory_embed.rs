//! Inserts with the embedding computed on the way in, the Cairn side of that figure of
//! `cargo xtask bench memory`:
//! `cargo run --release -p cairn --example bench_memory_embed -- --dataset DIR --models DIR
//! [--records N] [--work DIR]`.
//!
//! Uses the texts of the memory benchmark's dataset (`texts.txt`) and the default embedding
//! model from the model store, on a fresh redb file: `N` single durable inserts through
//! `Memory::remember` with no vector given (the model embeds each text, as `POST
//! /api/v1/memory/records` does), then `N` more through `Memory::import` as JSON Lines without
//! vectors (embedded on the way in, one transaction per import). Prints one JSON object.

// The allocator the `cairn` binary ships with (src/main.rs), so these are the appliance's figures.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cairn::inference::{DeviceChoice, Inference, InferenceOptions, LoadPolicy};
use cairn::memory::{Access, Memory, NewRecord};
use cairn::store::Store;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut dataset, mut models, mut work, mut n) = (
        PathBuf::from("target/bench/memory-dataset"),
        None::<PathBuf>,
        std::env::temp_dir().join("cairn-bench-memory-embed"),
        300usize,
    );
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--dataset" => dataset = value()?.into(),
            "--models" => models = Some(value()?.into()),
            "--work" => work = value()?.into(),
            "--records" => n = value()?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let texts: Vec<String> = std::fs::read_to_string(dataset.join("texts.txt"))?
        .lines()
        .take(2 * n)
        .map(String::from)
        .collect();
    if texts.len() < 2 * n {
        return Err(format!("the dataset has fewer than {} texts", 2 * n).into());
    }
    let inference = Arc::new(Inference::new(&InferenceOptions {
        store: Some(models.ok_or("--models DIR is required")?),
        registry: None,
        device: DeviceChoice::Cpu,
        threads: 0,
        load: LoadPolicy::Boot,
    })?);
    let embedder = cairn::memory::models::local_embedder(&inference)
        .ok_or("no embedding model in --models")?;
    let _ = std::fs::remove_dir_all(&work);
    let store = Store::open(&work)?;
    let m = Memory::open_database(store.database(), store.path(), Some(embedder))?;
    let admin = Access::admin();
    // Warm the model up (first call pages the weights in) outside the timed part.
    m.remember(
        &admin,
        NewRecord {
            tier: Some("episodic".into()),
            text: "warm-up".into(),
            ..Default::default()
        },
    )?;

    let t = Instant::now();
    for text in &texts[..n] {
        m.remember(
            &admin,
            NewRecord {
                tier: Some("episodic".into()),
                text: text.clone(),
                ..Default::default()
            },
        )?;
    }
    let single = n as f64 / t.elapsed().as_secs_f64();

    let mut body = String::new();
    for text in &texts[n..] {
        body.push_str(
            &json!({"tier": "episodic", "namespace": "shared", "text": text}).to_string(),
        );
        body.push('\n');
    }
    let t = Instant::now();
    let r = m.import(&admin, &body)?;
    let bulk = n as f64 / t.elapsed().as_secs_f64();
    if !r.rejected.is_empty() || r.stopped.is_some() {
        return Err(format!("import: {:?} {:?}", r.rejected.first(), r.stopped).into());
    }
    println!(
        "{}",
        json!({"records": n, "single_with_embedding_per_s": single, "bulk_with_embedding_per_s": bulk})
    );
    Ok(())
}

//! Prefill and decode speed of the default chat model on the CPU kernel path:
//! `cargo run --release -p cairn-models --example speed -- [threads]`.

use cairn_models::catalog::Catalog;
use cairn_models::kernels::Pool;
use cairn_models::llama::{Backend, Llama};
use cairn_models::store::{ModelStore, default_dir};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    let cat = Catalog::builtin();
    let m = cat
        .get("smollm2-135m-instruct-q4_1")
        .ok_or("no catalog entry")?;
    let path = ModelStore::new(default_dir())
        .file(m, "weights")
        .ok_or("no weights")?;
    let model = Llama::load(&path, Backend::Cpu(Arc::new(Pool::new(threads))))?;
    let prompt: Vec<u32> = (0..128u32).map(|i| 100 + (i * 37) % 5000).collect();
    for run in 0..3 {
        let mut seq = model.sequence(300);
        let t0 = Instant::now();
        let mut logits = model.forward(&mut seq, &prompt)?;
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..128 {
            let next = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap_or(0);
            logits = model.forward(&mut seq, &[next])?;
        }
        let decode = t1.elapsed().as_secs_f64();
        println!(
            "run {run}: threads {threads}: prefill {:.1} tok/s, decode {:.1} tok/s",
            128.0 / prefill,
            128.0 / decode
        );
    }
    Ok(())
}

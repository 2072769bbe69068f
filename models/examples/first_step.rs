//! Top-10 next-token logits for a prompt of token ids (compare with llama.cpp):
//! `cargo run --release -p cairn-models --example first_step -- 1 4093 198 ...`.

use cairn_models::catalog::Catalog;
use cairn_models::kernels::Pool;
use cairn_models::llama::{Backend, Llama};
use cairn_models::store::{ModelStore, default_dir};
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ids: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let cat = Catalog::builtin();
    let m = cat
        .get("smollm2-135m-instruct-q4_1")
        .ok_or("no catalog entry")?;
    let path = ModelStore::new(default_dir())
        .file(m, "weights")
        .ok_or("no weights")?;
    for backend in [
        Backend::Cpu(Arc::new(Pool::new(2))),
        Backend::Gpu(candle_core::Device::Cpu),
    ] {
        let model = Llama::load(&path, backend.clone())?;
        let mut seq = model.sequence(256);
        let logits = model.forward(&mut seq, &ids)?;
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        let top: Vec<String> = idx[..10]
            .iter()
            .map(|i| format!("{i}:{:.3}", logits[*i]))
            .collect();
        println!(
            "{}: {}",
            if matches!(backend, Backend::Cpu(_)) {
                "kernels"
            } else {
                "candle "
            },
            top.join(" ")
        );
    }
    Ok(())
}

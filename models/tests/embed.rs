//! Embeddings equal sentence-transformers' (fixture computed once with it) and are batched.

use cairn_models::catalog::Catalog;
use cairn_models::embed::Embedder;
use cairn_models::store::{ModelStore, default_dir};

fn embedder() -> Embedder {
    let cat = Catalog::builtin();
    let m = cat.get("all-minilm-l6-v2").expect("catalog entry");
    let store = ModelStore::new(default_dir());
    assert!(store.has(m), "run `cargo xtask fetch-models` first");
    let dir = store
        .file(m, "weights")
        .expect("path")
        .parent()
        .expect("dir")
        .to_path_buf();
    Embedder::load(&dir, &candle_core::Device::Cpu, 256).expect("load")
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
#[ignore = "needs the default models; run with cargo xtask test"]
fn matches_sentence_transformers() {
    let r: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).unwrap();
    let sentences: Vec<&str> = r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let e = embedder();
    assert_eq!(e.dims(), 384);
    // All at once (one padded batch) and one by one must both match the reference.
    let together = e.embed(&sentences).unwrap();
    for (i, s) in sentences.iter().enumerate() {
        let want: Vec<f64> = r["embeddings"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let alone = e.embed(&[s]).unwrap().remove(0);
        for (how, got) in [("batched", &together[i]), ("alone", &alone)] {
            let c = cosine(got, &want);
            assert!(c > 0.999, "{how} {s:?}: cosine {c}");
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{how} {s:?}: norm {norm}");
        }
    }
}

#[test]
#[ignore = "needs the default models; run with cargo xtask test"]
fn bad_input_gets_errors_not_panics() {
    let e = embedder();
    let many = vec!["x"; 1000];
    assert!(e.embed(&many).unwrap_err().to_string().contains("at most"));
    let long = "word ".repeat(5000);
    let v = e.embed(&[&long]).unwrap();
    assert_eq!(v[0].len(), 384, "long inputs are truncated, not refused");
    assert!(e.embed(&[]).unwrap().is_empty());
}

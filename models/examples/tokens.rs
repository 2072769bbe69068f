//! Prints the token ids and pieces of a text under the default chat model's tokenizer:
//! `cargo run -p cairn-models --example tokens -- "text"`.

use cairn_models::catalog::Catalog;
use cairn_models::gguf::GgufFile;
use cairn_models::store::{ModelStore, default_dir};
use cairn_models::tokenizer::GgufTokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let text = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Hello, world!".into());
    let cat = Catalog::builtin();
    let m = cat
        .get("smollm2-135m-instruct-q4_1")
        .ok_or("no catalog entry")?;
    let path = ModelStore::new(default_dir())
        .file(m, "weights")
        .ok_or("no weights")?;
    let f = GgufFile::open(&path)?;
    let t = GgufTokenizer::from_gguf(&f.header)?;
    let ids = t.encode(&text)?;
    for id in &ids {
        println!("{id:>6} {:?}", t.token(*id).unwrap_or("?"));
    }
    println!("decoded: {:?}", t.decode(&ids));
    Ok(())
}

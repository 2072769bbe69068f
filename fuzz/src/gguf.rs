//! A hostile GGUF file: parse its header and build its tokenizer and chat template; errors are
//! fine, panics, out-of-bounds reads and unbounded allocations are not.

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    if let Ok(h) = cairn_models::gguf::Header::parse(data, data.len() as u64) {
        if let Ok(t) = cairn_models::tokenizer::GgufTokenizer::from_gguf(&h) {
            let _ = t.encode("Hello, world! 123 éß 🙂");
        }
        if let Some(src) = h.get("tokenizer.chat_template").and_then(|v| v.as_str())
            && let Ok(c) = cairn_models::chat::ChatTemplate::new(src, "<s>", "</s>")
        {
            let _ = c.render(&[cairn_models::chat::Message::new("user", "hi")], true);
        }
    }
}

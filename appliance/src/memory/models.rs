//! The appliance's local models as memory's embedder and summarizer.

use crate::inference::Inference;
use cairn_memory::{BoxError, Embed, Summarizer};
use cairn_models::chat::Message;
use cairn_models::engine::{Event, Request};
use cairn_models::sampling::SamplingParams;
use std::sync::Arc;

/// The local embedding model (loaded on first use).
pub struct LocalEmbedder {
    /// Where the model lives.
    pub inference: Arc<Inference>,
    /// The embedding model's id.
    pub id: String,
}

impl Embed for LocalEmbedder {
    fn model(&self) -> String {
        self.id.clone()
    }

    fn dims(&self) -> usize {
        self.inference.embedder(&self.id).map_or(0, |e| e.dims())
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BoxError> {
        let e = self.inference.embedder(&self.id)?;
        Ok(e.embed(texts)?)
    }
}

/// The first local embedding model, if the appliance has one.
pub fn local_embedder(inference: &Arc<Inference>) -> Option<Arc<dyn Embed>> {
    let id = inference
        .list()
        .into_iter()
        .find(|m| m.kind == "embedding")?
        .id;
    Some(Arc::new(LocalEmbedder {
        inference: inference.clone(),
        id,
    }))
}

/// The local chat model writing consolidation summaries (greedy, at most 160 tokens).
pub struct LocalSummarizer {
    /// Where the model lives.
    pub inference: Arc<Inference>,
    /// The chat model's id.
    pub id: String,
}

impl Summarizer for LocalSummarizer {
    fn name(&self) -> String {
        self.id.clone()
    }

    fn summarize(&self, texts: &[&str]) -> Result<String, BoxError> {
        let engine = self.inference.chat_engine(&self.id)?;
        let mut notes = String::new();
        for t in texts {
            notes.push_str("- ");
            notes.push_str(t);
            notes.push('\n');
        }
        let rx = engine.submit(Request {
            messages: vec![
                Message::new(
                    "system",
                    "You condense related notes into one short factual summary. \
                         Answer with the summary only, in one or two sentences.",
                ),
                Message::new("user", &format!("Notes:\n{notes}\nSummary:")),
            ],
            sampling: SamplingParams::default(),
            max_tokens: 160,
            stop: Vec::new(),
        })?;
        let mut out = String::new();
        for ev in rx {
            match ev {
                Event::Text(t) => out.push_str(&t),
                Event::Done { .. } => break,
                Event::Error(e) => return Err(e.into()),
                Event::Started { .. } => {}
            }
        }
        Ok(out)
    }
}

/// The default chat model as a summarizer, if the appliance has one.
pub fn local_summarizer(inference: &Arc<Inference>) -> Option<LocalSummarizer> {
    Some(LocalSummarizer {
        inference: inference.clone(),
        id: inference.default_chat()?,
    })
}

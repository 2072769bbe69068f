//! Counters of the inference service, reported in `/api/v1/system` (and charted by the console).

use cairn_models::engine::Usage;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};

/// Inference counters since start.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    completed: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Metrics {
    /// A chat request was accepted.
    pub fn request(&self, _model: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A prompt finished processing (generation starts).
    pub fn first_token(&self) {}

    /// A generation ended.
    pub fn done(&self, u: &Usage) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(u.prompt_tokens as u64, Ordering::Relaxed);
        self.cached_tokens
            .fetch_add(u.cached_tokens as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(u.completion_tokens as u64, Ordering::Relaxed);
    }

    /// The counters as JSON.
    pub fn snapshot(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "requests": g(&self.requests),
            "completed": g(&self.completed),
            "prompt_tokens": g(&self.prompt_tokens),
            "cached_prompt_tokens": g(&self.cached_tokens),
            "completion_tokens": g(&self.completion_tokens),
        })
    }
}

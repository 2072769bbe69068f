//! Calls on the appliance's own models (`crate::inference`).

use super::{ChatCall, Finish, TokenUsage};
use crate::inference::{Inference, InferenceError};
use crate::metrics::Metrics;
use cairn_models::engine::{Event, FinishReason, Request, SubmitError};
use cairn_models::sampling::SamplingParams;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

/// Why a local model could not serve a call.
#[derive(Debug, Clone)]
pub enum LocalFailure {
    /// The model's queue is full.
    Busy {
        /// Message.
        message: String,
        /// Seconds until it is worth trying again.
        retry_after: u64,
    },
    /// The prompt does not fit the context.
    TooLong(String),
    /// The model cannot be loaded.
    Load(String),
    /// The request itself is invalid (bad sampling parameters): no target would take it.
    Invalid(String),
    /// The generation failed.
    Failed(String),
}

impl LocalFailure {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            LocalFailure::Busy { message, .. } => message,
            LocalFailure::TooLong(m)
            | LocalFailure::Load(m)
            | LocalFailure::Invalid(m)
            | LocalFailure::Failed(m) => m,
        }
    }
}

/// The engine's finish reason in the router's terms.
pub fn finish(r: FinishReason) -> Finish {
    match r {
        FinishReason::Length => Finish::Length,
        FinishReason::Stop | FinishReason::Cancelled => Finish::Stop,
    }
}

/// The engine's usage in the router's terms.
pub fn usage(u: &cairn_models::engine::Usage) -> TokenUsage {
    TokenUsage {
        prompt_tokens: u.prompt_tokens as u64,
        completion_tokens: u.completion_tokens as u64,
        cached_tokens: u.cached_tokens as u64,
    }
}

/// Queues a chat on local model `id`; the receiver carries its events.
pub async fn submit(
    inference: &Arc<Inference>,
    metrics: &Metrics,
    id: &str,
    call: &ChatCall,
) -> Result<Receiver<Event>, LocalFailure> {
    let engine = {
        let inf = inference.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || inf.chat_engine(&id))
            .await
            .map_err(|e| LocalFailure::Failed(e.to_string()))?
            .map_err(|e| match e {
                InferenceError::Load { .. } => LocalFailure::Load(e.to_string()),
                other => LocalFailure::Failed(other.to_string()),
            })?
    };
    let sampling = SamplingParams {
        temperature: call.temperature.unwrap_or(1.0),
        top_p: call.top_p.unwrap_or(1.0),
        top_k: call.top_k.unwrap_or(0),
        min_p: call.min_p.unwrap_or(0.0),
        repetition_penalty: call.repetition_penalty.unwrap_or(1.0),
        presence_penalty: call.presence_penalty.unwrap_or(0.0),
        frequency_penalty: call.frequency_penalty.unwrap_or(0.0),
        seed: call.seed,
        ..Default::default()
    };
    let request = Request {
        messages: call.messages.clone(),
        sampling,
        max_tokens: call.max_tokens.unwrap_or(512) as usize,
        stop: call.stop.clone(),
    };
    let rx = engine.submit(request).map_err(|e| match e {
        SubmitError::PromptTooLong { .. } => LocalFailure::TooLong(e.to_string()),
        SubmitError::Invalid(m) => LocalFailure::Invalid(m),
        SubmitError::Overloaded { retry_after, .. } => LocalFailure::Busy {
            message: e.to_string(),
            retry_after: retry_after.as_secs().max(1),
        },
        SubmitError::UnknownModel(_) => LocalFailure::Failed(e.to_string()),
    })?;
    metrics.request(id);
    Ok(rx)
}

/// Runs a chat on local model `id` to its end.
pub async fn chat(
    inference: &Arc<Inference>,
    metrics: &Arc<Metrics>,
    id: &str,
    call: &ChatCall,
) -> Result<(String, Finish, TokenUsage), LocalFailure> {
    let rx = submit(inference, metrics, id, call).await?;
    let metrics = metrics.clone();
    tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        while let Ok(ev) = rx.recv() {
            match ev {
                Event::Started { .. } => metrics.first_token(),
                Event::Text(t) => text.push_str(&t),
                Event::Done { reason, usage: u } => {
                    metrics.done(&u);
                    return Ok((text, finish(reason), usage(&u)));
                }
                Event::Error(e) => return Err(LocalFailure::Failed(e)),
            }
        }
        Err(LocalFailure::Failed(
            "the generation ended unexpectedly".into(),
        ))
    })
    .await
    .map_err(|e| LocalFailure::Failed(e.to_string()))?
}

/// Embeds `inputs` with local model `id`; returns the vectors and the token count.
pub async fn embed(
    inference: &Arc<Inference>,
    id: &str,
    inputs: Vec<String>,
) -> Result<(Vec<Vec<f32>>, u64), LocalFailure> {
    let inf = inference.clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let e = inf.embedder(&id).map_err(|e| match e {
            InferenceError::Load { .. } => LocalFailure::Load(e.to_string()),
            other => LocalFailure::Failed(other.to_string()),
        })?;
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let tokens: usize = e
            .count_tokens(&refs)
            .map_err(|e| LocalFailure::Invalid(e.to_string()))?
            .iter()
            .sum();
        let v = e
            .embed(&refs)
            .map_err(|e| LocalFailure::Invalid(e.to_string()))?;
        Ok((v, tokens as u64))
    })
    .await
    .map_err(|e| LocalFailure::Failed(e.to_string()))?
}

//! The OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions` (JSON or
//! server-sent events), `POST /v1/embeddings`. Errors use OpenAI's body:
//! `{"error": {"message", "type", "param", "code"}}`.
//!
//! Policies (documented in docs/inference.md): a prompt longer than the model's context is
//! refused with 400 `context_length_exceeded` (never silently truncated); `max_tokens` beyond
//! what the context leaves is clamped and the answer ends with `finish_reason: "length"`; a full
//! queue answers 429 with `Retry-After`; a model that cannot be loaded answers 503.

use super::Shared;
use crate::inference::InferenceError;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_models::chat::Message;
use cairn_models::engine::{Event, FinishReason, Request, SubmitError, Usage};
use cairn_models::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
}

/// An OpenAI-style error.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
    message: String,
    retry_after: Option<u64>,
}

impl OpenAiError {
    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            param,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<InferenceError> for OpenAiError {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::Unknown(_) => OpenAiError {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                code: Some("model_not_found"),
                param: Some("model"),
                message: e.to_string(),
                retry_after: None,
            },
            InferenceError::WrongKind { .. } => OpenAiError::invalid(e.to_string(), Some("model")),
            InferenceError::Load { .. } => OpenAiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                code: Some("model_unavailable"),
                param: Some("model"),
                message: e.to_string(),
                retry_after: Some(30),
            },
        }
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, OpenAiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(OpenAiError::invalid(
            "the request body is not valid UTF-8",
            None,
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| OpenAiError::invalid(format!("invalid request: {e}"), None))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{prefix}-{:016x}", h.finish())
}

async fn models(State(s): State<Shared>) -> Json<Value> {
    let data: Vec<Value> = s
        .inference
        .list()
        .into_iter()
        .map(|m| json!({"id": m.id, "object": "model", "created": 0, "owned_by": "cairn", "kind": m.kind, "loaded": m.loaded}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
    tools: Option<Value>,
    logprobs: Option<bool>,
}

fn to_messages(input: Vec<InMessage>) -> Result<Vec<Message>, OpenAiError> {
    if input.is_empty() {
        return Err(OpenAiError::invalid(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    input
        .into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "developer" => "system".to_string(),
                r @ ("system" | "user" | "assistant" | "tool") => r.to_string(),
                other => {
                    return Err(OpenAiError::invalid(
                        format!("unknown role {other:?}"),
                        Some("messages"),
                    ));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            (ty, _) => {
                                return Err(OpenAiError::invalid(
                                    format!(
                                        "content parts of type {} are not supported (text only)",
                                        ty.unwrap_or("?")
                                    ),
                                    Some("messages"),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(Message { role, content })
        })
        .collect()
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

async fn chat(State(s): State<Shared>, body: Bytes) -> Result<Response, OpenAiError> {
    let req: ChatRequest = parse_json(&body)?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(OpenAiError::invalid("only n = 1 is supported", Some("n")));
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(OpenAiError::invalid(
            "tool calls are not supported by on-device models",
            Some("tools"),
        ));
    }
    if req.logprobs == Some(true) {
        return Err(OpenAiError::invalid(
            "logprobs are not supported",
            Some("logprobs"),
        ));
    }
    let max = req.max_completion_tokens.or(req.max_tokens).unwrap_or(512);
    if max < 1 {
        return Err(OpenAiError::invalid(
            "max_tokens must be at least 1",
            Some("max_tokens"),
        ));
    }
    let sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        top_k: req.top_k.unwrap_or(0),
        min_p: req.min_p.unwrap_or(0.0),
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        presence_penalty: req.presence_penalty.unwrap_or(0.0),
        frequency_penalty: req.frequency_penalty.unwrap_or(0.0),
        seed: req.seed,
        ..Default::default()
    };
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) if v.len() <= 4 => v,
        Some(Stop::Many(_)) => {
            return Err(OpenAiError::invalid(
                "at most 4 stop sequences",
                Some("stop"),
            ));
        }
    };
    let model_id = req.model.clone();
    let engine = {
        let s = s.clone();
        let id = model_id.clone();
        tokio::task::spawn_blocking(move || s.inference.chat_engine(&id))
            .await
            .map_err(|e| OpenAiError::invalid(e.to_string(), None))??
    };
    let request = Request {
        messages: to_messages(req.messages)?,
        sampling,
        max_tokens: usize::try_from(max).unwrap_or(usize::MAX),
        stop,
    };
    let rx = engine.submit(request).map_err(|e| match e {
        SubmitError::UnknownModel(_) => OpenAiError::invalid(e.to_string(), Some("model")),
        SubmitError::PromptTooLong { .. } => OpenAiError {
            code: Some("context_length_exceeded"),
            ..OpenAiError::invalid(e.to_string(), Some("messages"))
        },
        SubmitError::Invalid(m) => OpenAiError::invalid(m, None),
        SubmitError::Overloaded { retry_after, .. } => OpenAiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: Some("model_busy"),
            param: None,
            message: e.to_string(),
            retry_after: Some(retry_after.as_secs().max(1)),
        },
    })?;
    let id = new_id("chatcmpl");
    let created = now();
    s.metrics.request(&model_id);
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        // Bridge the engine's blocking channel to the response stream. When the client goes
        // away the stream is dropped, the send below fails, the engine's receiver is dropped
        // with this task, and generation stops at its next token.
        let (tx, out) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(32);
        let metrics = s.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let chunk = |delta: Value, finish: Option<&str>| {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let send = |v: Value| {
                tx.blocking_send(Ok(SseEvent::default().data(v.to_string())))
                    .is_ok()
            };
            if !send(chunk(json!({"role": "assistant", "content": ""}), None)) {
                return;
            }
            while let Ok(ev) = rx.recv() {
                match ev {
                    Event::Started { .. } => metrics.first_token(),
                    Event::Text(t) => {
                        if !send(chunk(json!({"content": t}), None)) {
                            return;
                        }
                    }
                    Event::Done { reason, usage } => {
                        metrics.done(&usage);
                        let _ = send(chunk(json!({}), Some(finish_str(reason))));
                        if include_usage {
                            let _ = send(
                                json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                                "model": model_id, "choices": [], "usage": usage_json(&usage)}),
                            );
                        }
                        let _ = tx.blocking_send(Ok(SseEvent::default().data("[DONE]")));
                        return;
                    }
                    Event::Error(e) => {
                        let _ = send(
                            json!({"error": {"message": e, "type": "server_error", "param": null, "code": null}}),
                        );
                        return;
                    }
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out);
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }
    let metrics = s.metrics.clone();
    let (text, reason, usage) = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        while let Ok(ev) = rx.recv() {
            match ev {
                Event::Started { .. } => metrics.first_token(),
                Event::Text(t) => text.push_str(&t),
                Event::Done { reason, usage } => {
                    metrics.done(&usage);
                    return Ok((text, reason, usage));
                }
                Event::Error(e) => return Err(e),
            }
        }
        Err("the generation ended unexpectedly".to_string())
    })
    .await
    .map_err(|e| OpenAiError::invalid(e.to_string(), None))?
    .map_err(|e| OpenAiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        code: None,
        param: None,
        message: e,
        retry_after: None,
    })?;
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": req.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_str(reason), "logprobs": null}],
        "usage": usage_json(&usage),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbedRequest {
    model: String,
    input: EmbedInput,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

async fn embeddings(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, OpenAiError> {
    let req: EmbedRequest = parse_json(&body)?;
    let texts = match req.input {
        EmbedInput::One(t) => vec![t],
        EmbedInput::Many(v) => v,
    };
    if texts.is_empty() {
        return Err(OpenAiError::invalid(
            "input must not be empty",
            Some("input"),
        ));
    }
    if texts.len() > cairn_models::embed::MAX_BATCH {
        return Err(OpenAiError::invalid(
            format!(
                "at most {} inputs per request",
                cairn_models::embed::MAX_BATCH
            ),
            Some("input"),
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::invalid(
                format!("encoding_format {other:?} (float or base64)"),
                Some("encoding_format"),
            ));
        }
    };
    let s2 = s.clone();
    let id = req.model.clone();
    let (vectors, tokens) = tokio::task::spawn_blocking(move || -> Result<_, OpenAiError> {
        let e = s2.inference.embedder(&id)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens: usize = e
            .count_tokens(&refs)
            .map_err(|e| OpenAiError::invalid(e.to_string(), Some("input")))?
            .iter()
            .sum();
        let v = e
            .embed(&refs)
            .map_err(|e| OpenAiError::invalid(e.to_string(), Some("input")))?;
        Ok((v, tokens))
    })
    .await
    .map_err(|e| OpenAiError::invalid(e.to_string(), None))??;
    if let Some(d) = req.dimensions
        && vectors.first().is_some_and(|v| v.len() != d)
    {
        return Err(OpenAiError::invalid(
            format!("this model produces {} dimensions", vectors[0].len()),
            Some("dimensions"),
        ));
    }
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(
        json!({"object": "list", "data": data, "model": req.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    ))
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn message_content_parts_and_roles() {
        let m: Vec<InMessage> = serde_json::from_value(json!([
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]))
        .unwrap();
        let out = to_messages(m).unwrap();
        assert_eq!(out[0].role, "system");
        assert_eq!(out[1].content, "ab");
        let m: Vec<InMessage> =
            serde_json::from_value(json!([{"role": "user", "content": [{"type": "image_url"}]}]))
                .unwrap();
        assert!(to_messages(m).is_err());
        let m: Vec<InMessage> =
            serde_json::from_value(json!([{"role": "robot", "content": "x"}])).unwrap();
        assert!(to_messages(m).is_err());
    }
}

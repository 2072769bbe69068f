//! The OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions` (JSON or
//! server-sent events), `POST /v1/embeddings`. Errors use OpenAI's body:
//! `{"error": {"message", "type", "param", "code"}}`.
//!
//! Policies (documented in docs/inference.md): a prompt longer than the model's context is
//! refused with 400 `context_length_exceeded` (never silently truncated); `max_tokens` beyond
//! what the context leaves is clamped and the answer ends with `finish_reason: "length"`; a full
//! queue answers 429 with `Retry-After`; a model that cannot be loaded answers 503.
//!
//! Every call goes through the model router (`crate::router`, docs/router.md): `model` may
//! name a local model, `provider/model`, or be left out (or `"auto"`) for the policy to pick;
//! `X-Cairn-Policy` (within the configured policy: a call may narrow it, never widen it),
//! `X-Cairn-Sensitive`, `X-Cairn-Max-Cost-Usd`, `X-Cairn-Max-Latency-Ms` and
//! `X-Cairn-Task-Kind` set the call's routing context; answers carry `X-Cairn-Provider` and
//! `X-Cairn-Model`.

use super::{Routes, Shared};
use crate::router::{CallContext, ChatCall, Policy, RouterError, StreamEvent, TokenUsage};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_models::chat::Message;
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) fn routes() -> Routes {
    Routes::new()
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
        let message = if self.status.is_server_error() {
            super::server_error_message(self.status, self.code.unwrap_or(self.kind), self.message)
        } else {
            self.message
        };
        let mut body = json!({"error": {"message": message, "type": self.kind, "param": self.param, "code": self.code}});
        if self.status.is_server_error()
            && let Some(id) = super::request_id()
        {
            body["error"]["request_id"] = id.into();
        }
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
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
    /// A local model, `provider/model`, or absent / `"auto"`: the router's policy picks.
    #[serde(default)]
    model: Option<String>,
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

fn usage_json(u: &TokenUsage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// The routing context of a `/v1` request: the API caller plus the `X-Cairn-*` headers.
fn call_context(h: &HeaderMap) -> Result<CallContext, OpenAiError> {
    let get = |name: &'static str| -> Result<Option<&str>, OpenAiError> {
        h.get(name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| OpenAiError::invalid(format!("{name} is not text"), Some(name)))
            })
            .transpose()
    };
    let mut ctx = CallContext::default();
    if let Some(p) = get("x-cairn-policy")? {
        ctx.policy = Some(Policy::parse(p).ok_or_else(|| {
            OpenAiError::invalid(
                format!(
                    "unknown policy {p:?} (one of {})",
                    Policy::ALL.map(Policy::name).join(", ")
                ),
                Some("x-cairn-policy"),
            )
        })?);
    }
    if let Some(v) = get("x-cairn-sensitive")? {
        ctx.sensitive = match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => {
                return Err(OpenAiError::invalid(
                    "X-Cairn-Sensitive must be true or false",
                    Some("x-cairn-sensitive"),
                ));
            }
        };
    }
    if let Some(v) = get("x-cairn-max-cost-usd")? {
        ctx.max_cost_usd = Some(
            v.parse::<f64>()
                .ok()
                .filter(|c| c.is_finite() && *c >= 0.0)
                .ok_or_else(|| {
                    OpenAiError::invalid(
                        "X-Cairn-Max-Cost-Usd must be a number >= 0",
                        Some("x-cairn-max-cost-usd"),
                    )
                })?,
        );
    }
    if let Some(v) = get("x-cairn-max-latency-ms")? {
        ctx.max_latency_ms = Some(v.parse::<u64>().ok().filter(|m| *m > 0).ok_or_else(|| {
            OpenAiError::invalid(
                "X-Cairn-Max-Latency-Ms must be a whole number > 0",
                Some("x-cairn-max-latency-ms"),
            )
        })?);
    }
    if let Some(v) = get("x-cairn-task-kind")? {
        if v.is_empty() || v.len() > 64 {
            return Err(OpenAiError::invalid(
                "X-Cairn-Task-Kind must be 1-64 characters",
                Some("x-cairn-task-kind"),
            ));
        }
        ctx.task_kind = Some(v.to_string());
    }
    Ok(ctx)
}

impl From<RouterError> for OpenAiError {
    fn from(e: RouterError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match e.status() {
            400 | 404 => "invalid_request_error",
            402 => "insufficient_quota",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "server_error",
        };
        OpenAiError {
            status,
            kind,
            code: e.code(),
            param: e.param(),
            retry_after: e.retry_after(),
            message: e.to_string(),
        }
    }
}

/// Names the target that answered in the response's headers.
fn with_target(mut r: Response, provider: &str, model: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(provider) {
        r.headers_mut().insert("x-cairn-provider", v);
    }
    if let Ok(v) = HeaderValue::from_str(model) {
        r.headers_mut().insert("x-cairn-model", v);
    }
    r
}

async fn chat(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let ctx = call_context(&headers)?;
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
    let call = ChatCall {
        model: req.model,
        messages: to_messages(req.messages)?,
        max_tokens: Some(u32::try_from(max).unwrap_or(u32::MAX)),
        temperature: req.temperature,
        top_p: req.top_p,
        stop,
        seed: req.seed,
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
    };
    let id = new_id("chatcmpl");
    let created = now();
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let mut stream = s.router.chat_stream(&ctx, call).await?;
        let model_id = stream.model.clone();
        let provider = stream.provider.clone();
        // Bridge the router's stream to the response. When the client goes away the response
        // stream is dropped, the send below fails, the router's stream is dropped with this
        // task, and the local engine (or the remote connection) stops.
        let (tx, out) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(32);
        let model_for_chunks = model_id.clone();
        tokio::spawn(async move {
            let model_id = model_for_chunks;
            let chunk = |delta: Value, finish: Option<&str>| {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let data = |v: Value| Ok(SseEvent::default().data(v.to_string()));
            if tx
                .send(data(chunk(
                    json!({"role": "assistant", "content": ""}),
                    None,
                )))
                .await
                .is_err()
            {
                return;
            }
            while let Some(ev) = stream.next().await {
                match ev {
                    StreamEvent::Delta(t) => {
                        if tx
                            .send(data(chunk(json!({"content": t}), None)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    StreamEvent::Done(o) => {
                        let _ = tx
                            .send(data(chunk(json!({}), Some(o.finish_reason.as_str()))))
                            .await;
                        if include_usage {
                            let _ = tx
                                .send(data(json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                                  "model": model_id, "choices": [], "usage": usage_json(&o.usage)})))
                                .await;
                        }
                        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                        return;
                    }
                    StreamEvent::Error(e) => {
                        let _ = tx
                            .send(data(json!({"error": {"message": e, "type": "server_error", "param": null, "code": null}})))
                            .await;
                        return;
                    }
                }
            }
            // The router's stream ended without its final event (its task failed): say so
            // rather than cutting the answer off silently.
            let _ = tx
                .send(data(json!({"error": {"message": format!("{model_id}: the stream ended unexpectedly"),
                                            "type": "server_error", "param": null, "code": null}})))
                .await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out);
        let r = Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response();
        return Ok(with_target(r, &provider, &model_id));
    }
    let o = s.router.chat(&ctx, call).await?;
    let r = Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": o.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": o.text}, "finish_reason": o.finish_reason.as_str(), "logprobs": null}],
        "usage": usage_json(&o.usage),
    }))
    .into_response();
    Ok(with_target(r, &o.provider, &o.model))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbedRequest {
    #[serde(default)]
    model: Option<String>,
    input: EmbedInput,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

async fn embeddings(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let ctx = call_context(&headers)?;
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
    let o = s.router.embed(&ctx, req.model, texts).await?;
    if let Some(d) = req.dimensions
        && o.vectors.first().is_some_and(|v| v.len() != d)
    {
        return Err(OpenAiError::invalid(
            format!("this model produces {} dimensions", o.vectors[0].len()),
            Some("dimensions"),
        ));
    }
    let data: Vec<Value> = o
        .vectors
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
    let tokens = o.prompt_tokens;
    let r = Json(
        json!({"object": "list", "data": data, "model": o.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
    .into_response();
    Ok(with_target(r, &o.provider, &o.model))
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

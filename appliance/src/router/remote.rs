//! Remote providers on the wire: OpenAI-compatible (`/chat/completions`, `/embeddings`) and
//! Anthropic's Messages API (`/v1/messages`), JSON and server-sent events, over rustls with the
//! public web roots, an optional extra CA and an optional certificate pin, or plain `http://`.

use super::config::{ProviderConfig, ProviderKind};
use super::{ChatCall, Finish};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The Anthropic API version the router speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Largest answer read from a provider: a JSON body, or a whole event stream.
pub const MAX_BODY: usize = 64 << 20;
/// Largest line, and largest event, of a provider's event stream.
pub const MAX_SSE_LINE: usize = 1 << 20;
/// Most of an error answer's body read for its message.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Why an attempt on a provider failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// No answer in time.
    Timeout,
    /// Connection refused, reset or closed early.
    Connect,
    /// The TLS handshake failed (certificate, pin).
    Tls,
    /// HTTP 5xx or 408.
    Server,
    /// HTTP 429.
    RateLimited,
    /// Another HTTP 4xx: the provider refused this call.
    Client,
    /// A 2xx answer that is not what the protocol says.
    Malformed,
}

impl FailKind {
    /// Worth another attempt on the same provider.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            FailKind::Timeout
                | FailKind::Connect
                | FailKind::Server
                | FailKind::RateLimited
                | FailKind::Malformed
        )
    }

    /// Counts against the provider's circuit breaker.
    pub fn unhealthy(self) -> bool {
        matches!(
            self,
            FailKind::Timeout
                | FailKind::Connect
                | FailKind::Tls
                | FailKind::Server
                | FailKind::Malformed
        )
    }
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Its class.
    pub kind: FailKind,
    /// What happened, for the caller.
    pub message: String,
    /// The provider's `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn new(kind: FailKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Parses PEM text into certificates (at least one).
pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// The TLS client configuration of a provider.
pub fn tls_config(cfg: &ProviderConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = &cfg.ca_pem {
        for c in parse_pem_certs(pem)? {
            roots
                .add(c)
                .map_err(|e| format!("ca_pem: unusable certificate: {e}"))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match &cfg.tls_sha256 {
        Some(pin) => {
            let pin = hex::decode(pin).map_err(|e| format!("tls_sha256: {e}"))?;
            // With an extra CA the chain must verify as well; a pin alone is the whole
            // trust decision (self-signed appliance certificates).
            let chain: Option<Arc<dyn ServerCertVerifier>> = match &cfg.ca_pem {
                Some(_) => Some(
                    rustls::client::WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::tls::PinVerifier::pinned(
                    pin,
                    chain,
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth()
        }
        None => builder.with_root_certificates(roots).with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The HTTP client of a provider.
pub fn client(cfg: &ProviderConfig) -> Result<reqwest::Client, String> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(cfg)?)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        // A redirect would carry the prompt and the key elsewhere: a 3xx is an error.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| format!("HTTP client: {}", crate::tls::error_chain(&e)))
}

fn classify(e: &reqwest::Error) -> Failure {
    let text = crate::tls::error_chain(e);
    let kind = if e.is_timeout() {
        FailKind::Timeout
    } else if text.contains("certificate") || text.contains("pin mismatch") || text.contains("tls")
    {
        FailKind::Tls
    } else if e.is_decode() {
        FailKind::Malformed
    } else {
        FailKind::Connect
    };
    let what = match kind {
        FailKind::Timeout => "timed out",
        FailKind::Tls => "TLS failed",
        FailKind::Malformed => "malformed answer",
        _ => "connection failed",
    };
    Failure::new(kind, format!("{what}: {text}"))
}

/// The parsed `Retry-After` of an answer (seconds; HTTP dates are not used by model APIs).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// Why a body could not be read whole.
enum BodyError {
    /// More than the cap.
    TooLarge,
    /// The deadline passed.
    Timeout,
    /// The connection failed.
    Failed(Failure),
}

/// Reads `resp`'s body chunk by chunk until `deadline`, refusing it as soon as it passes `cap`
/// bytes (a declared `Content-Length` over the cap is refused before reading).
async fn read_capped(
    resp: &mut reqwest::Response,
    cap: usize,
    deadline: tokio::time::Instant,
    out: &mut Vec<u8>,
) -> Result<(), BodyError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge);
    }
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(Err(e)) => return Err(BodyError::Failed(classify(&e))),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(c))) => {
                if out.len() + c.len() > cap {
                    let room = cap - out.len();
                    out.extend_from_slice(&c[..room]);
                    return Err(BodyError::TooLarge);
                }
                out.extend_from_slice(&c);
            }
        }
    }
}

/// Turns a non-2xx answer into a failure with the provider's message.
async fn status_failure(mut resp: reqwest::Response) -> Failure {
    let status = resp.status();
    let ra = retry_after(resp.headers());
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| crate::text::clip(l, 200).to_string());
    // Only the start of an error body is read: enough for its message.
    let mut body = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let _ = read_capped(&mut resp, MAX_ERROR_BODY, deadline, &mut body).await;
    let msg = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .map(|m| crate::text::clip(m, 1000).to_string())
        })
        .unwrap_or_else(|| crate::text::clip(&String::from_utf8_lossy(&body), 300).to_string());
    let kind = match status.as_u16() {
        429 => FailKind::RateLimited,
        408 | 500..=599 => FailKind::Server,
        _ => FailKind::Client,
    };
    let msg = if status.is_redirection() {
        format!(
            "a redirect{}, which is not followed (set base_url to the final address)",
            location.map(|l| format!(" to {l:?}")).unwrap_or_default()
        )
    } else {
        msg.trim().to_string()
    };
    Failure {
        kind,
        message: format!("HTTP {}: {msg}", status.as_u16()),
        retry_after: ra,
    }
}

/// A provider and its key, ready for calls.
pub struct Endpoint<'a> {
    /// Configuration.
    pub config: &'a ProviderConfig,
    /// API key, decrypted.
    pub key: Option<&'a str>,
    /// HTTP client.
    pub client: &'a reqwest::Client,
}

/// A finished remote chat.
#[derive(Debug, Clone, Default)]
pub struct RemoteChat {
    /// Text.
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
    /// Prompt tokens the provider reported.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens the provider reported.
    pub completion_tokens: Option<u64>,
}

fn anthropic_body(model: &str, call: &ChatCall, stream: bool) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<(String, String)> = Vec::new();
    for m in &call.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => {
                system.push(m.content.clone());
                continue;
            }
            "assistant" => "assistant",
            _ => "user",
        };
        match messages.last_mut() {
            Some((r, c)) if r == role => {
                c.push_str("\n\n");
                c.push_str(&m.content);
            }
            _ => messages.push((role.to_string(), m.content.clone())),
        }
    }
    let mut body = json!({
        "model": model,
        "max_tokens": call.max_tokens.unwrap_or(1024),
        "messages": messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect::<Vec<_>>(),
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = call.temperature {
        body["temperature"] = json!(t.clamp(0.0, 1.0));
    }
    if let Some(p) = call.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(k) = call.top_k.filter(|k| *k > 0) {
        body["top_k"] = json!(k);
    }
    if !call.stop.is_empty() {
        body["stop_sequences"] = json!(call.stop);
    }
    if stream {
        body["stream"] = json!(true);
    }
    body
}

fn openai_body(model: &str, call: &ChatCall, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": call.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
    });
    if let Some(n) = call.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(t) = call.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = call.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(p) = call.presence_penalty {
        body["presence_penalty"] = json!(p);
    }
    if let Some(p) = call.frequency_penalty {
        body["frequency_penalty"] = json!(p);
    }
    if let Some(s) = call.seed {
        body["seed"] = json!(s);
    }
    if !call.stop.is_empty() {
        body["stop"] = json!(call.stop);
    }
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn request(ep: &Endpoint<'_>, path: &str, body: &Value) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", ep.config.base_url);
    let mut rb = ep
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    match ep.config.kind {
        ProviderKind::Openai => {
            if let Some(k) = ep.key {
                rb = rb.bearer_auth(k);
            }
        }
        ProviderKind::Anthropic => {
            if let Some(k) = ep.key {
                rb = rb.header("x-api-key", k);
            }
            rb = rb.header("anthropic-version", ANTHROPIC_VERSION);
        }
    }
    rb
}

fn chat_path(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "/chat/completions",
        ProviderKind::Anthropic => "/v1/messages",
    }
}

fn finish_of(s: Option<&str>) -> Finish {
    match s {
        Some("length" | "max_tokens") => Finish::Length,
        _ => Finish::Stop,
    }
}

async fn read_json(mut resp: reqwest::Response, timeout: Duration) -> Result<Value, Failure> {
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    match read_capped(&mut resp, MAX_BODY, deadline, &mut bytes).await {
        Ok(()) => {}
        Err(BodyError::Timeout) => {
            return Err(Failure::new(
                FailKind::Timeout,
                "timed out reading the answer",
            ));
        }
        Err(BodyError::TooLarge) => {
            return Err(Failure::new(
                FailKind::Malformed,
                format!("answer too large (over {} MiB)", MAX_BODY >> 20),
            ));
        }
        Err(BodyError::Failed(f)) => return Err(f),
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let start = String::from_utf8_lossy(&bytes[..bytes.len().min(240)]);
        Failure::new(
            FailKind::Malformed,
            format!(
                "malformed answer ({e}): {:?}",
                crate::text::clip(&start, 120)
            ),
        )
    })
}

async fn send(
    rb: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<reqwest::Response, Failure> {
    let resp = match tokio::time::timeout(timeout, rb.send()).await {
        Err(_) => {
            return Err(Failure::new(
                FailKind::Timeout,
                format!("timed out after {} ms", timeout.as_millis()),
            ));
        }
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok(r)) => r,
    };
    if !resp.status().is_success() {
        return Err(status_failure(resp).await);
    }
    Ok(resp)
}

fn malformed(what: &str, v: &Value) -> Failure {
    let mut s = v.to_string();
    crate::text::clip_owned(&mut s, 200);
    Failure::new(
        FailKind::Malformed,
        format!("malformed answer: {what} missing in {s}"),
    )
}

/// One non-streaming chat call.
pub async fn chat(
    ep: &Endpoint<'_>,
    model: &str,
    call: &ChatCall,
    timeout: Duration,
) -> Result<RemoteChat, Failure> {
    let started = tokio::time::Instant::now();
    let body = match ep.config.kind {
        ProviderKind::Openai => openai_body(model, call, false),
        ProviderKind::Anthropic => anthropic_body(model, call, false),
    };
    let resp = send(request(ep, chat_path(ep.config.kind), &body), timeout).await?;
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    let v = read_json(resp, left).await?;
    match ep.config.kind {
        ProviderKind::Openai => {
            let choice = v
                .pointer("/choices/0")
                .ok_or_else(|| malformed("choices[0]", &v))?;
            let text = choice
                .pointer("/message/content")
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .ok_or_else(|| malformed("choices[0].message.content", &v))?;
            Ok(RemoteChat {
                text,
                finish: finish_of(choice.get("finish_reason").and_then(Value::as_str)),
                prompt_tokens: v.pointer("/usage/prompt_tokens").and_then(Value::as_u64),
                completion_tokens: v
                    .pointer("/usage/completion_tokens")
                    .and_then(Value::as_u64),
            })
        }
        ProviderKind::Anthropic => {
            let blocks = v
                .get("content")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed("content", &v))?;
            let text: String = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            Ok(RemoteChat {
                text,
                finish: finish_of(v.get("stop_reason").and_then(Value::as_str)),
                prompt_tokens: v.pointer("/usage/input_tokens").and_then(Value::as_u64),
                completion_tokens: v.pointer("/usage/output_tokens").and_then(Value::as_u64),
            })
        }
    }
}

/// Starts a streaming chat call: returns once the provider answered 2xx.
pub async fn open_stream(
    ep: &Endpoint<'_>,
    model: &str,
    call: &ChatCall,
    timeout: Duration,
) -> Result<reqwest::Response, Failure> {
    let body = match ep.config.kind {
        ProviderKind::Openai => openai_body(model, call, true),
        ProviderKind::Anthropic => anthropic_body(model, call, true),
    };
    send(request(ep, chat_path(ep.config.kind), &body), timeout).await
}

/// Incremental parser of `text/event-stream`; a line or an event over [`MAX_SSE_LINE`] bytes
/// is refused as soon as it passes the cap.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` known to hold no line end.
    scanned: usize,
    event: String,
    data: String,
}

impl SseParser {
    /// Feeds bytes; returns the complete events (name, data) they finish.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<(String, String)>, Failure> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(i) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            let i = self.scanned + i;
            self.scanned = 0;
            if i > MAX_SSE_LINE {
                return Err(too_large("stream line"));
            }
            let mut line: Vec<u8> = self.buf.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    out.push((
                        std::mem::take(&mut self.event),
                        std::mem::take(&mut self.data),
                    ));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.event = value.to_string(),
                "data" => {
                    if self.data.len() + value.len() >= MAX_SSE_LINE {
                        return Err(too_large("stream event"));
                    }
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        if self.buf.len() > MAX_SSE_LINE {
            return Err(too_large("stream line"));
        }
        self.scanned = self.buf.len();
        Ok(out)
    }
}

fn too_large(what: &str) -> Failure {
    Failure::new(
        FailKind::Malformed,
        format!("{what} too large (over {} KiB)", MAX_SSE_LINE >> 10),
    )
}

/// What one stream event means.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// More text.
    Text(String),
    /// Accounting or finish information.
    Meta {
        /// Why it ended.
        finish: Option<Finish>,
        /// Prompt tokens.
        prompt_tokens: Option<u64>,
        /// Completion tokens.
        completion_tokens: Option<u64>,
    },
    /// The stream ended normally.
    End,
    /// Nothing of interest (ping, block start/stop).
    Skip,
}

/// Interprets one server-sent event of a provider's stream.
pub fn interpret(kind: ProviderKind, event: &str, data: &str) -> Result<Vec<Piece>, Failure> {
    if kind == ProviderKind::Openai && data.trim() == "[DONE]" {
        return Ok(vec![Piece::End]);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| {
        Failure::new(
            FailKind::Malformed,
            format!(
                "malformed stream event ({e}): {:?}",
                crate::text::clip(data, 120)
            ),
        )
    })?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(Failure::new(
            FailKind::Server,
            format!("the provider's stream failed: {msg}"),
        ));
    }
    let mut out = Vec::new();
    match kind {
        ProviderKind::Openai => {
            if let Some(t) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                && !t.is_empty()
            {
                out.push(Piece::Text(t.to_string()));
            }
            let finish = v
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
                .map(|f| finish_of(Some(f)));
            let prompt_tokens = v.pointer("/usage/prompt_tokens").and_then(Value::as_u64);
            let completion_tokens = v
                .pointer("/usage/completion_tokens")
                .and_then(Value::as_u64);
            if finish.is_some() || prompt_tokens.is_some() {
                out.push(Piece::Meta {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                });
            }
            if v.get("choices").is_none() && v.get("usage").is_none() {
                return Err(malformed("choices", &v));
            }
        }
        ProviderKind::Anthropic => {
            let ty = v.get("type").and_then(Value::as_str).unwrap_or(event);
            match ty {
                "message_start" => out.push(Piece::Meta {
                    finish: None,
                    prompt_tokens: v
                        .pointer("/message/usage/input_tokens")
                        .and_then(Value::as_u64),
                    completion_tokens: v
                        .pointer("/message/usage/output_tokens")
                        .and_then(Value::as_u64),
                }),
                "content_block_delta" => {
                    if v.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta") {
                        let t = v
                            .pointer("/delta/text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| malformed("delta.text", &v))?;
                        out.push(Piece::Text(t.to_string()));
                    }
                }
                "message_delta" => out.push(Piece::Meta {
                    finish: v
                        .pointer("/delta/stop_reason")
                        .and_then(Value::as_str)
                        .map(|f| finish_of(Some(f))),
                    prompt_tokens: v.pointer("/usage/input_tokens").and_then(Value::as_u64),
                    completion_tokens: v.pointer("/usage/output_tokens").and_then(Value::as_u64),
                }),
                "message_stop" => out.push(Piece::End),
                "ping" | "content_block_start" | "content_block_stop" => out.push(Piece::Skip),
                other => {
                    return Err(Failure::new(
                        FailKind::Malformed,
                        format!("unknown stream event type {other:?}"),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Reads a streaming answer to its end, sending each text piece to `tx` (a closed channel ends
/// the call: nobody listens any more). `idle` bounds the wait for each chunk.
pub async fn pump(
    kind: ProviderKind,
    mut resp: reqwest::Response,
    idle: Duration,
    tx: &tokio::sync::mpsc::Sender<super::StreamEvent>,
) -> Result<RemoteChat, Failure> {
    let mut parser = SseParser::default();
    let mut out = RemoteChat::default();
    let mut ended = false;
    let mut received = 0usize;
    while !ended {
        let chunk = match tokio::time::timeout(idle, resp.chunk()).await {
            Err(_) => {
                return Err(Failure::new(
                    FailKind::Timeout,
                    format!("the stream stalled for {} ms", idle.as_millis()),
                ));
            }
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        received += chunk.len();
        if received > MAX_BODY {
            return Err(Failure::new(
                FailKind::Malformed,
                format!("stream too large (over {} MiB)", MAX_BODY >> 20),
            ));
        }
        for (event, data) in parser.push(&chunk)? {
            for piece in interpret(kind, &event, &data)? {
                match piece {
                    Piece::Text(t) => {
                        out.text.push_str(&t);
                        if tx.send(super::StreamEvent::Delta(t)).await.is_err() {
                            return Ok(out);
                        }
                    }
                    Piece::Meta {
                        finish,
                        prompt_tokens,
                        completion_tokens,
                    } => {
                        if let Some(f) = finish {
                            out.finish = f;
                        }
                        out.prompt_tokens = prompt_tokens.or(out.prompt_tokens);
                        out.completion_tokens = completion_tokens.or(out.completion_tokens);
                    }
                    Piece::End => ended = true,
                    Piece::Skip => {}
                }
            }
        }
    }
    if !ended {
        return Err(Failure::new(
            FailKind::Connect,
            "the stream ended before its final event",
        ));
    }
    Ok(out)
}

/// One embeddings call (OpenAI-compatible providers).
pub async fn embed(
    ep: &Endpoint<'_>,
    model: &str,
    inputs: &[String],
    timeout: Duration,
) -> Result<(Vec<Vec<f32>>, Option<u64>), Failure> {
    if ep.config.kind != ProviderKind::Openai {
        return Err(Failure::new(
            FailKind::Client,
            "this provider has no embeddings API",
        ));
    }
    let started = tokio::time::Instant::now();
    let body = json!({"model": model, "input": inputs});
    let resp = send(request(ep, "/embeddings", &body), timeout).await?;
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    let v = read_json(resp, left).await?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("data", &v))?;
    let mut rows: Vec<(u64, Vec<f32>)> = Vec::with_capacity(data.len());
    for (i, d) in data.iter().enumerate() {
        let idx = d.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
        let emb = d
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("data[].embedding (float)", &v))?;
        let vec: Option<Vec<f32>> = emb.iter().map(|x| x.as_f64().map(|f| f as f32)).collect();
        rows.push((idx, vec.ok_or_else(|| malformed("numeric embedding", &v))?));
    }
    if rows.len() != inputs.len() {
        return Err(Failure::new(
            FailKind::Malformed,
            format!("{} embeddings for {} inputs", rows.len(), inputs.len()),
        ));
    }
    rows.sort_by_key(|r| r.0);
    Ok((
        rows.into_iter().map(|r| r.1).collect(),
        v.pointer("/usage/prompt_tokens").and_then(Value::as_u64),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::ChatMessage;

    #[test]
    fn sse_parser_handles_split_lines_crlf_comments_and_multiline_data() {
        let mut p = SseParser::default();
        assert!(
            p.push(b"event: ping\r\ndata: {\"type\"")
                .unwrap()
                .is_empty()
        );
        let ev = p
            .push(b": \"ping\"}\r\n\r\n: comment\n\ndata: a\ndata: b\n\n")
            .unwrap();
        assert_eq!(
            ev,
            vec![
                ("ping".to_string(), "{\"type\": \"ping\"}".to_string()),
                (String::new(), "a\nb".to_string())
            ]
        );
    }

    #[test]
    fn sse_lines_and_events_over_the_cap_are_refused_before_they_end() {
        let mut p = SseParser::default();
        p.push(b"data: ").unwrap();
        let chunk = vec![b'a'; 64 << 10];
        let mut err = None;
        for _ in 0..(MAX_SSE_LINE / chunk.len() + 2) {
            if let Err(e) = p.push(&chunk) {
                err = Some(e);
                break;
            }
        }
        let e = err.expect("a line over the cap is refused without its end");
        assert!(e.message.contains("stream line too large"), "{}", e.message);
        // Many short data lines of one event.
        let mut p = SseParser::default();
        let line = format!("data: {}\n", "b".repeat(1000));
        let e = (0..2000)
            .find_map(|_| p.push(line.as_bytes()).err())
            .expect("an event over the cap is refused");
        assert!(
            e.message.contains("stream event too large"),
            "{}",
            e.message
        );
    }

    #[test]
    fn error_messages_quote_answers_without_cutting_a_character() {
        let v = json!({"x": "€".repeat(65)});
        assert!(!v.to_string().is_char_boundary(200));
        let f = malformed("choices", &v);
        assert_eq!(f.kind, FailKind::Malformed);
        assert!(f.message.contains("€€€"), "{}", f.message);
        let data = format!("{{\"xy\":\"{}", "€".repeat(65));
        assert!(!data.is_char_boundary(120));
        let e = interpret(ProviderKind::Openai, "", &data).unwrap_err();
        assert_eq!(e.kind, FailKind::Malformed);
    }

    #[test]
    fn anthropic_request_maps_system_roles_stops_and_max_tokens() {
        let call = ChatCall {
            messages: vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "a"),
                ChatMessage::new("tool", "b"),
                ChatMessage::new("assistant", "c"),
            ],
            max_tokens: Some(7),
            temperature: Some(1.7),
            stop: vec!["END".into()],
            ..Default::default()
        };
        let b = anthropic_body("claude", &call, true);
        assert_eq!(b["system"], "be brief");
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["temperature"], 1.0);
        assert_eq!(b["stop_sequences"][0], "END");
        assert_eq!(b["stream"], true);
        let msgs = b["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0]["content"], "a\n\nb");
        assert_eq!(msgs[1]["role"], "assistant");
    }

    #[test]
    fn stream_events_of_both_protocols() {
        let a = ProviderKind::Anthropic;
        assert_eq!(
            interpret(a, "content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#).unwrap(),
            vec![Piece::Text("Hi".into())]
        );
        assert_eq!(
            interpret(a, "message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":3}}"#).unwrap(),
            vec![Piece::Meta { finish: Some(Finish::Length), prompt_tokens: None, completion_tokens: Some(3) }]
        );
        let e = interpret(
            a,
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("Overloaded"));
        assert_eq!(
            interpret(a, "x", "{nope").unwrap_err().kind,
            FailKind::Malformed
        );
        let o = ProviderKind::Openai;
        assert_eq!(interpret(o, "", "[DONE]").unwrap(), vec![Piece::End]);
        assert_eq!(
            interpret(
                o,
                "",
                r#"{"choices":[{"delta":{"content":"x"},"finish_reason":null}]}"#
            )
            .unwrap(),
            vec![Piece::Text("x".into())]
        );
    }

    /// Found by `fuzz/fuzz_targets/provider_answer.rs`: the excerpt of a bad event or answer
    /// in the error message was cut inside a multi-byte character and panicked.
    #[test]
    fn malformed_answers_with_multibyte_text_fail_without_panicking() {
        let event = format!("{}{}", "x".repeat(119), "\u{FFFD}".repeat(10));
        let e = interpret(ProviderKind::Openai, "", &event).unwrap_err();
        assert_eq!(e.kind, FailKind::Malformed);
        assert!(e.message.contains(&"x".repeat(119)), "{}", e.message);
        let answer = serde_json::json!({ "x": "\u{2603}".repeat(100) });
        let e = malformed("choices[0]", &answer);
        assert_eq!(e.kind, FailKind::Malformed);
        assert!(e.message.contains('\u{2603}'), "{}", e.message);
    }
}

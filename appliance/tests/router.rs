//! The model router against real servers on 127.0.0.1: a hosted `cairn serve` routing to a
//! fake Anthropic server and to fault-injecting OpenAI-compatible servers, and (with the
//! default models) to a second `cairn serve` over TLS with a certificate pin.

use axum::body::Bytes;
use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;
use support::Server;

/// Starts `cairn serve` with model store `models` on a fresh data directory, onboarded.
async fn serve(tag: &str, models: &Path) -> (Server, String) {
    let s = Server::start_temp(
        tag,
        &[
            "--threads",
            "2",
            "--device",
            "cpu",
            "--models",
            models.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    let url = s.url.clone();
    (s, url)
}

async fn send(rb: reqwest::RequestBuilder) -> (u16, HeaderMap, Value, String) {
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, v, text)
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": true}, "max_tokens": 50,
           "stop": ["END"], "temperature": 0,
           "messages": [{"role": "system", "content": "be terse"}, {"role": "user", "content": "Say hello."}]})
}

/// The text, finish reason and usage of an OpenAI SSE body.
fn parse_sse(body: &str) -> (String, Option<String>, Option<Value>, bool) {
    let (mut text, mut finish, mut usage, mut done) = (String::new(), None, None, false);
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("chunk is JSON");
        assert!(v.get("error").is_none(), "stream error: {v}");
        if let Some(t) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            text.push_str(t);
        }
        if let Some(f) = v
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            finish = Some(f.to_string());
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
    }
    (text, finish, usage, done)
}

// ---------------------------------------------------------------------------------------
// Fake providers.

#[derive(Default)]
struct Fake {
    hits: Mutex<HashMap<String, usize>>,
    last_anthropic: Mutex<Option<(HeaderMap, Value)>>,
}

impl Fake {
    fn hit(&self, mode: &str) -> usize {
        let mut h = self.hits.lock().unwrap();
        let n = h.entry(mode.to_string()).or_default();
        *n += 1;
        *n
    }
    fn hits(&self, mode: &str) -> usize {
        self.hits.lock().unwrap().get(mode).copied().unwrap_or(0)
    }
}

fn openai_ok(model: &str) -> Response {
    axum::Json(json!({"id": "x", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}}))
    .into_response()
}

async fn openai_mode(
    State(f): State<Arc<Fake>>,
    AxPath(mode): AxPath<String>,
    body: Bytes,
) -> Response {
    let n = f.hit(&mode);
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req["model"].as_str().unwrap_or("?").to_string();
    match mode.as_str() {
        "flaky" if n <= 2 => (StatusCode::INTERNAL_SERVER_ERROR, "upstream hiccup").into_response(),
        "limited" if n == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            axum::Json(json!({"error": {"message": "slow down"}})),
        )
            .into_response(),
        "dead" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "database on fire"}})),
        )
            .into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            openai_ok(&model)
        }
        "malformed" => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "this is not json",
        )
            .into_response(),
        // 65 "€" and no `choices`: a message quoting the answer cut at a byte count would cut
        // a character in two.
        "euro" if req["stream"] == json!(true) => (
            [("content-type", "text/event-stream")],
            format!("data: {}\n\n", json!({"x": "€".repeat(65)})),
        )
            .into_response(),
        "euro" => axum::Json(json!({"x": "€".repeat(65)})).into_response(),
        // A redirect that keeps the method and body: the prompt would go to "target".
        "redirect" => (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", "/target/v1/chat/completions")],
        )
            .into_response(),
        // An answer larger than any cap that then never ends: a JSON body of 65 MiB, or one
        // SSE line of 2 MiB.
        "huge" if req["stream"] == json!(true) => endless(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"",
            2 << 20,
            "text/event-stream",
        ),
        "huge" => endless(
            b"{\"choices\":[{\"message\":{\"content\":\"",
            65 << 20,
            "application/json",
        ),
        _ => openai_ok(&model),
    }
}

/// A body of `prefix` and `total` bytes of `a` sent in 1 MiB chunks, then held open.
fn endless(prefix: &'static [u8], total: usize, content_type: &'static str) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from_static(prefix))).await.is_err() {
            return;
        }
        let chunk = Bytes::from(vec![b'a'; 1 << 20]);
        let mut sent = 0;
        while sent < total {
            if tx.send(Ok(chunk.clone())).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
        // Held open until the reader goes away (or a minute passes).
        let _ = tokio::time::timeout(Duration::from_secs(60), tx.closed()).await;
    });
    (
        [("content-type", content_type)],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

async fn anthropic(State(f): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    f.hit("anthropic");
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    *f.last_anthropic.lock().unwrap() = Some((headers.clone(), req.clone()));
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some("ant-key") {
        return (StatusCode::UNAUTHORIZED,
                axum::Json(json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})))
            .into_response();
    }
    if headers.get("anthropic-version").is_none() {
        return (StatusCode::BAD_REQUEST, "anthropic-version missing").into_response();
    }
    if req["stream"] == json!(true) {
        let events = [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "content": [], "model": req["model"], "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from Claude"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null}, "usage": {"output_tokens": 5}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        let body: String = events
            .iter()
            .map(|(e, d)| format!("event: {e}\r\ndata: {d}\r\n\r\n"))
            .collect();
        return ([("content-type", "text/event-stream")], body).into_response();
    }
    axum::Json(json!({"id": "msg_1", "type": "message", "role": "assistant", "model": req["model"],
        "content": [{"type": "text", "text": "Hello from Claude"}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 5}}))
    .into_response()
}

/// Starts the fake providers; returns their base URL and a port that resets connections.
async fn fakes() -> (String, u16, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = axum::Router::new()
        .route("/anthropic/v1/messages", axum::routing::post(anthropic))
        .route("/anthropic2/v1/messages", axum::routing::post(anthropic))
        .route(
            "/{mode}/v1/chat/completions",
            axum::routing::post(openai_mode),
        )
        .with_state(fake.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    // A server that reads the request and closes the connection without answering.
    let reset = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reset_port = reset.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in reset.incoming().flatten() {
            let mut c = c;
            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            drop(c);
        }
    });
    (base, reset_port, fake)
}

fn provider(name: &str, url: String, price: f64, extra: Value) -> Value {
    let mut p = json!({"name": name, "kind": "openai", "base_url": url,
                       "models": [{"id": "m", "input_per_1k_usd": price, "output_per_1k_usd": price}]});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_wire_format_faults_fallbacks_breakers_and_budgets() {
    let empty = tempfile::tempdir().unwrap();
    let (sa, a) = serve("faults", empty.path()).await;
    let (fbase, reset_port, fake) = fakes().await;
    let c = sa.client();
    let post = |path: &str, body: Value| c.post(format!("{a}{path}")).json(&body);

    // Providers, through the REST API (the key is write-only).
    let ant = json!({"name": "ant", "kind": "anthropic", "base_url": format!("{fbase}/anthropic"), "key": "ant-key",
                     "models": [{"id": "claude-test", "input_per_1k_usd": 3.0, "output_per_1k_usd": 15.0}]});
    let (st, _, v, text) = send(post("/api/v1/router/providers", ant)).await;
    assert_eq!(st, 201, "{text}");
    assert_eq!(v["key_set"], true);
    assert!(!text.contains("ant-key"), "the key came back: {text}");
    let list = [
        provider(
            "antbad",
            format!("{fbase}/anthropic"),
            1.0,
            json!({"kind": "anthropic", "key": "wrong"}),
        ),
        provider(
            "flaky",
            format!("{fbase}/flaky/v1"),
            1.0,
            json!({"max_retries": 2}),
        ),
        provider(
            "limited",
            format!("{fbase}/limited/v1"),
            1.0,
            json!({"max_retries": 1}),
        ),
        provider(
            "dead",
            format!("{fbase}/dead/v1"),
            0.0,
            json!({"max_retries": 0, "breaker_failures": 2, "breaker_cooldown_ms": 600000}),
        ),
        provider(
            "slow",
            format!("{fbase}/slow/v1"),
            0.0,
            json!({"max_retries": 0, "timeout_ms": 300}),
        ),
        provider(
            "malformed",
            format!("{fbase}/malformed/v1"),
            0.0,
            json!({"max_retries": 1}),
        ),
        provider(
            "reset",
            format!("http://127.0.0.1:{reset_port}/v1"),
            0.0,
            json!({"max_retries": 0}),
        ),
        provider("ok", format!("{fbase}/ok/v1"), 1.0, json!({})),
    ];
    for p in list {
        let (st, _, _, text) = send(post("/api/v1/router/providers", p)).await;
        assert_eq!(st, 201, "{text}");
    }
    let (st, _, v, _) = send(post(
        "/api/v1/router/providers",
        json!({"name": "x", "kind": "openai",
        "base_url": "gopher://x", "models": [{"id": "m"}]}),
    ))
    .await;
    assert_eq!(st, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("base_url"),
        "{v}"
    );
    let (st, _, v, _) = send(c.get(format!("{a}/api/v1/router/providers/ant"))).await;
    assert_eq!(st, 200);
    assert_eq!(v["key_set"], true);
    assert!(v.get("key").is_none(), "{v}");

    // The default policy is local-only: a remote model is refused before any call.
    let (st, _, v, _) = send(post(
        "/v1/chat/completions",
        chat_body("ant/claude-test", false),
    ))
    .await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "policy_forbids");
    assert_eq!(fake.hits("anthropic"), 0);
    let (st, _, _, text) = send(
        c.put(format!("{a}/api/v1/router/settings"))
            .json(&json!({"policy": "cheapest"})),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    // Sensitive data never leaves, whatever the policy.
    let (st, _, _, _) = send(
        post("/v1/chat/completions", chat_body("ant/claude-test", false))
            .header("x-cairn-sensitive", "true"),
    )
    .await;
    assert_eq!(st, 403);

    // Anthropic, JSON: system prompt, stop sequences, max_tokens and headers on the wire.
    let (st, h, v, text) = send(post(
        "/v1/chat/completions",
        chat_body("ant/claude-test", false),
    ))
    .await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from Claude");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["model"], "ant/claude-test");
    assert_eq!(h["x-cairn-provider"], "ant");
    let (hd, body) = fake.last_anthropic.lock().unwrap().clone().unwrap();
    assert_eq!(hd["anthropic-version"], "2023-06-01");
    assert_eq!(body["system"], "be terse");
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(body["model"], "claude-test");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Say hello."}])
    );

    // Anthropic, streamed: deltas, finish reason and usage come through as OpenAI chunks.
    let (st, _, _, text) = send(post(
        "/v1/chat/completions",
        chat_body("ant/claude-test", true),
    ))
    .await;
    assert_eq!(st, 200, "{text}");
    let (t, finish, usage, done) = parse_sse(&text);
    assert_eq!(t, "Hello from Claude");
    assert_eq!(finish.as_deref(), Some("length"));
    assert_eq!(usage.unwrap()["completion_tokens"], 5);
    assert!(done);

    // A refused key is the provider's 401, named, not retried.
    let (st, _, v, _) = send(post("/v1/chat/completions", chat_body("antbad/m", false))).await;
    assert_eq!(st, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("antbad/m") && msg.contains("HTTP 401") && msg.contains("invalid x-api-key"),
        "{msg}"
    );

    // Two 500s, then an answer: retried with backoff.
    let (st, _, v, _) = send(post("/v1/chat/completions", chat_body("flaky/m", false))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(fake.hits("flaky"), 3);
    // 429 with Retry-After: waited for, then answered.
    let (st, _, v, _) = send(post("/v1/chat/completions", chat_body("limited/m", false))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(fake.hits("limited"), 2);
    // A timeout, a reset connection, a malformed body: clear errors naming the target.
    let (st, _, v, _) = send(post("/v1/chat/completions", chat_body("slow/m", false))).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{v}"
    );
    let (st, _, v, _) = send(post("/v1/chat/completions", chat_body("reset/m", false))).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reset/m: connection failed"),
        "{v}"
    );
    let (st, _, v, _) = send(post(
        "/v1/chat/completions",
        chat_body("malformed/m", false),
    ))
    .await;
    assert_eq!(st, 502, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{v}"
    );
    assert_eq!(
        fake.hits("malformed"),
        2,
        "a malformed answer is retried once"
    );

    // A provider failing every call: its breaker opens after two failures, and the third
    // call is refused without reaching it.
    for _ in 0..2 {
        let (st, _, v, _) = send(post("/v1/chat/completions", chat_body("dead/m", false))).await;
        assert_eq!(st, 502, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("database on fire"),
            "{v}"
        );
    }
    let (_, _, v, _) = send(c.get(format!("{a}/api/v1/router/breakers"))).await;
    let dead = v["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["provider"] == "dead")
        .unwrap()
        .clone();
    assert_eq!(dead["state"], "open", "{v}");
    let (st, h, v, _) = send(post("/v1/chat/completions", chat_body("dead/m", false))).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{v}"
    );
    assert!(h.contains_key("retry-after"));
    assert_eq!(fake.hits("dead"), 2);

    // No model named: the policy picks, and a failing target falls back to the next one.
    // Learned scores put "malformed" first under best-quality, then "ok".
    for (m, s) in [("malformed/m", 1.0), ("ok/m", 0.8)] {
        let (st, _, _, text) = send(post(
            "/api/v1/router/scores",
            json!({"model": m, "task_kind": "chat", "score": s}),
        ))
        .await;
        assert_eq!(st, 200, "{text}");
    }
    let (st, h, v, _) = send(
        post("/v1/chat/completions", chat_body("auto", false))
            .header("x-cairn-policy", "best-quality")
            .header("x-cairn-task-kind", "chat"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(h["x-cairn-model"], "ok/m", "{v}");
    assert_eq!(fake.hits("malformed"), 4, "malformed was tried first");

    // Every eligible target failing: one error naming each (the free ones only, by cost).
    let (st, _, v, _) = send(
        post("/v1/chat/completions", chat_body("auto", false)).header("x-cairn-max-cost-usd", "0"),
    )
    .await;
    assert_eq!(st, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    for t in ["every target failed", "slow/m", "reset/m", "malformed/m"] {
        assert!(msg.contains(t), "{t} missing in {msg}");
    }

    // A daily cost budget already spent refuses the call before it is made: 402.
    let before = fake.hits("anthropic");
    let (st, _, _, _) = send(
        c.put(format!("{a}/api/v1/router/settings"))
            .json(&json!({"budgets": {"global": {"cost_per_day_usd": 0.05}}})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _, v, _) = send(post(
        "/v1/chat/completions",
        chat_body("ant/claude-test", false),
    ))
    .await;
    assert_eq!(st, 402, "{v}");
    assert_eq!(v["error"]["code"], "budget_exceeded");
    assert_eq!(fake.hits("anthropic"), before);
    let (st, _, v, _) = send(
        c.put(format!("{a}/api/v1/router/settings"))
            .json(&json!({"budgets": {"global": {"cost_per_day_usd": -1}}})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budgets.global.cost_per_day_usd"),
        "{v}"
    );

    // The appliance itself kept serving, and accounted what happened.
    let (st, _, v, _) = send(c.get(format!("{a}/healthz"))).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
    let (st, _, v, _) = send(c.get(format!("{a}/api/v1/router/usage"))).await;
    assert_eq!(st, 200, "{v}");
    let ant = &v["by_provider"]["ant"];
    assert_eq!(ant["calls"], 2, "{v}");
    // Two calls of 12 prompt and 5 completion tokens at $3 / $15 per 1k.
    assert!(
        (ant["cost_usd"].as_f64().unwrap() - 2.0 * 0.111).abs() < 1e-9,
        "{v}"
    );
    assert!(
        v["by_provider"]["dead"]["failures"].as_u64().unwrap() >= 2,
        "{v}"
    );
}

/// The ledger's usage of one provider.
async fn provider_usage(c: &reqwest::Client, a: &str, name: &str) -> Value {
    let (st, _, v, _) = send(c.get(format!("{a}/api/v1/router/usage"))).await;
    assert_eq!(st, 200, "{v}");
    v["by_provider"][name].clone()
}

/// A hosted appliance with the fake providers `ant` (Anthropic, keyed), `ok`, `euro`,
/// `redirect` and `huge` (no retries), and its admin client.
async fn hostile(tag: &str) -> (Server, String, String, Arc<Fake>, tempfile::TempDir) {
    let empty = tempfile::tempdir().unwrap();
    let (sa, a) = serve(tag, empty.path()).await;
    let (fbase, _, fake) = fakes().await;
    let mut list = vec![ant_provider(&fbase, "anthropic", json!({"key": "ant-key"}))];
    for (name, timeout) in [
        ("ok", 60_000),
        ("euro", 60_000),
        ("redirect", 60_000),
        ("huge", 10_000),
    ] {
        list.push(provider(
            name,
            format!("{fbase}/{name}/v1"),
            0.0,
            json!({"max_retries": 0, "timeout_ms": timeout}),
        ));
    }
    for p in list {
        let (st, _, _, text) = send(
            sa.client()
                .post(format!("{a}/api/v1/router/providers"))
                .json(&p),
        )
        .await;
        assert_eq!(st, 201, "{text}");
    }
    (sa, a, fbase, fake, empty)
}

fn ant_provider(fbase: &str, path: &str, extra: Value) -> Value {
    let mut p = json!({"name": "ant", "kind": "anthropic", "base_url": format!("{fbase}/{path}"),
                       "models": [{"id": "claude-test"}]});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

async fn set_policy(c: &reqwest::Client, a: &str, policy: &str) {
    let (st, _, _, text) = send(
        c.put(format!("{a}/api/v1/router/settings"))
            .json(&json!({"policy": policy})),
    )
    .await;
    assert_eq!(st, 200, "{text}");
}

/// The configured policy is a ceiling a call can only narrow: under local-only (the default)
/// a call asking for a policy that allows remote targets is refused before any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cannot_widen_the_configured_policy() {
    let (sa, a, _, fake, _dir) = hostile("ceiling").await;
    let c = sa.client();
    let chat = |model: &str, policy: Option<&str>| {
        let rb = c
            .post(format!("{a}/v1/chat/completions"))
            .json(&chat_body(model, false));
        match policy {
            Some(p) => rb.header("x-cairn-policy", p),
            None => rb,
        }
    };
    for (model, policy) in [
        ("ok/m", "cheapest"),
        ("auto", "best-quality"),
        ("ok/m", "prefer-local"),
    ] {
        let (st, _, v, _) = send(chat(model, Some(policy))).await;
        assert_eq!(st, 403, "{policy}: {v}");
        assert_eq!(v["error"]["code"], "policy_forbids", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(policy) && msg.contains("local-only"), "{msg}");
    }
    // Embeddings too.
    let (st, _, v, _) = send(
        c.post(format!("{a}/v1/embeddings"))
            .header("x-cairn-policy", "cheapest")
            .json(&json!({"model": "ok/m", "input": "x"})),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(fake.hits("ok"), 0, "a refused call reached the provider");
    // Under prefer-local, a call may narrow (local-only) but not widen (fastest).
    set_policy(&c, &a, "prefer-local").await;
    let (st, _, v, _) = send(chat("ok/m", Some("fastest"))).await;
    assert_eq!(st, 403, "{v}");
    let (st, _, v, _) = send(chat("ok/m", Some("local-only"))).await;
    assert_eq!(st, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("local-only allows no remote call"),
        "{v}"
    );
    assert_eq!(fake.hits("ok"), 0);
    let (st, _, v, _) = send(chat("ok/m", Some("prefer-local"))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(fake.hits("ok"), 1);
}

/// 65 "€" without `choices` used to panic the router (an error message cut inside a
/// character): now a clear 502, accounted as a failure, and the appliance keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multibyte_malformed_answer_is_a_clear_error() {
    let (sa, a, _, _, _dir) = hostile("euro").await;
    let c = sa.client();
    set_policy(&c, &a, "cheapest").await;
    let post = |body: Value| c.post(format!("{a}/v1/chat/completions")).json(&body);
    let (st, _, v, text) = send(post(chat_body("euro/m", false))).await;
    assert_eq!(st, 502, "{text}");
    assert_eq!(v["error"]["code"], "upstream_failed", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("euro/m") && msg.contains("malformed"), "{msg}");
    // Streamed: the stream ends with an error event naming it.
    let (st, _, _, text) = send(post(chat_body("euro/m", true))).await;
    assert_eq!(st, 200, "{text}");
    assert!(
        text.contains("\"error\"") && text.contains("malformed"),
        "{text}"
    );
    let u = provider_usage(&c, &a, "euro").await;
    assert_eq!((&u["failures"], &u["calls"]), (&json!(2), &json!(0)), "{u}");
    let (st, _, v, _) = send(post(chat_body("ok/m", false))).await;
    assert_eq!(st, 200, "{v}");
    let (st, _, v, _) = send(c.get(format!("{a}/healthz"))).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
}

/// A redirect is an error, never followed: the prompt does not reach its target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_redirect_is_not_followed() {
    let (sa, a, _, fake, _dir) = hostile("redirect").await;
    let c = sa.client();
    set_policy(&c, &a, "cheapest").await;
    let (st, _, v, _) = send(
        c.post(format!("{a}/v1/chat/completions"))
            .json(&chat_body("redirect/m", false)),
    )
    .await;
    assert_eq!(st, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("HTTP 307") && msg.contains("redirect"),
        "{msg}"
    );
    assert_eq!(fake.hits("redirect"), 1);
    assert_eq!(fake.hits("target"), 0, "the redirect was followed");
}

/// An answer larger than the cap is cut with an error as soon as it passes the cap, not
/// buffered whole (the fake never ends it: buffering would wait for the time limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_are_cut_at_the_cap() {
    let (sa, a, _, _, _dir) = hostile("huge").await;
    let c = sa.client();
    set_policy(&c, &a, "cheapest").await;
    let post = |body: Value| c.post(format!("{a}/v1/chat/completions")).json(&body);
    let (st, _, v, text) = send(post(chat_body("huge/m", false))).await;
    assert_eq!(st, 502, "{text}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("too large"), "{msg}");
    let (st, _, _, text) = send(post(chat_body("huge/m", true))).await;
    assert_eq!(st, 200, "{text}");
    assert!(
        text.contains("\"error\"") && text.contains("too large"),
        "{}",
        &text[..text.len().min(300)]
    );
}

/// A changed base_url (or pin, or CA) drops the stored key unless the update sets it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_does_not_follow_a_changed_address() {
    let (sa, a, fbase, fake, _dir) = hostile("rekey").await;
    let c = sa.client();
    set_policy(&c, &a, "cheapest").await;
    let put = |path: &str, extra: Value| {
        c.put(format!("{a}/api/v1/router/providers/ant"))
            .json(&ant_provider(&fbase, path, extra))
    };
    let (st, _, v, _) = send(put("anthropic", json!({"timeout_ms": 30000}))).await;
    assert_eq!((st, &v["key_set"]), (200, &json!(true)), "{v}");
    let (st, _, v, _) = send(put("anthropic2", json!({}))).await;
    assert_eq!((st, &v["key_set"]), (200, &json!(false)), "{v}");
    let (_, _, v, _) = send(c.get(format!("{a}/api/v1/router/providers/ant"))).await;
    assert_eq!(v["key_set"], false, "{v}");
    let (st, _, v, _) = send(
        c.post(format!("{a}/v1/chat/completions"))
            .json(&chat_body("ant/claude-test", false)),
    )
    .await;
    assert_eq!(st, 502, "{v}");
    let (hd, _) = fake.last_anthropic.lock().unwrap().clone().unwrap();
    assert!(
        hd.get("x-api-key").is_none(),
        "the key followed the new address"
    );
    let (st, _, v, _) = send(put("anthropic2", json!({"key": "ant-key"}))).await;
    assert_eq!((st, &v["key_set"]), (200, &json!(true)), "{v}");
    let (st, _, v, _) = send(put("anthropic2", json!({"tls_sha256": "00".repeat(32)}))).await;
    assert_eq!((st, &v["key_set"]), (200, &json!(false)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the default models; run with cargo xtask test"]
async fn a_second_cairn_over_pinned_tls() {
    use cairn_models::catalog::Catalog;
    use cairn_models::store::{ModelStore, default_dir};
    const CHAT: &str = "smollm2-135m-instruct-q4_1";
    const EMBED: &str = "all-minilm-l6-v2";
    let store = ModelStore::new(default_dir());
    let cat = Catalog::builtin();
    for id in [CHAT, EMBED] {
        assert!(
            store.has(cat.get(id).expect("catalog entry")),
            "run `cargo xtask fetch-models` first ({})",
            store.root().display()
        );
    }
    let (sb, b) = serve("remote", &default_dir()).await;
    let (sa, a) = serve("router", &default_dir()).await;
    let c = sa.client();
    let (_, _, sys, _) = send(sb.client().get(format!("{b}/api/v1/system"))).await;
    // A's key for B is an operator API token made on B.
    let (st, _, tok, text) = send(
        sb.client()
            .post(format!("{b}/api/v1/auth/tokens"))
            .json(&json!({"name": "router-a", "scope": "operator"})),
    )
    .await;
    assert_eq!(st, 201, "{text}");
    let peer_key = tok["token"].as_str().expect("token").to_string();
    let pin = sys["tls_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    // The calls below choose prefer-local and cheapest: the configured policy must allow them.
    let (st, _, _, text) = send(
        c.put(format!("{a}/api/v1/router/settings"))
            .json(&json!({"policy": "cheapest"})),
    )
    .await;
    assert_eq!(st, 200, "{text}");

    let peer = json!({"name": "peer", "kind": "openai", "base_url": format!("{b}/v1"), "tls_sha256": pin,
        "key": peer_key,
        "models": [{"id": CHAT, "input_per_1k_usd": 0.5, "output_per_1k_usd": 1.0},
                   {"id": EMBED, "kind": "embedding", "input_per_1k_usd": 0.1}]});
    let (st, _, _, text) = send(c.post(format!("{a}/api/v1/router/providers")).json(&peer)).await;
    assert_eq!(st, 201, "{text}");
    assert!(!text.contains(&peer_key));
    let badpin = json!({"name": "badpin", "kind": "openai", "base_url": format!("{b}/v1"), "tls_sha256": "00".repeat(32),
        "max_retries": 0, "models": [{"id": CHAT}]});
    let (st, _, _, text) = send(c.post(format!("{a}/api/v1/router/providers")).json(&badpin)).await;
    assert_eq!(st, 201, "{text}");

    let ask = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream, "stream_options": {"include_usage": true}, "max_tokens": 6,
               "temperature": 0, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    };
    let chat = |model: &str, stream: bool| {
        c.post(format!("{a}/v1/chat/completions"))
            .header("x-cairn-policy", "prefer-local")
            .json(&ask(model, stream))
    };
    // The local model on A, then the same model on B through the router: greedy decoding
    // gives the same answer both ways.
    let (st, h, local, text) = send(chat(CHAT, false)).await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(h["x-cairn-provider"], "local");
    let (st, h, remote, text) = send(chat(&format!("peer/{CHAT}"), false)).await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(h["x-cairn-provider"], "peer");
    assert_eq!(remote["model"], format!("peer/{CHAT}"));
    assert_eq!(
        remote["choices"][0]["message"]["content"],
        local["choices"][0]["message"]["content"]
    );
    assert_eq!(
        remote["usage"]["completion_tokens"],
        local["usage"]["completion_tokens"]
    );
    // Streamed through the peer.
    let (st, _, _, text) = send(chat(&format!("peer/{CHAT}"), true)).await;
    assert_eq!(st, 200, "{text}");
    let (t, finish, usage, done) = parse_sse(&text);
    assert_eq!(
        t,
        local["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(finish.is_some() && usage.is_some() && done, "{text}");
    // Embeddings through the peer.
    let (st, _, v, text) = send(
        c.post(format!("{a}/v1/embeddings"))
            .header("x-cairn-policy", "cheapest")
            .json(&json!({"model": format!("peer/{EMBED}"), "input": ["a cat", "a dog"]})),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 384);
    // A wrong pin: the handshake is refused, and the error says why.
    let (st, _, v, _) = send(chat(&format!("badpin/{CHAT}"), false)).await;
    assert_eq!(st, 502, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pin mismatch"),
        "{v}"
    );
    // Sensitive data stays on A.
    let (st, _, _, _) =
        send(chat(&format!("peer/{CHAT}"), false).header("x-cairn-sensitive", "true")).await;
    assert_eq!(st, 403);
    // Usage: the peer's calls cost money, the local one did not.
    let (_, _, v, _) = send(c.get(format!("{a}/api/v1/router/usage"))).await;
    assert_eq!(v["by_provider"]["peer"]["calls"], 3, "{v}");
    assert!(
        v["by_provider"]["peer"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert_eq!(v["by_provider"]["local"]["cost_usd"], 0.0, "{v}");
}

/// The Rust interface agents use: a streamed call, accounted to the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stream_through_the_library_interface() {
    use cairn::router::{
        CallContext, Caller, ChatCall, ChatMessage, Policy, Router, RouterOptions, StreamEvent,
    };
    let (fbase, _, fake) = fakes().await;
    let dir = tempfile::tempdir().unwrap();
    let store = cairn::store::Store::open(dir.path()).unwrap();
    let inference = cairn::inference::Inference::new(&cairn::inference::InferenceOptions {
        store: None,
        registry: None,
        device: cairn::inference::DeviceChoice::Cpu,
        threads: 1,
        load: cairn::inference::LoadPolicy::Lazy,
    })
    .unwrap();
    let router = Router::open(RouterOptions {
        inference: Arc::new(inference),
        metrics: Arc::new(cairn::metrics::Metrics::default()),
        db: Some((store.database(), store.path().to_path_buf())),
        data_dir: dir.path().to_path_buf(),
    });
    let ant = json!({"name": "ant", "kind": "anthropic", "base_url": format!("{fbase}/anthropic"), "key": "ant-key",
                     "models": [{"id": "claude-test", "input_per_1k_usd": 3.0, "output_per_1k_usd": 15.0}]});
    router
        .create_provider(cairn::router::config::parse_provider(ant, None).unwrap())
        .unwrap();
    // The configured policy is the ceiling of every call's own.
    let mut settings = router.settings();
    settings.policy = Policy::BestQuality;
    router.set_settings(settings).unwrap();
    let ctx = CallContext {
        caller: Caller::Agent {
            name: "planner".into(),
            run: Some("run-1".into()),
        },
        policy: Some(Policy::Cheapest),
        task_kind: Some("plan".into()),
        ..Default::default()
    };
    let call = ChatCall {
        model: None,
        messages: vec![
            ChatMessage::new("system", "be terse"),
            ChatMessage::new("user", "Say hello."),
        ],
        max_tokens: Some(20),
        ..Default::default()
    };
    let mut s = router.chat_stream(&ctx, call).await.expect("stream");
    assert_eq!(
        (s.provider.as_str(), s.model.as_str()),
        ("ant", "ant/claude-test")
    );
    let (mut text, mut done) = (String::new(), None);
    while let Some(ev) = s.next().await {
        match ev {
            StreamEvent::Delta(t) => text.push_str(&t),
            StreamEvent::Done(o) => done = Some(o),
            StreamEvent::Error(e) => panic!("{e}"),
        }
    }
    let o = done.expect("a final outcome");
    assert_eq!(text, "Hello from Claude");
    assert_eq!(o.text, text);
    assert_eq!((o.usage.prompt_tokens, o.usage.completion_tokens), (12, 5));
    assert!((o.cost_usd - 0.111).abs() < 1e-9);
    assert_eq!(fake.hits("anthropic"), 1);
    let usage = router.usage(1).unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].caller, "agent:planner");
    assert_eq!(usage[0].usage.calls, 1);
    router.record_score("ant/claude-test", "plan", 0.9);
    assert_eq!(router.scores()[0].n, 1);
}

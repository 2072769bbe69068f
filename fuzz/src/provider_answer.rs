//! What a remote model provider answers, through the router's real client code: the first
//! byte picks the protocol (OpenAI-compatible or Anthropic), the call (chat, streamed chat,
//! embeddings, or the SSE parser alone) and the HTTP status; the rest is the answer's body,
//! served from a loopback socket (streams in chunks of a size the second byte picks). Errors
//! are the provider's fault and fine; panics and hangs are not.
use cairn::router::remote::{self, Endpoint, SseParser};
use cairn::router::{ChatCall, ChatMessage, config::ProviderConfig, config::ProviderKind};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The raw HTTP answer the loopback provider sends next.
static ANSWER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Provider {
    rt: tokio::runtime::Runtime,
    port: u16,
}

/// Reads one request (head and `Content-Length` body) and sends [`ANSWER`].
async fn serve(mut tcp: tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = tcp.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let answer = ANSWER.lock().expect("answer").clone();
    let _ = tcp.write_all(&answer).await;
    let _ = tcp.shutdown().await;
}

fn provider() -> &'static Provider {
    static P: OnceLock<Provider> = OnceLock::new();
    P.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("address").port();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp));
            }
        });
        Provider { rt, port }
    })
}

fn config(kind: &str, port: u16) -> ProviderConfig {
    serde_json::from_value(serde_json::json!({
        "name": "fuzz",
        "kind": kind,
        "base_url": format!("http://127.0.0.1:{port}"),
        "models": [{"id": "m"}, {"id": "e", "kind": "embedding"}],
    }))
    .expect("provider config")
}

/// The SSE parser alone: however the bytes are split, the same events come out, or the
/// stream is refused (a line or an event over the cap) either way.
fn sse(kind: ProviderKind, split: usize, body: &[u8]) {
    let whole = SseParser::default().push(body);
    let in_chunks = || -> Result<Vec<(String, String)>, remote::Failure> {
        let mut p = SseParser::default();
        let mut events = Vec::new();
        for c in body.chunks(split) {
            events.extend(p.push(c)?);
        }
        Ok(events)
    };
    let parts = in_chunks();
    match (&whole, &parts) {
        (Ok(whole), Ok(parts)) => assert_eq!(
            whole, parts,
            "the events depend on how the stream was split"
        ),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "the stream is refused or not depending on how it was split (whole: {}, in chunks \
             of {split}: {})",
            whole.is_ok(),
            parts.is_ok()
        ),
    }
    for (event, data) in whole.iter().flatten() {
        let _ = remote::interpret(kind, event, data);
    }
}

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let [sel, split, body @ ..] = data else {
        return;
    };
    let (kind, kind_name) = match sel & 1 {
        0 => (ProviderKind::Openai, "openai"),
        _ => (ProviderKind::Anthropic, "anthropic"),
    };
    let call_kind = (sel >> 1) & 3;
    let split = *split as usize % 64 + 1;
    if call_kind == 3 {
        sse(kind, split, body);
        return;
    }
    let status = [200u16, 200, 200, 200, 400, 429, 500, 503][(sel >> 3) as usize & 7];
    let mut answer = format!(
        "HTTP/1.1 {status} X\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: {}\r\n",
        if call_kind == 1 {
            "text/event-stream"
        } else {
            "application/json"
        }
    )
    .into_bytes();
    if call_kind == 1 {
        // Chunked, so the client's reads see the splits.
        answer.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        for c in body.chunks(split) {
            answer.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            answer.extend_from_slice(c);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
    } else {
        answer.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        answer.extend_from_slice(body);
    }
    *ANSWER.lock().expect("answer") = answer;
    let p = provider();
    let cfg = config(kind_name, p.port);
    let client = remote::client(&cfg).expect("client");
    let ep = Endpoint {
        config: &cfg,
        key: Some("sk-fuzz"),
        client: &client,
    };
    let call = ChatCall {
        model: Some("fuzz/m".into()),
        messages: vec![ChatMessage::new("user", "hi")],
        max_tokens: Some(16),
        ..ChatCall::default()
    };
    let limit = Duration::from_secs(10);
    p.rt.block_on(async {
        match call_kind {
            0 => {
                let _ = remote::chat(&ep, "m", &call, limit).await;
            }
            1 => {
                if let Ok(resp) = remote::open_stream(&ep, "m", &call, limit).await {
                    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
                    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
                    let _ = remote::pump(kind, resp, limit, &tx).await;
                    drop(tx);
                    let _ = drain.await;
                }
            }
            _ => {
                let inputs = vec!["a".to_string(), "b".to_string()];
                if let Ok((vectors, _)) = remote::embed(&ep, "e", &inputs, limit).await {
                    assert_eq!(vectors.len(), inputs.len());
                }
            }
        }
    });
}

//! The HTTP API in-process: the real app (`cairn::api::router` over state assembled as
//! `cairn serve` assembles it, on a temporary data directory) called with
//! `tower::ServiceExt::oneshot` as an onboarded administrator, so requests reach the handlers.
//!
//! Input: byte 0 picks a route of the real route table (`cairn::api::route_table`), byte 1 the
//! method, the credential (API token or session cookie with its CSRF token) and the content
//! type; the rest up to the first newline fills the route's `{parameters}` (percent-encoded;
//! after a `?`, the query) or, when it starts with `/`, is the path itself (seeds name their
//! route so; any path reaches the fallback and the asset table), the rest is the body. No panic, and no 5xx but those that say a
//! part is missing or unreachable here (503: no model, no provider; 502/504: the provider).
//!
//! Kept from reaching outside: a provider written through `/api/v1/router/providers` gets
//! `http://127.0.0.1:9` as its base URL (the fuzz target of provider answers covers them).
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use cairn::api::{AppState, route_table};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tower::ServiceExt;

struct App {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    routes: Vec<&'static str>,
    auth: Arc<cairn::auth::Auth>,
    token: String,
    /// Session cookie and CSRF token (a fuzzed logout ends the session: logged in again).
    session: Mutex<(String, String)>,
    _dir: tempfile::TempDir,
}

const PASSWORD: &str = "correct horse battery staple";

const METHODS: [Method; 8] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::GET,
];
const TYPES: [&str; 4] = [
    "application/json",
    "application/x-ndjson",
    "application/octet-stream",
    "text/plain",
];

/// The app as `cairn::serve::run` builds it (no listener, no init connection, no models).
fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let data = dir.path().to_path_buf();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let state = rt.block_on(async {
            let store = cairn::store::Store::open(&data).expect("store");
            let identity =
                cairn::tls::load_or_create(Some(&data.join("tls")), "fuzz").expect("identity");
            let inference = Arc::new(
                cairn::inference::Inference::new(&cairn::inference::InferenceOptions {
                    store: Some(data.join("models")),
                    registry: Some(data.join("models.toml")),
                    device: cairn::inference::DeviceChoice::Cpu,
                    threads: 1,
                    load: cairn::inference::LoadPolicy::Lazy,
                })
                .expect("inference"),
            );
            let memory = Arc::new(
                cairn::memory::Memory::open_database(store.database(), store.path(), None)
                    .expect("memory"),
            );
            let metrics = Arc::new(cairn::metrics::Metrics::default());
            let router = Arc::new(cairn::router::Router::open(cairn::router::RouterOptions {
                inference: inference.clone(),
                metrics: metrics.clone(),
                db: Some((store.database(), store.path().to_path_buf())),
                data_dir: data.clone(),
            }));
            let services =
                cairn::agents::ApplianceServices::new(router.clone(), Some(memory.clone()))
                    .expect("agent services");
            let agents = cairn_agents::Runtime::open(
                store.database(),
                Arc::new(services),
                cairn_agents::RuntimeConfig::new(data.clone()),
            )
            .await
            .expect("agent runtime");
            let auth = Arc::new(cairn::auth::Auth::open(Some(store.database())).expect("auth"));
            let certs = cairn::tls::Certificates::new(&identity, Some(data.join("tls")))
                .expect("certificates");
            let control = Arc::new(cairn::control::Control::hosted());
            let machine = Arc::new(cairn::machine::Machine::open(
                &data,
                None,
                data.join("boot-info.json"),
                control.clone(),
            ));
            tokio::spawn(cairn::memory::background(memory.clone(), inference.clone()));
            Arc::new(AppState {
                store: Some(store),
                degraded: None,
                data_dir: data.clone(),
                started: Instant::now(),
                control,
                machine,
                certs,
                appliance: false,
                inference,
                metrics,
                agents: Some(agents),
                memory: Some(memory),
                router,
                auth,
                restart: Arc::new(tokio::sync::Notify::new()),
                stopping: std::sync::atomic::AtomicBool::new(false),
            })
        });
        let auth = state.auth.clone();
        let code = auth
            .setup_code()
            .expect("a fresh appliance has a setup code");
        let permit = auth.hashing.try_acquire().expect("a hashing permit");
        let session = auth
            .onboard(&permit, &code, "admin", PASSWORD)
            .expect("onboard");
        drop(permit);
        let (_, token) = auth
            .create_token("fuzz", cairn::auth::Scope::Admin, None)
            .expect("token");
        let mut routes = route_table();
        routes.push("/no/such/route");
        App {
            auth,
            app: cairn::api::router(state),
            rt,
            routes,
            token,
            session: Mutex::new((session.id, session.csrf)),
            _dir: dir,
        }
    })
}

/// Percent-encodes everything but unreserved characters (and `=`/`&` in a query).
fn encode(bytes: &[u8], query: bool) -> String {
    let mut s = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (query && b"=&".contains(&b)) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The request's path and query from a route pattern and the parameter bytes.
fn uri(route: &str, param: &[u8]) -> String {
    if param.first() == Some(&b'/') {
        // A literal path: bytes outside printable ASCII are escaped, the rest kept.
        let mut s = String::new();
        for &b in param {
            if b.is_ascii_graphic() {
                s.push(b as char);
            } else {
                s.push_str(&format!("%{b:02X}"));
            }
        }
        return s;
    }
    let (value, query) = match param.iter().position(|b| *b == b'?') {
        Some(i) => (&param[..i], Some(&param[i + 1..])),
        None => (param, None),
    };
    let value = if value.is_empty() {
        "x".to_string()
    } else {
        encode(value, false)
    };
    let mut path: String = route
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                value.as_str()
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    if let Some(q) = query {
        path.push('?');
        path.push_str(&encode(q, true));
    }
    path
}

/// Points a provider written through the API at a closed loopback port.
fn keep_inside(path: &str, method: &Method, body: Vec<u8>) -> Vec<u8> {
    if !path.starts_with("/api/v1/router/providers") || method == Method::GET {
        return body;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut m)) if m.contains_key("base_url") => {
            m.insert("base_url".into(), "http://127.0.0.1:9".into());
            serde_json::to_vec(&m).expect("JSON")
        }
        _ => body,
    }
}

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let [route, flags, rest @ ..] = data else {
        return;
    };
    let a = app();
    let route = a.routes[*route as usize % a.routes.len()];
    let method = METHODS[(*flags & 7) as usize].clone();
    let (param, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let uri = uri(route, param);
    let body = keep_inside(&uri, &method, body.to_vec());
    let mut req = Request::builder()
        .method(method.clone())
        .uri(&uri)
        .header(header::HOST, "cairn.local")
        .header(header::CONTENT_TYPE, TYPES[(*flags >> 4) as usize & 3]);
    let by_session = flags & 8 != 0;
    req = if by_session {
        let (id, csrf) = a.session.lock().expect("session").clone();
        req.header(header::COOKIE, format!("{}={id}", cairn::auth::COOKIE))
            .header("x-csrf-token", csrf)
    } else {
        req.header(header::AUTHORIZATION, format!("Bearer {}", a.token))
    };
    // Paths the HTTP parser would refuse never reach the app.
    let Ok(req) = req.body(Body::from(body)) else {
        return;
    };
    let (status, text) = a.rt.block_on(async {
        let resp = a.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let streaming = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let text = if streaming {
            String::new()
        } else {
            let bytes = axum::body::to_bytes(resp.into_body(), 8 << 20)
                .await
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned()
        };
        (status, text)
    });
    if by_session
        && status == StatusCode::UNAUTHORIZED
        && let Some(permit) = a.auth.hashing.try_acquire()
        && let Ok(s) = a.auth.login(&permit, "admin", PASSWORD)
    {
        *a.session.lock().expect("session") = (s.id, s.csrf);
    }
    let expected = matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    );
    assert!(
        !status.is_server_error() || expected,
        "{method} {uri} answered {status}: {text}"
    );
}

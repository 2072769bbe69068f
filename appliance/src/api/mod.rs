//! The HTTP API: routes, shared state and the JSON error shape.

mod agents;
mod auth;
mod backup;
mod machine;
mod memory;
mod model_router;
mod models;

pub use models::remove_partial_uploads;
mod openai;
mod settings;
mod system;

use crate::control::Control;
use crate::store::{Store, StoreError};
use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Largest request body of the management routes (bigger bodies get 413).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request body of the model routes (`/v1/...`).
pub const MAX_MODEL_BODY: usize = 4 << 20;

/// State shared by every request.
pub struct AppState {
    /// The database, absent in degraded mode.
    pub store: Option<Store>,
    /// Why the appliance runs degraded and read-only, if it does.
    pub degraded: Option<String>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// When this process started.
    pub started: Instant,
    /// The connection to init.
    pub control: Arc<Control>,
    /// Host name, network and clock settings (applied by init).
    pub machine: Arc<crate::machine::Machine>,
    /// The served TLS certificate (replaceable; its fingerprint is what operators pin).
    pub certs: Arc<crate::tls::Certificates>,
    /// Running as the appliance (under cairn-init) rather than hosted.
    pub appliance: bool,
    /// Local models.
    pub inference: std::sync::Arc<crate::inference::Inference>,
    /// Inference counters.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The agent runtime, absent in degraded mode.
    pub agents: Option<cairn_agents::Runtime>,
    /// Agent memory, absent in degraded mode.
    pub memory: Option<Arc<crate::memory::Memory>>,
    /// The model router: every LLM call goes through it.
    pub router: Arc<crate::router::Router>,
    /// Accounts, sessions, API tokens and the operator audit log.
    pub auth: Arc<crate::auth::Auth>,
    /// Notified to stop serving and start again (a staged restore is applied at start).
    pub restart: Arc<tokio::sync::Notify>,
    /// Set when the service is stopping: every request is answered 503 `stopping` from then
    /// on, so no client mistakes the old process for the restarted one.
    pub stopping: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// Stops serving and starts again (the answer to the current request still goes out).
    pub fn request_restart(self: &Arc<Self>) {
        let s = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            s.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            s.restart.notify_one();
        });
    }
}

/// Shared state handle.
pub type Shared = Arc<AppState>;

/// An API error: `{"error": {"code": "...", "message": "..."}}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    message: String,
    /// The form field the error is about, if any.
    pub field: Option<&'static str>,
    /// Seconds for a `Retry-After` header, if any.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a stable code and a human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Names the form field the error is about.
    pub fn field(mut self, field: &'static str) -> ApiError {
        self.field = Some(field);
        self
    }
}

tokio::task_local! {
    /// The id of the request being answered (set by [`answer`]).
    static REQUEST_ID: String;
}

/// The id of the request being answered, when called while answering one.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

fn new_request_id() -> String {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 8];
    // An all-zero id (random source failing) still answers; ids are for finding log lines.
    let _ = ring::rand::SystemRandom::new().fill(&mut id);
    hex::encode(id)
}

/// The message a client gets for a server error (5xx): the detail goes to the log with the
/// request id; a 500's detail (an internal failure) stays there, other 5xx keep their message,
/// which is meant for the operator (degraded mode, full disk, an upstream provider's answer).
pub fn server_error_message(status: StatusCode, code: &str, detail: String) -> String {
    let id = request_id().unwrap_or_else(|| "-".into());
    tracing::error!("request {id}: {} {code}: {detail}", status.as_u16());
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        format!("internal error; the appliance's log has the details under request id {id}")
    } else {
        detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = if self.status.is_server_error() {
            server_error_message(self.status, self.code, self.message)
        } else {
            self.message
        };
        let mut error = serde_json::json!({"code": self.code, "message": message});
        if let Some(f) = self.field {
            error["field"] = f.into();
        }
        if self.status.is_server_error()
            && let Some(id) = request_id()
        {
            error["request_id"] = id.into();
        }
        let mut r = (self.status, Json(serde_json::json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full(m) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full", m)
            }
            StoreError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "read_only", m)
            }
            // The cause stays on the box (the 500 answer carries a request id instead).
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                crate::tls::error_chain(&other),
            ),
        }
    }
}

impl AppState {
    /// The store for a write, or the degraded-mode error.
    pub fn writable_store(&self) -> Result<&Store, ApiError> {
        match (&self.store, &self.degraded) {
            (Some(s), None) => Ok(s),
            (_, reason) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "read_only",
                format!(
                    "the appliance is in degraded, read-only mode: {}",
                    reason
                        .as_deref()
                        .unwrap_or("the data partition is unavailable")
                ),
            )),
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// A set of routes that remembers every path it registers, so the whole route table can be
/// walked (the authentication test proves every path refuses anonymous callers).
#[derive(Default)]
pub struct Routes {
    router: Router<Shared>,
    paths: Vec<&'static str>,
}

impl Routes {
    /// No routes.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Adds `path` with its handlers.
    pub fn route(mut self, path: &'static str, handlers: MethodRouter<Shared>) -> Routes {
        self.router = self.router.route(path, handlers);
        self.paths.push(path);
        self
    }

    /// Adds every route of `other`.
    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// Caps request bodies of the routes added so far at `bytes` (bigger bodies get 413).
    pub fn body_limit(mut self, bytes: usize) -> Routes {
        self.router = self.router.layer(DefaultBodyLimit::max(bytes));
        self
    }
}

fn routes() -> Routes {
    Routes::new()
        .merge(auth::routes())
        .merge(system::routes())
        .merge(settings::routes())
        .merge(machine::routes())
        .merge(models::routes())
        .merge(memory::routes())
        .merge(agents::routes())
        .merge(model_router::routes())
        .merge(backup::routes())
        .merge(crate::console::routes())
        .body_limit(MAX_BODY)
        // Conversations and embedding batches are bigger than settings.
        .merge(openai::routes().body_limit(MAX_MODEL_BODY))
        .merge(memory::import_routes())
        .merge(agents::install_routes().body_limit(agents::MAX_PACKAGE_BODY))
        .merge(backup::restore_routes())
        .merge(models::upload_routes())
}

/// Every path of the route table, as registered (`{name}` marks a parameter).
pub fn route_table() -> Vec<&'static str> {
    let mut paths = routes().paths;
    paths.sort_unstable();
    paths.dedup();
    paths
}

/// Every route of the API, behind the authentication guard (`docs/console.md`), wrapped by
/// [`harden`].
pub fn router(state: Shared) -> Router {
    harden(
        routes()
            .router
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::auth::guard::guard,
            ))
            .with_state(state),
    )
}

/// Wraps every answer of `app` (see [`answer`]).
pub fn harden(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(answer))
}

/// Whether `host` (a `Host` header or URI authority) names this machine's loopback by name,
/// where HSTS would pin every local port of a developer's browser to HTTPS.
fn is_localhost(host: &str) -> bool {
    if host.starts_with('[') {
        return false;
    }
    let name = host.split(':').next().unwrap_or(host).trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name
            .rsplit_once('.')
            .is_some_and(|(_, tld)| tld.eq_ignore_ascii_case("localhost"))
}

/// The outermost layer of every answer: gives the request an id (the `X-Request-Id` header,
/// the `request_id` of 5xx error bodies, the log lines of its failures), turns a panicking
/// handler into a 500 (the server goes on serving), answers 408 when the request body missed
/// its deadline (`conn.rs`), and adds `X-Content-Type-Options: nosniff`, `Cache-Control:
/// no-store` (unless the route set its own) and HSTS.
async fn answer(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::{HeaderValue, Version, header};
    use futures_util::FutureExt;
    let id = new_request_id();
    let missed = req.extensions().get::<crate::conn::BodyDeadline>().cloned();
    let http1 = req.version() <= Version::HTTP_11;
    let local = req
        .uri()
        .host()
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .is_some_and(is_localhost);
    let mut r = REQUEST_ID
        .scope(id.clone(), async move {
            let r = match std::panic::AssertUnwindSafe(next.run(req))
                .catch_unwind()
                .await
            {
                Ok(r) => r,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("handler panicked: {what}"),
                    )
                    .into_response()
                }
            };
            if missed.is_some_and(|m| m.missed()) {
                let mut r = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                )
                .into_response();
                if http1 {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                return r;
            }
            r
        })
        .await;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if !local {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    /// Test routes (outside the production route table) behind the same outer layer.
    fn app() -> Router {
        harden(
            Router::new()
                .route(
                    "/panics",
                    get(|| async {
                        if std::hint::black_box(true) {
                            panic!("index out of bounds in /data/secret");
                        }
                        "unreachable"
                    }),
                )
                .route(
                    "/fails",
                    get(|| async {
                        Err::<(), _>(ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            "opening /data/secret.redb: permission denied",
                        ))
                    }),
                )
                .route("/ok", get(|| async { "ok" })),
        )
    }

    async fn fetch(app: &Router, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let req = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let r = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into(),
        )
    }

    fn assert_generic_500(status: StatusCode, headers: &axum::http::HeaderMap, body: &str) {
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
        let id = headers["x-request-id"].to_str().unwrap();
        assert_eq!(v["error"]["request_id"], id);
        assert_eq!(v["error"]["code"], "internal");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(id), "{message}");
        assert!(!body.contains("/data/secret"), "the detail leaked: {body}");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_a_request_id_and_serving_goes_on() {
        let app = app();
        let (status, headers, body) = fetch(&app, "/panics").await;
        assert_generic_500(status, &headers, &body);
        let (status, _, body) = fetch(&app, "/ok").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }

    #[tokio::test]
    async fn internal_errors_answer_a_request_id_not_their_detail() {
        let (status, headers, body) = fetch(&app(), "/fails").await;
        assert_generic_500(status, &headers, &body);
        // Two requests, two ids.
        let (_, again, _) = fetch(&app(), "/fails").await;
        assert_ne!(headers["x-request-id"], again["x-request-id"]);
    }

    #[test]
    fn hsts_is_left_out_for_localhost_only() {
        for host in [
            "localhost",
            "localhost:8443",
            "LOCALHOST.",
            "cairn.localhost:443",
        ] {
            assert!(is_localhost(host), "{host}");
        }
        for host in [
            "cairn.lan",
            "127.0.0.1:8443",
            "[::1]:443",
            "localhost.example",
        ] {
            assert!(!is_localhost(host), "{host}");
        }
    }
}

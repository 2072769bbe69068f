//! The HTTP API: routes, shared state and the JSON error shape.

mod agents;
mod auth;
mod machine;
mod memory;
mod model_router;
mod models;
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            error["field"] = f.into();
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
            StoreError::Other(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", m),
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
        .merge(crate::console::routes())
        .body_limit(MAX_BODY)
        // Conversations and embedding batches are bigger than settings.
        .merge(openai::routes().body_limit(MAX_MODEL_BODY))
        .merge(memory::import_routes())
        .merge(agents::install_routes().body_limit(agents::MAX_PACKAGE_BODY))
}

/// Every path of the route table, as registered (`{name}` marks a parameter).
pub fn route_table() -> Vec<&'static str> {
    let mut paths = routes().paths;
    paths.sort_unstable();
    paths.dedup();
    paths
}

/// Every route of the API, behind the authentication guard (`docs/console.md`).
pub fn router(state: Shared) -> Router {
    routes()
        .router
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::guard::guard,
        ))
        .with_state(state)
}

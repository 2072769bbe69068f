//! Agents over HTTP: install signed packages, lifecycle, runs, messages, the trust store and
//! the audit log (`/api/v1/agents`, `/api/v1/runs`, `/api/v1/trust`, `/api/v1/audit`).

use super::{ApiError, Routes, Shared};
use crate::auth::{Caller, Scope};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use cairn_agents::db::Priority;
use cairn_agents::{AgentError, Runtime, StartOptions};
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest package upload.
pub const MAX_PACKAGE_BODY: usize = cairn_agents::package::MAX_PACKAGE;

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        use cairn_agents::package::PackageError as P;
        let m = e.to_string();
        match e {
            AgentError::Package(P::UnknownPublisher(_) | P::Revoked(_)) => {
                ApiError::new(StatusCode::FORBIDDEN, "untrusted_publisher", m)
            }
            AgentError::Package(P::Unsigned | P::BadSignature | P::WrongKey { .. }) => {
                ApiError::new(StatusCode::FORBIDDEN, "bad_signature", m)
            }
            AgentError::Package(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_package", m),
            AgentError::World(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "component_mismatch", m)
            }
            AgentError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            AgentError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            AgentError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", m),
            AgentError::Quota(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota", m),
            AgentError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", m)
            }
        }
    }
}

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/agents", get(list))
        .route("/api/v1/agents/{name}", get(one).delete(uninstall))
        .route("/api/v1/agents/{name}/{action}", post(action))
        .route("/api/v1/agents/{name}/runs", post(run))
        .route("/api/v1/agents/{name}/messages", post(message))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/runs/{id}", get(one_run))
        .route("/api/v1/runs/{id}/cancel", post(cancel_run))
        .route("/api/v1/trust", get(trusted).post(trust))
        .route("/api/v1/trust/{key}/revoke", post(revoke))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/workflows/validate", post(validate_workflow))
        .route(
            "/api/v1/workflows/runs",
            get(workflow_runs).post(run_workflow),
        )
        .route("/api/v1/workflows/runs/{id}", get(one_workflow_run))
        .route(
            "/api/v1/workflows/runs/{id}/cancel",
            post(cancel_workflow_run),
        )
        .route("/api/v1/workflows", get(stored_workflows))
        .route(
            "/api/v1/workflows/{name}",
            get(stored_workflow)
                .put(save_workflow)
                .delete(delete_workflow),
        )
        .route("/api/v1/workflows/{name}/runs", post(run_stored_workflow))
}

/// The package upload route, with its own body limit.
pub(super) fn install_routes() -> Routes {
    Routes::new().route("/api/v1/agents", post(install))
}

fn runtime(s: &Shared) -> Result<&Runtime, ApiError> {
    s.agents.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read_only",
            "the agent runtime is unavailable (degraded mode or it failed to start; see the log)",
        )
    })
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))
}

async fn list(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"agents": runtime(&s)?.list()?})))
}

async fn one(State(s): State<Shared>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(runtime(&s)?.info(&name)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallQuery {
    #[serde(default = "yes")]
    start: bool,
    /// Accept a downgrade (admin scope only).
    #[serde(default)]
    force: bool,
}

fn yes() -> bool {
    true
}

async fn install(
    State(s): State<Shared>,
    caller: Option<Extension<Caller>>,
    Query(q): Query<InstallQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if q.force && caller.is_none_or(|Extension(c)| c.scope != Scope::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "force (installing an older version) needs the admin scope",
        ));
    }
    s.writable_store()?.ensure_space(body.len() as u64 * 3)?;
    let rt = runtime(&s)?;
    let info = rt.install_with(body.to_vec(), q.start, q.force).await?;
    // The agent's own namespace (and other agent:* grants) exist from the start.
    if let Some(memory) = s.memory.clone() {
        let mut wanted: Vec<String> = info
            .manifest
            .capabilities
            .memory
            .iter()
            .filter(|n| n.starts_with("agent:"))
            .cloned()
            .collect();
        wanted.push(format!("agent:{}", info.manifest.name));
        let known = {
            let m = memory.clone();
            tokio::task::spawn_blocking(move || m.namespaces(&crate::memory::Access::admin()))
                .await
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "memory", e.to_string())
                })?
        };
        for ns in wanted.into_iter().filter(|n| !known.contains_key(n)) {
            let m = memory.clone();
            let r = tokio::task::spawn_blocking(move || {
                m.put_namespace(&crate::memory::Access::admin(), &ns, None)
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "agent namespace");
            }
        }
    }
    Ok((StatusCode::CREATED, Json(json!(info))))
}

async fn uninstall(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.writable_store()?;
    runtime(&s)?.uninstall(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn action(
    State(s): State<Shared>,
    Path((name, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    s.writable_store()?;
    let rt = runtime(&s)?;
    let info = match action.as_str() {
        "start" => rt.start(&name, parse::<StartOptions>(&body)?)?,
        "stop" => rt.stop(&name)?,
        "pause" => rt.pause(&name)?,
        "resume" => rt.resume(&name)?,
        "kill" => rt.kill(&name).await?,
        "checkpoint" => {
            let ms = rt.checkpoint(&name).await?;
            return Ok(Json(json!({"agent": name, "checkpoint_ms": ms})));
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no action {other:?} (start, stop, pause, resume, kill, checkpoint)"),
            ));
        }
    };
    Ok(Json(json!(info)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    input: String,
    #[serde(default)]
    priority: Option<Priority>,
    /// Wait for the run's end (default) or answer 202 with its id at once.
    #[serde(default = "yes")]
    wait: bool,
}

async fn run(
    State(s): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.writable_store()?;
    let b: RunBody = parse(&body)?;
    let rt = runtime(&s)?;
    if b.wait {
        Ok((
            StatusCode::OK,
            Json(json!(rt.run(&name, b.input, b.priority).await?)),
        ))
    } else {
        let id = rt.submit(&name, b.input, b.priority)?;
        Ok((StatusCode::ACCEPTED, Json(json!({"id": id}))))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    #[serde(default = "operator")]
    from: String,
    body: String,
}

fn operator() -> String {
    "operator".into()
}

async fn message(
    State(s): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: MessageBody = parse(&body)?;
    let reply = runtime(&s)?.send(&name, &b.from, b.body).await?;
    Ok(Json(json!({"reply": reply})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    agent: Option<String>,
    limit: Option<usize>,
}

async fn runs(
    State(s): State<Shared>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "limit must be 1..=1000",
        ));
    }
    Ok(Json(
        json!({"runs": runtime(&s)?.runs(q.agent.as_deref(), limit)?}),
    ))
}

async fn one_run(State(s): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(runtime(&s)?.run_record(&id)?)))
}

async fn trusted(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"keys": runtime(&s)?.trusted()?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustBody {
    key: String,
    name: String,
}

async fn trust(
    State(s): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.writable_store()?;
    let b: TrustBody = parse(&body)?;
    Ok((
        StatusCode::CREATED,
        Json(json!(runtime(&s)?.trust(&b.key, &b.name)?)),
    ))
}

async fn revoke(State(s): State<Shared>, Path(key): Path<String>) -> Result<Json<Value>, ApiError> {
    s.writable_store()?;
    Ok(Json(json!(runtime(&s)?.revoke(&key).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(s): State<Shared>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(json!({"entries": runtime(&s)?.audit(limit)?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowBody {
    /// The workflow file's text (TOML, or JSON starting with `{`).
    workflow: String,
    #[serde(default)]
    input: String,
    /// Wait for the end (default) or answer 202 with the run id at once.
    #[serde(default = "yes")]
    wait: bool,
}

fn workflow_of(s: &Shared, text: &str) -> Result<cairn_agents::workflow::Workflow, ApiError> {
    let wf = cairn_agents::workflow::Workflow::parse(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_workflow", e.to_string()))?;
    runtime(s)?.check_workflow(&wf).map_err(|e| match e {
        AgentError::NotFound(m) | AgentError::Invalid(m) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_workflow", m)
        }
        other => other.into(),
    })?;
    Ok(wf)
}

async fn validate_workflow(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let b: WorkflowBody = parse(&body)?;
    let wf = workflow_of(&s, &b.workflow)?;
    Ok(Json(json!({"valid": true, "agents": wf.agents()})))
}

async fn run_workflow(
    State(s): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.writable_store()?;
    let b: WorkflowBody = parse(&body)?;
    let wf = workflow_of(&s, &b.workflow)?;
    start_workflow(&s, &wf, b.input, b.wait).await
}

/// Starts a checked workflow, detached from the request (a client that goes away never leaves
/// half a run); answers 202 with its id, or waits for its end.
async fn start_workflow(
    s: &Shared,
    wf: &cairn_agents::workflow::Workflow,
    input: String,
    wait: bool,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let rt = runtime(s)?;
    let id = rt.submit_workflow(wf, input)?;
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(json!({"id": id}))));
    }
    loop {
        let run = rt.workflow_run(&id)?;
        if !matches!(run.status, cairn_agents::workflow::WorkflowStatus::Running) {
            return Ok((StatusCode::OK, Json(json!(run))));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowRunsQuery {
    workflow: Option<String>,
    limit: Option<usize>,
}

async fn workflow_runs(
    State(s): State<Shared>,
    Query(q): Query<WorkflowRunsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(
        json!({"runs": runtime(&s)?.workflow_runs(q.workflow.as_deref(), limit)?}),
    ))
}

async fn one_workflow_run(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(runtime(&s)?.workflow_run(&id)?)))
}

async fn cancel_workflow_run(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = runtime(&s)?
        .cancel_workflow(&id, "cancelled by an operator")
        .await?;
    Ok(Json(json!(run)))
}

async fn cancel_run(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = runtime(&s)?
        .cancel_run(&id, "cancelled by an operator")
        .await?;
    Ok(Json(json!(run)))
}

async fn stored_workflows(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"workflows": runtime(&s)?.stored_workflows()?})))
}

async fn stored_workflow(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(runtime(&s)?.stored_workflow(&name)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveWorkflowBody {
    /// The workflow file's text (TOML, or JSON starting with `{`); its name must be the path's.
    workflow: String,
}

async fn save_workflow(
    State(s): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.writable_store()?;
    let b: SaveWorkflowBody = parse(&body)?;
    let wf = cairn_agents::workflow::Workflow::parse(&b.workflow)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_workflow", e.to_string()))?;
    if wf.name != name {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_workflow",
            format!(
                "the workflow's name {:?} differs from the path's {name:?}",
                wf.name
            ),
        ));
    }
    let stored = runtime(&s)?
        .save_workflow(&b.workflow)
        .map_err(|e| match e {
            AgentError::NotFound(m) | AgentError::Invalid(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_workflow", m)
            }
            other => other.into(),
        })?;
    let status = if stored.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(stored))))
}

async fn delete_workflow(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.writable_store()?;
    runtime(&s)?.delete_workflow(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunStoredBody {
    #[serde(default)]
    input: String,
    /// Wait for the end (default) or answer 202 with the run id at once.
    #[serde(default = "yes")]
    wait: bool,
}

async fn run_stored_workflow(
    State(s): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.writable_store()?;
    let b: RunStoredBody = if body.is_empty() {
        RunStoredBody {
            input: String::new(),
            wait: true,
        }
    } else {
        parse(&body)?
    };
    let stored = runtime(&s)?.stored_workflow(&name)?;
    let wf = workflow_of(&s, &stored.text)?;
    start_workflow(&s, &wf, b.input, b.wait).await
}

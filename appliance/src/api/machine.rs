//! `/api/v1/system/settings` (host name and network, with confirmation of network changes)
//! and `/api/v1/system/clock`, over [`crate::machine`].

use super::{ApiError, Routes, Shared};
use crate::machine::{Change, Machine, MachineError, Outcome};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::Arc;

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/system/settings", get(show).put(change))
        .route("/api/v1/system/settings/confirm", post(confirm))
        .route("/api/v1/system/settings/revert", post(revert))
        .route("/api/v1/system/clock", get(clock).post(set_clock))
}

impl From<MachineError> for ApiError {
    fn from(e: MachineError) -> Self {
        match e {
            MachineError::Field(field, m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m).field(field)
            }
            MachineError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            MachineError::Failed(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "not_applied", m)
            }
        }
    }
}

fn machine(s: &Shared) -> Result<Arc<Machine>, ApiError> {
    s.writable_store()?;
    Ok(s.machine.clone())
}

async fn blocking<T: Send + 'static>(
    m: Arc<Machine>,
    f: impl FnOnce(&Machine) -> Result<T, MachineError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&m))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

fn view(m: &Machine) -> Value {
    let boot = m.boot_info();
    let now = crate::auth::unix_now() as i64;
    json!({
        "settings": m.settings(),
        "managed": m.managed(),
        "pending": m.pending().map(|p| json!({
            "deadline": p.deadline,
            "remaining_s": (p.deadline - now).max(0),
        })),
        "in_force": boot.map(|b| json!({
            "hostname": crate::sysinfo::hostname(),
            "network": b.network,
        })),
        "overrides": m.overrides(),
        "last_error": m.last_error(),
    })
}

async fn show(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let m = s.machine.clone();
    Ok(Json(blocking(m, |m| Ok(view(m))).await?))
}

async fn change(
    State(s): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: Change = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"hostname\", \"network\": {{mode, interface, address, gateway, dns}}, \"confirm_within_s\"}}: {e}"),
        )
    })?;
    let m = machine(&s)?;
    let (outcome, v) = blocking(m.clone(), move |m| Ok((m.change(&req)?, view(m)))).await?;
    let (status, word) = match &outcome {
        Outcome::Unchanged => (StatusCode::OK, "unchanged"),
        Outcome::Applied => (StatusCode::OK, "applied"),
        Outcome::Pending(p) => {
            tokio::spawn(crate::machine::probation(m, p.clone()));
            (StatusCode::ACCEPTED, "pending")
        }
    };
    let mut v = v;
    v["status"] = word.into();
    Ok((status, Json(v)))
}

async fn confirm(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let m = machine(&s)?;
    let v = blocking(m, |m| {
        m.confirm()?;
        Ok(view(m))
    })
    .await?;
    Ok(Json(v))
}

async fn revert(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let m = machine(&s)?;
    let v = blocking(m, |m| {
        m.revert(None)?;
        Ok(view(m))
    })
    .await?;
    Ok(Json(v))
}

async fn clock(State(s): State<Shared>) -> Json<Value> {
    let boot = s.machine.boot_info();
    Json(json!({
        "unix": crate::auth::unix_now(),
        "source": boot.map(|b| b.clock.source),
        "settable": s.machine.managed(),
    }))
}

async fn set_clock(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body: not JSON: {e}"),
        )
    })?;
    let unix = v.get("unix").and_then(Value::as_i64).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "expected {\"unix\": seconds since 1970 (UTC)}",
        )
        .field("time")
    })?;
    let m = s.machine.clone();
    blocking(m, move |m| m.set_clock(unix)).await?;
    Ok(Json(json!({"unix": unix})))
}

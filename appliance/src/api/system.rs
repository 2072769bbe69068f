//! `/healthz`, `/api/v1/system` and power control.

use super::{ApiError, Routes, Shared};
use crate::sysinfo;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use cairn_init::bootinfo::{BootInfo, PowerAction};
use serde::Deserialize;
use serde_json::{Value, json};

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/system", get(system))
        .route("/api/v1/system/power", post(power))
        .route("/api/v1/system/logs", get(logs))
        .route("/api/v1/events", get(events))
        .route("/api/v1/tls", get(tls).put(replace_tls))
}

async fn healthz(State(s): State<Shared>) -> Json<Value> {
    let status = if s.degraded.is_some() {
        "degraded"
    } else {
        "ok"
    };
    Json(json!({"status": status}))
}

fn boot_info() -> Option<BootInfo> {
    let text = std::fs::read(cairn_init::layout::BOOT_INFO).ok()?;
    serde_json::from_slice(&text).ok()
}

async fn system(State(s): State<Shared>) -> Json<Value> {
    let boot = boot_info();
    let mut processes = Vec::new();
    if s.appliance
        && let Some(rss) = sysinfo::rss_kib(1)
    {
        processes.push(sysinfo::Process {
            name: "cairn-init".into(),
            pid: 1,
            rss_kib: rss,
            uid: sysinfo::uid(1),
        });
    }
    let me = std::process::id();
    processes.push(sysinfo::Process {
        name: "cairn".into(),
        pid: me,
        rss_kib: sysinfo::rss_kib(me).unwrap_or(0),
        uid: sysinfo::uid(me),
    });
    let data = json!({
        "mode": if s.degraded.is_some() { "degraded" } else { "read-write" },
        "reason": s.degraded,
        "path": s.data_dir,
        "schema_version": s.store.as_ref().and_then(|st| st.schema_version().ok()),
    });
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "arch": std::env::consts::ARCH,
        "kernel": sysinfo::kernel(),
        "hostname": sysinfo::hostname(),
        "mode": if s.appliance { "appliance" } else { "hosted" },
        "uptime_secs": sysinfo::uptime_secs(),
        "appliance_uptime_secs": s.started.elapsed().as_secs_f64(),
        "tls_fingerprint": s.certs.fingerprint(),
        "boot": boot,
        "data": data,
        "memory": sysinfo::memory(),
        "disks": sysinfo::disk(&s.data_dir).into_iter().collect::<Vec<_>>(),
        "network": sysinfo::interfaces(),
        "cpu": sysinfo::cpu(),
        "processes": processes,
        "inference": {
            "device": s.inference.device(),
            "kernels": cairn_models::kernels::level().name(),
            "models": s.inference.list(),
            "counters": s.metrics.snapshot(),
            "engines": s.inference.engine_stats(),
            "warnings": s.inference.warnings(),
        },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerRequest {
    action: PowerAction,
}

async fn power(
    State(s): State<Shared>,
    body: Result<Json<PowerRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"action\": \"reboot\" | \"poweroff\"}}: {e}"),
        )
    })?;
    if !s.control.is_present() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_an_appliance",
            "power control needs cairn-init; this instance runs hosted",
        ));
    }
    s.control.power(req.action).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "init_unreachable",
            e.to_string(),
        )
    })?;
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": req.action}))))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    since: Option<u64>,
    level: Option<String>,
    contains: Option<String>,
    limit: Option<usize>,
}

/// Recent log lines: `?since=SEQ&level=warn&contains=TEXT&limit=N`.
async fn logs(
    axum::extract::Query(q): axum::extract::Query<LogsQuery>,
) -> Result<Json<Value>, ApiError> {
    let levels = ["error", "warn", "info", "debug", "trace"];
    if let Some(l) = &q.level
        && !levels.contains(&l.to_ascii_lowercase().as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "level is one of error, warn, info, debug, trace",
        )
        .field("level"));
    }
    let limit = q.limit.unwrap_or(200).clamp(1, crate::logbuf::CAPACITY);
    let (lines, next) = crate::logbuf::read(
        q.since.unwrap_or(0),
        q.level.as_deref(),
        q.contains.as_deref(),
        limit,
    );
    Ok(Json(json!({"lines": lines, "next": next})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<u64>,
    kind: Option<String>,
    subject: Option<String>,
    contains: Option<String>,
    problems: Option<bool>,
    limit: Option<usize>,
}

/// The structured event stream: `?since=SEQ&kind=agent&subject=NAME&contains=TEXT&problems=true`.
async fn events(axum::extract::Query(q): axum::extract::Query<EventsQuery>) -> Json<Value> {
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let f = crate::events::Filter {
        since: q.since.unwrap_or(0),
        kind: nonempty(q.kind),
        subject: nonempty(q.subject),
        contains: nonempty(q.contains),
        problems: q.problems.unwrap_or(false),
    };
    let limit = q.limit.unwrap_or(200).clamp(1, crate::events::CAPACITY);
    let (events, next) = crate::events::read(&f, limit);
    Json(json!({"events": events, "next": next}))
}

async fn tls(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"fingerprint": s.certs.fingerprint()}))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsBody {
    certificate: String,
    key: String,
}

/// Replaces the served certificate with a PEM chain and its PEM key (admin).
async fn replace_tls(
    State(s): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: TlsBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("expected {{\"certificate\": PEM, \"key\": PEM}}: {e}"),
        )
    })?;
    let certs = s.certs.clone();
    let fp = tokio::task::spawn_blocking(move || certs.replace(&b.certificate, &b.key))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|(field, m)| ApiError::new(StatusCode::BAD_REQUEST, "invalid", m).field(field))?;
    tracing::warn!("TLS certificate replaced by the operator: SHA-256 {fp}");
    Ok(Json(json!({"fingerprint": fp})))
}

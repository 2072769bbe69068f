//! `/api/v1/router`: the model router's providers (keys write-only), policy and budgets, usage,
//! circuit breakers and learned scores (docs/router.md).

use super::{ApiError, Routes, Shared};
use crate::router::{AdminError, config};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/router", get(overview))
        .route("/api/v1/router/providers", get(list).post(create))
        .route(
            "/api/v1/router/providers/{name}",
            get(read).put(update).delete(remove),
        )
        .route("/api/v1/router/settings", get(settings).put(put_settings))
        .route("/api/v1/router/usage", get(usage))
        .route("/api/v1/router/breakers", get(breakers))
        .route("/api/v1/router/scores", get(scores).post(add_score))
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(i) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", i.to_string())
            }
            AdminError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            AdminError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            AdminError::Store(s) => s.into(),
        }
    }
}

fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body: not JSON: {e}"),
        )
    })
}

fn invalid(e: config::Invalid) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
}

/// Runs a blocking router change (redb write with fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&crate::router::Router) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    s.writable_store()?;
    let router = s.router.clone();
    tokio::task::spawn_blocking(move || f(&router))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

async fn overview(State(s): State<Shared>) -> Json<Value> {
    Json(json!({
        "settings": s.router.settings(),
        "providers": s.router.providers(),
        "breakers": s.router.breakers(),
        "policies": crate::router::Policy::ALL.map(crate::router::Policy::name),
    }))
}

async fn list(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"providers": s.router.providers()}))
}

async fn read(State(s): State<Shared>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    s.router
        .provider(&name)
        .map(|p| Json(json!(p)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no provider {name:?}"),
            )
        })
}

async fn create(
    State(s): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let input = config::parse_provider(body_json(&body)?, None).map_err(invalid)?;
    let view = blocking(&s, move |r| r.create_provider(input)).await?;
    Ok((StatusCode::CREATED, Json(json!(view))))
}

async fn update(
    State(s): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let input = config::parse_provider(body_json(&body)?, Some(&name)).map_err(invalid)?;
    let view = blocking(&s, move |r| r.update_provider(input)).await?;
    Ok(Json(json!(view)))
}

async fn remove(State(s): State<Shared>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    blocking(&s, move |r| r.delete_provider(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn settings(State(s): State<Shared>) -> Json<Value> {
    Json(json!(s.router.settings()))
}

async fn put_settings(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let new = config::parse_settings(body_json(&body)?, &s.router.settings()).map_err(invalid)?;
    let shown = json!(new);
    blocking(&s, move |r| r.set_settings(new)).await?;
    Ok(Json(shown))
}

#[derive(Deserialize)]
struct UsageQuery {
    days: Option<u32>,
}

async fn usage(
    State(s): State<Shared>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    let days = q.days.unwrap_or(7);
    if !(1..=366).contains(&days) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "days: must be 1-366",
        ));
    }
    let router = s.router.clone();
    let rows = tokio::task::spawn_blocking(move || router.usage(days))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    // Totals per caller, provider and day, as a console would chart them.
    let mut by_caller = serde_json::Map::new();
    let mut by_provider = serde_json::Map::new();
    let mut by_day = serde_json::Map::new();
    let add = |m: &mut serde_json::Map<String, Value>,
               k: &str,
               r: &crate::router::ledger::UsageRow| {
        let e = m
            .entry(k.to_string())
            .or_insert_with(|| json!({"calls": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}));
        for (f, v) in [
            ("calls", r.calls as f64),
            ("failures", r.failures as f64),
            ("prompt_tokens", r.prompt_tokens as f64),
            ("completion_tokens", r.completion_tokens as f64),
            ("cost_usd", r.cost_usd),
        ] {
            let cur = e[f].as_f64().unwrap_or(0.0);
            e[f] = if f == "cost_usd" {
                json!(cur + v)
            } else {
                json!((cur + v) as u64)
            };
        }
    };
    for r in &rows {
        add(&mut by_caller, &r.caller, &r.usage);
        add(&mut by_provider, &r.provider, &r.usage);
        add(&mut by_day, &r.day, &r.usage);
    }
    Ok(Json(
        json!({"days": days, "rows": rows, "by_caller": by_caller, "by_provider": by_provider, "by_day": by_day}),
    ))
}

async fn breakers(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"breakers": s.router.breakers()}))
}

async fn scores(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"scores": s.router.scores()}))
}

async fn add_score(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let v = body_json(&body)?;
    let bad = |f: &str, m: &str| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("{f}: {m}"))
    };
    let Value::Object(m) = v else {
        return Err(bad("body", "must be a JSON object"));
    };
    for k in m.keys() {
        if !matches!(k.as_str(), "model" | "task_kind" | "score") {
            return Err(bad(k, "unknown field"));
        }
    }
    let text = |f: &str| -> Result<String, ApiError> {
        match m.get(f).and_then(Value::as_str) {
            Some(t) if !t.trim().is_empty() && t.len() <= 200 => Ok(t.to_string()),
            _ => Err(bad(f, "must be a string of 1-200 characters")),
        }
    };
    let model = text("model")?;
    let kind = text("task_kind")?;
    let score = m
        .get("score")
        .and_then(Value::as_f64)
        .filter(|x| (0.0..=1.0).contains(x))
        .ok_or_else(|| bad("score", "must be a number from 0 to 1"))?;
    s.writable_store()?;
    s.router.record_score(&model, &kind, score);
    Ok(Json(json!({"scores": s.router.scores()})))
}

//! `/api/v1/memory`: remember, recall, browse, get, update, delete, pin, namespaces,
//! consolidation, export and import (JSON Lines). Every write answers after its redb
//! transaction is durable. Until the console's authentication lands, the API caller is the
//! operator (full access); agents get their own `Access` through the runtime.

use super::{ApiError, Routes, Shared};
use crate::memory::{Access, Memory, MemoryError, NewRecord, Query, RecordUpdate, Tier};
use axum::body::Bytes;
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;

/// Largest import body (JSON Lines).
pub const MAX_IMPORT_BODY: usize = 32 << 20;

impl From<MemoryError> for ApiError {
    fn from(e: MemoryError) -> Self {
        use crate::memory::InputError;
        match e {
            MemoryError::Input(InputError::Invalid(m)) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid", m)
            }
            MemoryError::Input(InputError::TooLarge(m)) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m)
            }
            MemoryError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            e @ MemoryError::UnknownNamespace(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_namespace", e.to_string())
            }
            MemoryError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            MemoryError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ MemoryError::Embedding(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "embedding", e.to_string())
            }
            MemoryError::Store(s) => crate::store::StoreError::from(s).into(),
        }
    }
}

/// The memory routes.
pub fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/memory", get(overview))
        .route("/api/v1/memory/namespaces", get(namespaces))
        .route(
            "/api/v1/memory/namespaces/{ns}",
            put(put_namespace).delete(delete_namespace),
        )
        .route("/api/v1/memory/records", post(remember).get(list))
        .route(
            "/api/v1/memory/records/{id}",
            get(read).patch(update).delete(remove),
        )
        .route("/api/v1/memory/records/{id}/pin", post(pin))
        .route("/api/v1/memory/records/{id}/unpin", post(unpin))
        .route("/api/v1/memory/recall", post(recall))
        .route("/api/v1/memory/consolidate", post(consolidate))
        .route("/api/v1/memory/consolidations", get(consolidations))
        .route("/api/v1/memory/consolidations/{id}/undo", post(undo))
        .route("/api/v1/memory/export", get(export))
}

/// The import route, with its own (larger) body limit.
pub fn import_routes() -> Routes {
    Routes::new()
        .route("/api/v1/memory/import", post(import))
        .body_limit(MAX_IMPORT_BODY)
}

fn memory(s: &Shared) -> Result<Arc<Memory>, ApiError> {
    s.memory.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read_only",
            format!(
                "memory is unavailable: {}",
                s.degraded
                    .as_deref()
                    .unwrap_or("the data partition is unavailable")
            ),
        )
    })
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not a valid request: {e}"),
        )
    })
}

/// Runs blocking memory work (redb fsync, embedding) off the async workers.
async fn blocking<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&Memory) -> Result<T, MemoryError> + Send + 'static,
) -> Result<T, ApiError> {
    let m = memory(s)?;
    tokio::task::spawn_blocking(move || f(&m))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn overview(State(s): State<Shared>) -> Result<Response, ApiError> {
    let v = blocking(&s, |m| {
        let a = Access::admin();
        Ok(json!({"store": m.stats()?, "namespaces": to_json(&m.namespaces(&a)?)}))
    })
    .await?;
    Ok(axum::Json(v).into_response())
}

async fn namespaces(State(s): State<Shared>) -> Result<Response, ApiError> {
    let v = blocking(&s, |m| Ok(to_json(&m.namespaces(&Access::admin())?))).await?;
    Ok(axum::Json(json!({"namespaces": v})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceBody {
    quota: Option<u64>,
}

async fn put_namespace(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: NamespaceBody = if body.is_empty() {
        NamespaceBody { quota: None }
    } else {
        parse(&body)?
    };
    let info = blocking(&s, move |m| {
        m.put_namespace(&Access::admin(), &ns, b.quota)
            .map(|i| json!({"namespace": ns, "info": to_json(&i), "durable": true}))
    })
    .await?;
    Ok(axum::Json(info).into_response())
}

async fn delete_namespace(
    State(s): State<Shared>,
    Path(ns): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&s, move |m| m.delete_namespace(&Access::admin(), &ns)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remember(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let new: NewRecord = parse(&body)?;
    let r = blocking(&s, move |m| m.remember(&Access::admin(), new)).await?;
    let status = if r.deduplicated.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut v = to_json(&r);
    v["durable"] = json!(true);
    Ok((status, axum::Json(v)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    namespace: Option<String>,
    tier: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list(
    State(s): State<Shared>,
    UrlQuery(p): UrlQuery<ListParams>,
) -> Result<Response, ApiError> {
    let tier = p
        .tier
        .as_deref()
        .map(Tier::parse)
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e))?;
    let page = blocking(&s, move |m| {
        m.list(
            &Access::admin(),
            p.namespace.as_deref().unwrap_or("shared"),
            tier,
            p.after.unwrap_or(0),
            p.limit.unwrap_or(50),
        )
    })
    .await?;
    Ok(axum::Json(to_json(&page)).into_response())
}

fn id_of(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("record id {raw:?} is not a number"),
        )
    })
}

async fn read(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = id_of(&id)?;
    let r = blocking(&s, move |m| m.get(&Access::admin(), id)).await?;
    Ok(axum::Json(to_json(&r)).into_response())
}

async fn update(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = id_of(&id)?;
    let u: RecordUpdate = parse(&body)?;
    let r = blocking(&s, move |m| m.update(&Access::admin(), id, u)).await?;
    Ok(axum::Json(json!({"record": to_json(&r), "durable": true})).into_response())
}

async fn remove(State(s): State<Shared>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = id_of(&id)?;
    blocking(&s, move |m| m.delete(&Access::admin(), id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_pin(s: Shared, id: &str, pinned: bool) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let r = blocking(&s, move |m| {
        m.update(
            &Access::admin(),
            id,
            RecordUpdate {
                pinned: Some(pinned),
                ..Default::default()
            },
        )
    })
    .await?;
    Ok(axum::Json(json!({"record": to_json(&r), "durable": true})).into_response())
}

async fn pin(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    set_pin(s, &id, true).await
}

async fn unpin(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    set_pin(s, &id, false).await
}

async fn recall(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let q: Query = parse(&body)?;
    let r = blocking(&s, move |m| m.recall(&Access::admin(), &q)).await?;
    Ok(axum::Json(to_json(&r)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsolidateBody {
    namespace: String,
    /// Only episodic records at least this old are consolidated (default one hour).
    min_age_s: Option<u64>,
    /// Use the local chat model for summaries (default true when one exists).
    llm: Option<bool>,
}

async fn consolidate(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let b: ConsolidateBody = parse(&body)?;
    let summarizer = if b.llm.unwrap_or(true) {
        crate::memory::models::local_summarizer(&s.inference)
    } else {
        None
    };
    let r = blocking(&s, move |m| {
        m.consolidate(
            &Access::admin(),
            &b.namespace,
            b.min_age_s.unwrap_or(3600).saturating_mul(1000),
            summarizer
                .as_ref()
                .map(|x| x as &dyn crate::memory::Summarizer),
        )
    })
    .await?;
    Ok(axum::Json(to_json(&r)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NsParam {
    namespace: Option<String>,
}

async fn consolidations(
    State(s): State<Shared>,
    UrlQuery(p): UrlQuery<NsParam>,
) -> Result<Response, ApiError> {
    let v = blocking(&s, move |m| {
        let list =
            m.consolidations(&Access::admin(), p.namespace.as_deref().unwrap_or("shared"))?;
        Ok(list
            .into_iter()
            .map(|(id, c)| json!({"summary": id, "consolidation": to_json(&c)}))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(axum::Json(json!({"consolidations": v})).into_response())
}

async fn undo(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = id_of(&id)?;
    let released = blocking(&s, move |m| m.undo_consolidation(&Access::admin(), id)).await?;
    Ok(axum::Json(json!({"undone": id, "released": released, "durable": true})).into_response())
}

async fn export(
    State(s): State<Shared>,
    UrlQuery(p): UrlQuery<NsParam>,
) -> Result<Response, ApiError> {
    let body = blocking(&s, move |m| {
        m.export(&Access::admin(), p.namespace.as_deref().unwrap_or("shared"))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

async fn import(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let text = String::from_utf8(body.to_vec()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
            format!("the body is not UTF-8: {e}"),
        )
    })?;
    let r = blocking(&s, move |m| m.import(&Access::admin(), &text)).await?;
    let rejected: Vec<Value> = r
        .rejected
        .iter()
        .map(|(line, why)| json!({"line": line, "error": why}))
        .collect();
    Ok(axum::Json(json!({
        "imported": r.imported,
        "ids": r.ids,
        "rejected": rejected,
        "stopped": r.stopped,
    }))
    .into_response())
}

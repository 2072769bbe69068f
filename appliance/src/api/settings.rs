//! `/api/v1/settings`: small JSON values, durably stored.

use super::{ApiError, Routes, Shared};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Map, Value, json};

pub(super) fn routes() -> Routes {
    Routes::new().route("/api/v1/settings", get(list)).route(
        "/api/v1/settings/{key}",
        get(read).put(write).delete(remove),
    )
}

/// Largest stored value.
const MAX_VALUE: usize = 16 * 1024;

fn check_key(key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_key",
            "setting names are 1-128 letters, digits, '.', '_' or '-'",
        ))
    }
}

fn store_of(s: &Shared) -> Result<&crate::store::Store, ApiError> {
    s.store.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read_only",
            "settings are unavailable in degraded mode",
        )
    })
}

async fn list(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let mut map = Map::new();
    for (k, v) in store_of(&s)?.settings()? {
        map.insert(k, serde_json::from_str(&v).unwrap_or(Value::Null));
    }
    Ok(Json(json!({ "settings": map })))
}

async fn read(State(s): State<Shared>, Path(key): Path<String>) -> Result<Json<Value>, ApiError> {
    check_key(&key)?;
    match store_of(&s)?.setting(&key)? {
        Some(v) => Ok(Json(
            json!({"key": key, "value": serde_json::from_str::<Value>(&v).unwrap_or(Value::Null)}),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no setting {key:?}"),
        )),
    }
}

async fn write(
    State(s): State<Shared>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_key(&key)?;
    if body.len() > MAX_VALUE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("values are limited to {MAX_VALUE} bytes"),
        ));
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body must be JSON: {e}"),
        )
    })?;
    s.writable_store()?;
    let text = value.to_string();
    // Blocking fsync off the async workers.
    let s2 = s.clone();
    let k2 = key.clone();
    tokio::task::spawn_blocking(move || {
        s2.writable_store()
            .and_then(|st| st.put_setting(&k2, &text).map_err(ApiError::from))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(json!({"key": key, "value": value, "durable": true})))
}

async fn remove(State(s): State<Shared>, Path(key): Path<String>) -> Result<StatusCode, ApiError> {
    check_key(&key)?;
    let s2 = s.clone();
    let existed = tokio::task::spawn_blocking(move || {
        s2.writable_store()
            .and_then(|st| st.delete_setting(&key).map_err(ApiError::from))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    })
}

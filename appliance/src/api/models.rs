//! `/api/v1/models`: local models with their load state, and loading one ahead of use with
//! progress the console can show.

use super::{ApiError, Routes, Shared};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/models", get(list))
        .route("/api/v1/models/{id}/load", post(load))
}

async fn list(State(s): State<Shared>) -> Json<Value> {
    Json(json!({
        "device": s.inference.device(),
        "models": s.inference.list(),
        "warnings": s.inference.warnings(),
    }))
}

/// Starts loading a model in the background (202); its progress shows in the list.
async fn load(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(m) = s.inference.list().into_iter().find(|m| m.id == id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!("no local model {id:?}"),
        ));
    };
    if m.loaded {
        return Ok((StatusCode::OK, Json(json!({"id": id, "loaded": true}))));
    }
    if m.load.as_ref().is_some_and(|l| l.error.is_none()) {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "loading": true})),
        ));
    }
    // Visible as "loading" from this answer on, before the worker thread starts.
    s.inference.set_load(&id, 0, 0);
    let inference = s.inference.clone();
    let model = id.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = inference.load(&model) {
            tracing::warn!("{e}");
        }
    });
    crate::events::emit("model.load", &id, "info", format!("loading {id}"));
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "loading": true})),
    ))
}

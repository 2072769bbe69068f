//! `/api/v1/models`: local models with their load state, loading one ahead of use with
//! progress the console can show, unloading, and models added on a running box: a GGUF file
//! uploaded with its SHA-256 (checked, then its header, architecture and tokenizer), kept on
//! the data partition (`models/ID.gguf`) and registered in `models.toml` without a restart.

use super::{ApiError, Routes, Shared};
use crate::inference::{InferenceError, Registered};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// Header carrying the uploaded file's SHA-256 (hex).
pub const SHA256_HEADER: &str = "x-cairn-sha256";
/// Largest model file accepted.
pub const MAX_MODEL_FILE: u64 = 64 << 30;
/// Bytes kept free on the data partition while a model is uploaded.
const UPLOAD_RESERVE: u64 = 256 << 20;
/// Folder of uploaded models inside the data directory.
pub const UPLOAD_DIR: &str = "models";

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/models", get(list))
        .route("/api/v1/models/{id}/load", post(load))
        .route("/api/v1/models/{id}/unload", post(unload))
}

/// The upload route (its body is the model file, streamed, under its own limit).
pub(super) fn upload_routes() -> Routes {
    Routes::new()
        .route("/api/v1/models/{id}", put(upload).delete(remove))
        .body_limit(usize::try_from(MAX_MODEL_FILE).unwrap_or(usize::MAX))
}

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        let msg = e.to_string();
        match e {
            InferenceError::Unknown(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_model", msg)
            }
            InferenceError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "model_exists", msg),
            InferenceError::Builtin(_) => ApiError::new(StatusCode::CONFLICT, "builtin_model", msg),
            InferenceError::WrongKind { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "wrong_kind", msg)
            }
            InferenceError::Load { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_load", msg)
            }
            InferenceError::Registry(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
            }
        }
    }
}

/// Whether `id` may name an uploaded model: 1-64 of `a-z 0-9 . _ -`, not starting with `.`.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Ids being uploaded now (one upload per id at a time).
static UPLOADING: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

struct Uploading(String);

impl Uploading {
    fn take(id: &str) -> Option<Uploading> {
        let mut set = UPLOADING.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id.to_string())
            .then(|| Uploading(id.to_string()))
    }
}

impl Drop for Uploading {
    fn drop(&mut self) {
        UPLOADING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// Removes uploads a crash or a power cut interrupted (`models/.upload-*`); called at start,
/// before any upload can run.
pub fn remove_partial_uploads(data_dir: &std::path::Path) {
    let Ok(dir) = std::fs::read_dir(data_dir.join(UPLOAD_DIR)) else {
        return;
    };
    for e in dir.flatten() {
        if e.file_name().to_string_lossy().starts_with(".upload-") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::warn!(
                    "removed an interrupted model upload: {}",
                    e.path().display()
                ),
                Err(err) => tracing::warn!("{}: {err}", e.path().display()),
            }
        }
    }
}

fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, msg)
}

/// Checks that `path` is a GGUF chat model this build runs: header, architecture and settings,
/// tokenizer.
fn check_gguf(path: &std::path::Path) -> Result<(), String> {
    let f =
        cairn_models::gguf::GgufFile::open(path).map_err(|e| format!("not a GGUF model: {e}"))?;
    cairn_models::llama::Config::from_gguf(&f).map_err(|e| e.to_string())?;
    cairn_models::tokenizer::GgufTokenizer::from_gguf(&f.header)
        .map_err(|e| format!("its tokenizer: {e}"))?;
    Ok(())
}

/// `PUT /api/v1/models/{id}`: the body is a GGUF chat model; `X-Cairn-Sha256` its hash.
async fn upload(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    if !valid_id(&id) {
        return Err(bad(
            "invalid_id",
            "a model id is 1-64 of a-z, 0-9, '.', '_' and '-', not starting with '.'",
        ));
    }
    let want = headers
        .get(SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            bad(
                "missing_sha256",
                format!("send the file's SHA-256 (64 hex digits) in the {SHA256_HEADER} header"),
            )
        })?;
    s.writable_store()?;
    if s.inference.list().iter().any(|m| m.id == id) {
        return Err(InferenceError::Exists(id).into());
    }
    let _one = Uploading::take(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "busy",
            format!("model {id:?} is being uploaded already"),
        )
    })?;
    let dir = s.data_dir.join(UPLOAD_DIR);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| crate::store::StoreError::from_io(format!("creating {}", dir.display()), e))?;
    let partial = dir.join(format!(".upload-{id}"));
    let target = dir.join(format!("{id}.gguf"));
    let result = async {
        let mut file = tokio::fs::File::create(&partial).await.map_err(|e| {
            crate::store::StoreError::from_io(format!("creating {}", partial.display()), e)
        })?;
        let mut hash = Sha256::new();
        let (mut size, mut checked) = (0u64, 0u64);
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| bad("upload_cut", format!("the upload stopped: {e}")))?;
            size += chunk.len() as u64;
            if size > MAX_MODEL_FILE {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("model files are limited to {MAX_MODEL_FILE} bytes"),
                ));
            }
            if size - checked >= 64 << 20 || checked == 0 {
                checked = size;
                if crate::store::free_bytes(&dir).is_some_and(|free| free < UPLOAD_RESERVE) {
                    return Err(ApiError::new(
                        StatusCode::INSUFFICIENT_STORAGE,
                        "storage_full",
                        format!("the data partition is full after {size} bytes of the model"),
                    ));
                }
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| {
                crate::store::StoreError::from_io(format!("writing {}", partial.display()), e)
            })?;
        }
        file.sync_all().await.map_err(|e| {
            crate::store::StoreError::from_io(format!("writing {}", partial.display()), e)
        })?;
        let got = hex::encode(hash.finalize());
        if got != want {
            return Err(bad(
                "sha256_mismatch",
                format!("the upload's SHA-256 is {got}, not the {want} it was sent with (cut or altered on the way)"),
            ));
        }
        let p = partial.clone();
        tokio::task::spawn_blocking(move || check_gguf(&p))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
            .map_err(|why| bad("bad_model", why))?;
        tokio::fs::rename(&partial, &target).await.map_err(|e| {
            crate::store::StoreError::from_io(format!("moving to {}", target.display()), e)
        })?;
        let inference = s.inference.clone();
        let r = Registered {
            id: id.clone(),
            kind: "chat".into(),
            path: target.clone(),
        };
        let entry = tokio::task::spawn_blocking(move || inference.register(r))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        match entry {
            Ok(e) => Ok((size, got, e)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&target).await;
                Err(e.into())
            }
        }
    }
    .await;
    let _ = tokio::fs::remove_file(&partial).await;
    let (size, sha, entry) = result?;
    tracing::info!("model {id} uploaded: {size} bytes, sha256 {sha}");
    Ok((
        StatusCode::CREATED,
        Json(json!({"model": entry, "bytes": size, "sha256": sha})),
    ))
}

/// `DELETE /api/v1/models/{id}`: unloads and unregisters an operator's model and deletes its
/// uploaded file (a registered file elsewhere is left where it is).
async fn remove(State(s): State<Shared>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.writable_store()?;
    let inference = s.inference.clone();
    let gone = tokio::task::spawn_blocking(move || inference.remove(&id))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    if gone.path.starts_with(s.data_dir.join(UPLOAD_DIR)) {
        let _ = tokio::fs::remove_file(&gone.path).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/models/{id}/unload`: frees a loaded model's memory (it loads again on use).
async fn unload(State(s): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let was = s.inference.unload(&id)?;
    Ok(Json(json!({"id": id, "unloaded": was})))
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

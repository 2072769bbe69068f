//! `/api/v1/backup`: download an encrypted backup of the whole box, and restore one (also
//! during onboarding, with the setup code instead of a login). Contract: `docs/backup.md`.

use super::{ApiError, Routes, Shared};
use crate::auth::guard::PeerAddr;
use crate::backup::{BackupError, Source};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};

/// Header carrying the backup's passphrase on a restore.
pub const PASSPHRASE_HEADER: &str = "x-cairn-passphrase";
/// Header carrying the setup code on a restore during onboarding.
pub const SETUP_CODE_HEADER: &str = "x-cairn-setup-code";
/// Largest backup accepted for a restore (the data partition's free space bounds it first).
pub const MAX_RESTORE_BYTES: u64 = 64 << 30;

pub(super) fn routes() -> Routes {
    Routes::new().route("/api/v1/backup", post(create))
}

/// The restore route: its body is the archive, streamed (its own limit, not the 64 KiB one).
pub(super) fn restore_routes() -> Routes {
    Routes::new()
        .route("/api/v1/backup/restore", post(restore))
        .body_limit(usize::try_from(MAX_RESTORE_BYTES).unwrap_or(usize::MAX))
}

/// One backup or restore at a time, box-wide.
static BUSY: AtomicBool = AtomicBool::new(false);

struct Busy;

impl Busy {
    fn take() -> Result<Busy, BackupError> {
        BUSY.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| Busy)
            .map_err(|_| BackupError::Busy)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::SeqCst);
    }
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        let msg = e.to_string();
        match e {
            BackupError::WrongPassphrase => {
                ApiError::new(StatusCode::BAD_REQUEST, "wrong_passphrase", msg).field("passphrase")
            }
            BackupError::Passphrase(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_passphrase", msg).field("passphrase")
            }
            BackupError::NotABackup(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "not_a_backup", msg)
            }
            BackupError::Damaged(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "damaged_backup", msg)
            }
            BackupError::Newer { .. } => ApiError::new(StatusCode::CONFLICT, "newer_backup", msg),
            BackupError::Busy => ApiError::new(StatusCode::CONFLICT, "busy", msg),
            BackupError::Full(_) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full", msg)
            }
            BackupError::Io { .. } | BackupError::Database(_) | BackupError::UnknownTable(_) => {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    crate::tls::error_chain(&e),
                )
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    passphrase: String,
    #[serde(default)]
    tls: bool,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// `POST /api/v1/backup`: answers the encrypted archive as a download.
async fn create(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let b: CreateBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body must be {{\"passphrase\": \"…\", \"tls\": false}}: {e}"),
        )
    })?;
    crate::backup::check_passphrase(&b.passphrase)?;
    let db = s.writable_store()?.database();
    let busy = Busy::take()?;
    let work = s
        .data_dir
        .join(crate::backup::WORK_DIR)
        .join(format!("create-{}", std::process::id()));
    let data_dir = s.data_dir.clone();
    let hostname = crate::sysinfo::hostname();
    let made = tokio::task::spawn_blocking(move || {
        let _busy = busy;
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)
            .map_err(|e| BackupError::io(format!("creating {}", work.display()), e))?;
        let path = work.join("backup.tar.age");
        let result = (|| {
            let file = std::fs::File::create(&path)
                .map_err(|e| BackupError::io(format!("creating {}", path.display()), e))?;
            let src = Source {
                db: &db,
                data_dir,
                tls: b.tls,
                hostname,
            };
            let manifest =
                crate::backup::create(&src, &b.passphrase, &work, std::io::BufWriter::new(file))?;
            // Opened before the scratch directory goes: the download reads the unlinked file.
            let file = std::fs::File::open(&path)
                .map_err(|e| BackupError::io(format!("opening {}", path.display()), e))?;
            Ok::<_, BackupError>((manifest, file))
        })();
        let _ = std::fs::remove_dir_all(&work);
        result
    })
    .await
    .map_err(internal)??;
    let (manifest, file) = made;
    let len = file.metadata().map_err(internal)?.len();
    let stamp = time::OffsetDateTime::from_unix_timestamp(manifest.created as i64)
        .map(|t| {
            format!(
                "{:04}{:02}{:02}-{:02}{:02}{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_default();
    let host: String = manifest
        .hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let name = format!("cairn-{host}-{stamp}.tar.age");
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut r = Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    tracing::info!("backup made: {len} bytes, schema {}", manifest.schema);
    Ok(r)
}

/// A blocking reader over the request body's chunks, handed over by the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    chunk: Bytes,
    total: u64,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        self.total += n as u64;
        if self.total > MAX_RESTORE_BYTES {
            return Err(std::io::Error::other(format!(
                "the upload is larger than {MAX_RESTORE_BYTES} bytes"
            )));
        }
        Ok(n)
    }
}

/// `POST /api/v1/backup/restore`: checks and stages the uploaded backup, answers 202, and
/// restarts the appliance, which swaps it in before it opens anything.
async fn restore(
    State(s): State<Shared>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let onboarding = !s.auth.onboarded();
    if onboarding {
        let code = headers
            .get(SETUP_CODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        super::auth::check_setup_code(&s, peer, code)?;
    }
    let passphrase = headers
        .get(PASSPHRASE_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_passphrase",
                format!("send the backup's passphrase in the {PASSPHRASE_HEADER} header"),
            )
            .field("passphrase")
        })?;
    s.writable_store()?;
    let busy = Busy::take()?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let pump = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("the upload stopped: {e}"),
                )
            });
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    let data_dir = s.data_dir.clone();
    let staged = tokio::task::spawn_blocking(move || {
        let _busy = busy;
        let reader = ChannelReader {
            rx,
            chunk: Bytes::new(),
            total: 0,
        };
        crate::backup::stage(&data_dir, reader, &passphrase)
    })
    .await
    .map_err(internal)?;
    pump.abort();
    let (manifest, files) = staged?;
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    // Init applies host name and network at boot.
    let machine = files.iter().any(|f| f.path == "etc/cairn.toml");
    tracing::warn!(
        "restore staged: backup of {:?} made by Cairn {} at {}; restarting to apply it",
        manifest.hostname,
        manifest.cairn,
        manifest.created
    );
    if onboarding {
        super::auth::audit_public(
            &s,
            "(setup code)".into(),
            "/api/v1/backup/restore",
            StatusCode::ACCEPTED.as_u16(),
        );
    }
    // Answered first; the restart follows once the answer is on its way.
    s.request_restart();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "backup": manifest,
            "files": files.len(),
            "bytes": bytes,
            "restarting": true,
            "machine_settings_at_next_boot": machine,
        })),
    )
        .into_response())
}

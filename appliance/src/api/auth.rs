//! `/api/v1/auth/*`: onboarding, login, logout, password change and API tokens, and the
//! operator audit log (`/api/v1/audit/actions`). Contract: `docs/console.md`.

use super::{ApiError, Routes, Shared};
use crate::auth::guard::PeerAddr;
use crate::auth::{AuditEntry, AuthError, COOKIE, Caller, NewSession, SESSION_MAX, Scope};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/auth/state", get(state))
        .route("/api/v1/auth/onboard", post(onboard))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/password", post(password))
        .route("/api/v1/auth/tokens", get(tokens).post(create_token))
        .route("/api/v1/auth/tokens/{id}", delete(revoke_token))
        .route("/api/v1/audit/actions", get(audit))
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let msg = e.to_string();
        match e {
            AuthError::Invalid { field, message } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid", message).field(field)
            }
            AuthError::BadCode => {
                ApiError::new(StatusCode::FORBIDDEN, "bad_code", msg).field("code")
            }
            AuthError::Onboarded => ApiError::new(StatusCode::CONFLICT, "onboarded", msg),
            AuthError::BadCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "bad_credentials", msg).field("password")
            }
            AuthError::Locked(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "locked", msg),
            AuthError::Store(e) => e.into(),
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body must be a JSON object with the documented fields: {e}"),
        )
    })
}

fn user_json(name: &str, scope: Scope) -> Value {
    json!({"name": name, "scope": scope.name()})
}

fn session_cookie(value: &str, max_age: u64) -> HeaderValue {
    let c =
        format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn logged_in(s: NewSession) -> Response {
    let mut r = Json(json!({"user": user_json(&s.user, s.scope), "csrf": s.csrf})).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&s.id, SESSION_MAX));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

fn addr_key(peer: Option<Extension<PeerAddr>>) -> String {
    peer.map(|Extension(PeerAddr(a))| format!("addr:{}", a.ip()))
        .unwrap_or_else(|| "addr:unknown".into())
}

fn locked(s: &Shared, keys: &[&str]) -> Result<(), ApiError> {
    if let Some(d) = keys
        .iter()
        .filter_map(|k| {
            if k.starts_with("addr:") {
                s.auth.by_addr.locked(k)
            } else {
                s.auth.by_user.locked(k)
            }
        })
        .max()
    {
        let mut e = ApiError::from(AuthError::Locked(d.as_secs().max(1)));
        e.retry_after = Some(d.as_secs().max(1));
        return Err(e);
    }
    Ok(())
}

/// Audits a POST to a public route (the guard only audits authenticated callers).
fn audit_public(s: &Shared, actor: String, path: &str, status: u16) {
    crate::auth::guard::record_later(
        s.auth.clone(),
        AuditEntry {
            time: crate::auth::unix_now(),
            actor,
            method: "POST".into(),
            path: path.into(),
            status,
        },
    );
}

async fn state(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let session = crate::auth::guard::cookie(&headers, COOKIE).and_then(|c| s.auth.session(c));
    let (user, csrf) = match session {
        Some((c, csrf)) => (user_json(&c.name, c.scope), Value::String(csrf)),
        None => (Value::Null, Value::Null),
    };
    let mut r = Json(json!({
        "onboarded": s.auth.onboarded(),
        "fingerprint": s.certs.fingerprint(),
        "user": user,
        "csrf": csrf,
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct OnboardBody {
    code: String,
    username: String,
    password: String,
}

async fn onboard(
    State(s): State<Shared>,
    peer: Option<Extension<PeerAddr>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: OnboardBody = parse(&body)?;
    let addr = addr_key(peer);
    locked(&s, &[&addr])?;
    let auth = s.auth.clone();
    let user = b.username.clone();
    let result = blocking(move || auth.onboard(&b.code, &b.username, &b.password)).await;
    if let Err(e) = &result
        && e.code == "bad_code"
    {
        s.auth.by_addr.fail(&addr);
    }
    let session = result?;
    audit_public(&s, user, "/api/v1/auth/onboard", 200);
    Ok(logged_in(session))
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(s): State<Shared>,
    peer: Option<Extension<PeerAddr>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: LoginBody = parse(&body)?;
    let addr = addr_key(peer);
    let user_key = b.username.to_ascii_lowercase();
    locked(&s, &[&user_key, &addr])?;
    let auth = s.auth.clone();
    let name = b.username.clone();
    let result = blocking(move || auth.login(&b.username, &b.password)).await;
    let status = match &result {
        Ok(_) => {
            s.auth.by_user.clear(&user_key);
            s.auth.by_addr.clear(&addr);
            200
        }
        Err(_) => {
            let by_user = s.auth.by_user.fail(&user_key);
            let by_addr = s.auth.by_addr.fail(&addr);
            if let Some(d) = by_user.or(by_addr) {
                tracing::warn!(
                    "login: {name:?} locked for {} s after repeated failures",
                    d.as_secs()
                );
            }
            401
        }
    };
    audit_public(&s, name, "/api/v1/auth/login", status);
    Ok(logged_in(result?))
}

async fn logout(
    State(s): State<Shared>,
    Extension(c): Extension<Caller>,
) -> Result<Response, ApiError> {
    if let Some(key) = c.session {
        let auth = s.auth.clone();
        blocking(move || auth.end_session(&key)).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0));
    Ok(r)
}

#[derive(Deserialize)]
struct PasswordBody {
    current: String,
    password: String,
}

async fn password(
    State(s): State<Shared>,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    if c.session.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "passwords are changed from a console session, not with an API token",
        ));
    }
    let b: PasswordBody = parse(&body)?;
    let auth = s.auth.clone();
    blocking(move || auth.change_password(&c.name, &b.current, &b.password, c.session.as_deref()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tokens(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"tokens": s.auth.tokens()}))
}

#[derive(Deserialize)]
struct TokenBody {
    name: String,
    scope: String,
}

async fn create_token(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let b: TokenBody = parse(&body)?;
    let scope = Scope::parse(&b.scope).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the scope is one of reader, operator, admin",
        )
        .field("scope")
    })?;
    let auth = s.auth.clone();
    let (info, token) = blocking(move || auth.create_token(&b.name, scope)).await?;
    let mut v = serde_json::to_value(&info).unwrap_or_default();
    v["token"] = token.into();
    let mut r = (StatusCode::CREATED, Json(v)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

async fn revoke_token(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let auth = s.auth.clone();
    if blocking(move || auth.revoke_token(&id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such token",
        ))
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(s): State<Shared>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let auth = s.auth.clone();
    let entries = blocking(move || auth.audit(limit)).await?;
    Ok(Json(json!({"entries": entries})))
}

//! `/api/v1/auth/*`: onboarding, login, logout, password change and API tokens, and the
//! operator audit log (`/api/v1/audit/actions`). Contract: `docs/console.md`.

use super::{ApiError, Routes, Shared};
use crate::auth::guard::PeerAddr;
use crate::auth::limiter::{InFlightGuard, Limiter};
use crate::auth::password::Permit;
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
            AuthError::Busy(_) => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", msg);
                e.retry_after = Some(1);
                e
            }
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

/// The right to check a password within one request: the client address's one in-flight
/// slot and a hashing permit. It is moved into the blocking task, so both stay taken until the
/// hashing ends even when the client goes away.
struct Attempt {
    _slot: InFlightGuard,
    permit: Permit,
}

/// Takes the address's slot and a hashing permit, or refuses at once (429 `busy`): password
/// checks are never queued.
fn begin(s: &Shared, addr: &str) -> Result<Attempt, ApiError> {
    let slot = s.auth.in_flight.try_enter(addr).ok_or(AuthError::Busy(
        "a password check from this address is in progress",
    ))?;
    let permit = s
        .auth
        .hashing
        .try_acquire()
        .ok_or(AuthError::Busy("the appliance is checking other passwords"))?;
    Ok(Attempt {
        _slot: slot,
        permit,
    })
}

/// Reserves one attempt on every `(limiter, key)` (each counts as a failure until refunded or
/// cleared), or refuses with 429 `locked` and `Retry-After` when one key is locked; nothing
/// stays reserved then.
fn reserve(keys: &[(&Limiter, &str)]) -> Result<(), ApiError> {
    for (i, (limiter, key)) in keys.iter().enumerate() {
        if let Err(d) = limiter.reserve(key) {
            for (l, k) in &keys[..i] {
                l.refund(k);
            }
            let secs = d.as_secs().max(1);
            let mut e = ApiError::from(AuthError::Locked(secs));
            e.retry_after = Some(secs);
            return Err(e);
        }
    }
    Ok(())
}

/// Checks the setup code of a public request made before onboarding (a restore): a wrong code
/// counts against the client's address like a wrong password.
pub(super) fn check_setup_code(
    s: &Shared,
    peer: Option<Extension<PeerAddr>>,
    code: &str,
) -> Result<(), ApiError> {
    let addr = addr_key(peer);
    reserve(&[(&s.auth.by_addr, addr.as_str())])?;
    s.auth.check_setup_code(code)?;
    s.auth.by_addr.refund(&addr);
    Ok(())
}

/// Audits a POST to a public route (the guard only audits authenticated callers).
pub(super) fn audit_public(s: &Shared, actor: String, path: &str, status: u16) {
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
    let attempt = begin(&s, &addr)?;
    reserve(&[(&s.auth.by_addr, addr.as_str())])?;
    let auth = s.auth.clone();
    let user = b.username.clone();
    let result = blocking(move || {
        let attempt = attempt;
        auth.onboard(&attempt.permit, &b.code, &b.username, &b.password)
    })
    .await;
    // Only a wrong setup code counts against the address.
    if !matches!(&result, Err(e) if e.code == "bad_code") {
        s.auth.by_addr.refund(&addr);
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
    // Nothing the caller sent is kept verbatim: a name that breaks the account rules (which
    // cannot exist) is audited and counted under a fixed placeholder.
    let valid = crate::auth::valid_name(&b.username);
    let name = crate::auth::audit_name(&b.username).to_string();
    let user_key = format!("{name}|{addr}");
    let attempt = begin(&s, &addr)?;
    reserve(&[
        (&s.auth.by_addr, addr.as_str()),
        (&s.auth.by_user, user_key.as_str()),
    ])?;
    let auth = s.auth.clone();
    let result = blocking(move || {
        let attempt = attempt;
        if !valid {
            return Err(AuthError::BadCredentials);
        }
        auth.login(&attempt.permit, &b.username, &b.password)
    })
    .await;
    let status = match &result {
        Ok(_) => {
            s.auth.by_user.clear(&user_key);
            s.auth.by_addr.clear(&addr);
            200
        }
        Err(e) if e.code == "bad_credentials" => {
            // The reservation stands as the failure.
            let locked = s
                .auth
                .by_user
                .locked(&user_key)
                .or(s.auth.by_addr.locked(&addr));
            if let Some(d) = locked {
                tracing::warn!(
                    "login: {name:?} from {addr} locked for {} s after repeated failures",
                    d.as_secs()
                );
            }
            401
        }
        Err(e) => {
            s.auth.by_user.refund(&user_key);
            s.auth.by_addr.refund(&addr);
            e.status.as_u16()
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
    peer: Option<Extension<PeerAddr>>,
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
    let addr = addr_key(peer);
    // Guessing the current password through this form counts like failed logins.
    let user_key = format!("{}|{addr}", c.name);
    let attempt = begin(&s, &addr)?;
    reserve(&[(&s.auth.by_user, user_key.as_str())])?;
    let auth = s.auth.clone();
    let result = blocking(move || {
        let attempt = attempt;
        auth.change_password(
            &attempt.permit,
            &c.name,
            &b.current,
            &b.password,
            c.session.as_deref(),
        )
    })
    .await;
    match &result {
        Ok(()) => s.auth.by_user.clear(&user_key),
        Err(e) if e.field == Some("current") => {}
        Err(_) => s.auth.by_user.refund(&user_key),
    }
    result?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tokens(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"tokens": s.auth.tokens()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    scope: String,
    /// Seconds from now, or `"never"`.
    #[serde(default)]
    expires_in: Option<Value>,
    /// Unix seconds.
    #[serde(default)]
    expires_at: Option<u64>,
}

/// When a new token expires (Unix seconds; `None`: never), from the request's
/// `expires_in`/`expires_at` (at most one), by default [`crate::auth::TOKEN_DEFAULT_LIFETIME`].
fn token_expiry(b: &TokenBody, now: u64) -> Result<Option<u64>, ApiError> {
    use crate::auth::{TOKEN_DEFAULT_LIFETIME, TOKEN_MAX_LIFETIME};
    let invalid = |field: &'static str, message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message).field(field)
    };
    let max_days = TOKEN_MAX_LIFETIME / 86_400;
    match (&b.expires_in, b.expires_at) {
        (Some(_), Some(_)) => Err(invalid(
            "expires_in",
            "give expires_in or expires_at, not both".into(),
        )),
        (None, None) => Ok(Some(now + TOKEN_DEFAULT_LIFETIME)),
        (None, Some(at)) if at > now && at - now <= TOKEN_MAX_LIFETIME => Ok(Some(at)),
        (None, Some(_)) => Err(invalid(
            "expires_at",
            format!(
                "expires_at is Unix seconds in the future, at most {max_days} days ahead \
                 (or use expires_in: \"never\")"
            ),
        )),
        (Some(Value::String(s)), None) if s == "never" => Ok(None),
        (Some(v), None) => match v.as_u64() {
            Some(secs) if (1..=TOKEN_MAX_LIFETIME).contains(&secs) => Ok(Some(now + secs)),
            _ => Err(invalid(
                "expires_in",
                format!(
                    "expires_in is a number of seconds from 1 to {TOKEN_MAX_LIFETIME} \
                     ({max_days} days), or \"never\""
                ),
            )),
        },
    }
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
    let expires = token_expiry(&b, crate::auth::unix_now())?;
    let auth = s.auth.clone();
    let (info, token) = blocking(move || auth.create_token(&b.name, scope, expires)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Result<TokenBody, ApiError> {
        parse(&Bytes::from(v.to_string()))
    }

    #[test]
    fn token_expiry_defaults_and_refusals() {
        let now = 1_000_000;
        let b = |v: Value| token_expiry(&body(v).unwrap(), now);
        let base = json!({"name": "ci", "scope": "reader"});
        let with = |k: &str, v: Value| {
            let mut x = base.clone();
            x[k] = v;
            x
        };
        assert_eq!(
            b(base.clone()).unwrap(),
            Some(now + crate::auth::TOKEN_DEFAULT_LIFETIME)
        );
        assert_eq!(b(with("expires_in", json!(60))).unwrap(), Some(now + 60));
        assert_eq!(b(with("expires_in", json!("never"))).unwrap(), None);
        assert_eq!(
            b(with("expires_at", json!(now + 5))).unwrap(),
            Some(now + 5)
        );
        for bad in [
            with("expires_in", json!(0)),
            with("expires_in", json!(-5)),
            with("expires_in", json!("forever")),
            with("expires_in", json!(u64::MAX)),
            with("expires_at", json!(now - 1)),
        ] {
            assert!(b(bad.clone()).is_err(), "{bad}");
        }
        let mut both = with("expires_in", json!(60));
        both["expires_at"] = json!(now + 60);
        assert_eq!(b(both).unwrap_err().field, Some("expires_in"));
        let e = body(with("expires", json!(60))).err().unwrap();
        assert_eq!(e.code, "bad_json", "unknown fields are refused");
    }
}

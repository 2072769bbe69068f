//! The middleware in front of every route: public paths pass, everything else needs a session
//! cookie (plus `X-CSRF-Token` on state-changing requests) or a bearer token whose scope
//! allows the request. Operator actions are written to the audit log after they are answered.

use super::{AuditEntry, Caller, Scope};
use crate::api::Shared;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

/// The client's address (a request extension set by the server for each connection).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Console pages anyone may load (the page itself; its data needs a login).
const PUBLIC_PAGES: &[&str] = &["/login", "/onboard"];

/// Whether `method path` is open to anonymous callers.
pub fn is_public(method: &Method, path: &str, onboarded: bool) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" => read,
        "/api/v1/auth/state" => read,
        "/api/v1/auth/login" => method == Method::POST,
        "/api/v1/auth/onboard" => method == Method::POST && !onboarded,
        // A freshly flashed box restores a backup instead of creating an administrator; the
        // handler checks the setup code.
        "/api/v1/backup/restore" => method == Method::POST && !onboarded,
        p if PUBLIC_PAGES.contains(&p) => read,
        p => read && p.starts_with("/assets/"),
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a request needs the admin scope.
fn admin_only(method: &Method, path: &str) -> bool {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    under("/api/v1/auth/tokens")
        || under("/api/v1/system/power")
        || under("/api/v1/backup")
        || (matches!(*method, Method::PUT | Method::DELETE) && path.starts_with("/api/v1/models/"))
        || (!is_safe(method)
            && (under("/api/v1/settings")
                || under("/api/v1/system/settings")
                || under("/api/v1/system/clock")
                || under("/api/v1/trust")
                || under("/api/v1/tls")
                || under("/api/v1/router/providers")
                || under("/api/v1/router/settings")))
}

/// Whether `scope` allows `method path`.
pub fn allows(scope: Scope, method: &Method, path: &str) -> bool {
    match scope {
        Scope::Admin => true,
        Scope::Operator => !admin_only(method, path),
        Scope::Reader => is_safe(method),
    }
}

/// Requests worth an audit entry: state changes other than inference and searches.
fn audited(method: &Method, path: &str) -> bool {
    !is_safe(method)
        && !path.starts_with("/v1/")
        && path != "/api/v1/memory/recall"
        && path != "/api/v1/workflows/validate"
}

/// The value of cookie `name`, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    crate::api::ApiError::new(status, code, message).into_response()
}

fn is_page(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !path.starts_with("/api/")
        && !path.starts_with("/v1/")
}

/// The middleware (see the module documentation).
pub async fn guard(State(s): State<Shared>, mut req: Request, next: Next) -> Response {
    if s.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        let mut r = crate::api::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the appliance is stopping or restarting; try again in a few seconds",
        );
        r.retry_after = Some(2);
        let mut r = r.into_response();
        // HTTP/1.1 only: HTTP/2 has no per-response connection header.
        if req.version() <= axum::http::Version::HTTP_11 {
            r.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        return r;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let auth = s.auth.clone();
    if is_public(&method, &path, auth.onboarded()) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let caller: Caller = if let Some(token) = bearer {
        match auth.token(token) {
            Ok(c) => c,
            Err(super::TokenRefusal::Expired(at)) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "token_expired",
                    &format!(
                        "the API token expired (at Unix time {at}); make a new one in the \
                         console's settings or with `cairn login`"
                    ),
                );
            }
            Err(super::TokenRefusal::Unknown) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "the API token is not valid (revoked, mistyped or from another appliance)",
                );
            }
        }
    } else if let Some((caller, csrf)) =
        cookie(headers, super::COOKIE).and_then(|c| auth.session(c))
    {
        if !is_safe(&method) {
            let sent = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !super::constant_eq(sent, &csrf) {
                return error(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "missing or wrong X-CSRF-Token header; reload the page",
                );
            }
        }
        caller
    } else if is_page(&method, &path) {
        let to = if auth.onboarded() {
            "/login"
        } else {
            "/onboard"
        };
        return (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    } else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "log in to the console or send an API token (Authorization: Bearer ...)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"cairn\""),
        );
        return r;
    };
    if !allows(caller.scope, &method, &path) {
        // Refused attempts are exactly what an audit log is for.
        record_later(
            auth,
            AuditEntry {
                time: super::unix_now(),
                actor: caller.name,
                method: method.to_string(),
                path: path.clone(),
                status: 403,
            },
        );
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "a {} credential may not {method} {path}",
                caller.scope.name()
            ),
        );
    }
    let actor = caller.name.clone();
    req.extensions_mut().insert(caller);
    let response = next.run(req).await;
    if audited(&method, &path) {
        let entry = AuditEntry {
            time: super::unix_now(),
            actor,
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
        };
        record_later(auth, entry);
    }
    response
}

/// Writes an audit entry off the request path.
pub fn record_later(auth: std::sync::Arc<super::Auth>, entry: AuditEntry) {
    let (kind, level) = match (entry.path.as_str(), entry.status) {
        ("/api/v1/auth/login" | "/api/v1/auth/onboard", 200) => ("auth.login", "info"),
        ("/api/v1/auth/login" | "/api/v1/auth/onboard", _) => ("auth.login", "warn"),
        (_, s) if s >= 400 => ("operator.action", "warn"),
        _ => ("operator.action", "info"),
    };
    crate::events::emit(
        kind,
        &entry.actor,
        level,
        format!("{} {} → {}", entry.method, entry.path, entry.status),
    );
    tokio::task::spawn_blocking(move || {
        if let Err(e) = auth.record(&entry) {
            tracing::warn!("audit: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_paths_are_few() {
        assert!(is_public(&Method::GET, "/healthz", true));
        assert!(is_public(&Method::GET, "/assets/app.js", true));
        assert!(!is_public(&Method::POST, "/assets/app.js", true));
        assert!(is_public(&Method::POST, "/api/v1/auth/onboard", false));
        assert!(!is_public(&Method::POST, "/api/v1/auth/onboard", true));
        assert!(!is_public(&Method::GET, "/api/v1/system", false));
        assert!(!is_public(&Method::GET, "/", true));
        assert!(!is_public(&Method::GET, "/login/../api/v1/system", true));
    }

    #[test]
    fn scopes() {
        let p = "/api/v1/settings/site";
        assert!(allows(Scope::Reader, &Method::GET, p));
        assert!(!allows(Scope::Reader, &Method::PUT, p));
        assert!(!allows(Scope::Operator, &Method::PUT, p));
        assert!(allows(Scope::Admin, &Method::PUT, p));
        assert!(allows(
            Scope::Operator,
            &Method::POST,
            "/api/v1/agents/echo/start"
        ));
        assert!(!allows(
            Scope::Operator,
            &Method::GET,
            "/api/v1/auth/tokens"
        ));
        assert!(!allows(
            Scope::Operator,
            &Method::POST,
            "/api/v1/system/power"
        ));
    }

    #[test]
    fn cookies_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; cairn_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "cairn_session"), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}

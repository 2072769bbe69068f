//! The web console: a small single-page app (plain HTML, CSS and ES modules in
//! `appliance/console/`, no build step) embedded in the binary and served from memory.
//!
//! Every page path answers the same `index.html`, so reloading any console URL works; the
//! script picks the page from the path. Assets are looked up by exact name in a fixed table,
//! so no request can reach the file system.

use crate::api::Routes;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The console's page paths: each answers `index.html`.
pub const PAGES: [&str; 13] = [
    "/",
    "/login",
    "/onboard",
    "/chat",
    "/agents",
    "/workflows",
    "/memory",
    "/models",
    "/events",
    "/audit",
    "/settings",
    "/backup",
    "/power",
];

/// The assets under `/assets/`: name, content type, bytes.
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/app.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/chart.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../console/icon.svg"),
    ),
];

const INDEX: &[u8] = include_bytes!("../console/index.html");

/// The page's Content-Security-Policy: only this origin, no inline script, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// The console's routes: the page paths and `GET /assets/{file}`.
pub fn routes() -> Routes {
    PAGES
        .iter()
        .fold(Routes::new(), |r, p| r.route(p, get(index)))
        .route("/assets/{file}", get(asset))
}

async fn index() -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The asset called exactly `name`, if there is one.
pub fn asset_named(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, t, b)| (*t, *b))
}

async fn asset(Path(file): Path<String>) -> Response {
    let Some((kind, bytes)) = asset_named(&file) else {
        return crate::api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset")
            .into_response();
    };
    let mut r = ([(header::CONTENT_TYPE, kind)], bytes).into_response();
    let h = r.headers_mut();
    // Assets change with the binary; revalidating is cheap next to stale code after an update.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_found_by_exact_name_only() {
        assert_eq!(
            asset_named("app.js").unwrap().0,
            "text/javascript; charset=utf-8"
        );
        assert!(asset_named("app.css").is_some());
        for bad in [
            "",
            "../lib.rs",
            "..%2Flib.rs",
            "APP.JS",
            "app.js/",
            "./app.js",
            "index.html",
        ] {
            assert!(asset_named(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_asset_the_page_names_is_served() {
        let html = std::str::from_utf8(INDEX).unwrap();
        for (name, _, _) in ASSETS {
            if name != "chart.js" {
                assert!(html.contains(&format!("/assets/{name}")), "{name}");
            }
        }
        let app = std::str::from_utf8(asset_named("app.js").unwrap().1).unwrap();
        assert!(app.contains("'/assets/chart.js'"));
        // No inline script: the CSP would refuse it.
        assert!(!html.contains("<script>") && !html.contains("onclick="));
    }

    #[test]
    fn every_page_is_a_route_of_the_script() {
        let app = std::str::from_utf8(asset_named("app.js").unwrap().1).unwrap();
        for p in PAGES {
            assert!(app.contains(&format!("'{p}':")), "{p}");
        }
    }
}

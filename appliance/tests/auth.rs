//! The management-access contract (`docs/console.md`) against a hosted `cairn serve`: every
//! route of the real route table refuses anonymous callers, onboarding needs the one-time code,
//! sessions are fixation-proof with safe cookie flags and CSRF protection, logins lock out,
//! token scopes hold, plain HTTP is redirected, bodies are capped, silent connections are
//! dropped, and the remote CLI pins the certificate on first contact.

#[path = "support/mod.rs"]
mod support;

use cairn_qemu::http;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{ADMIN, PASSWORD, Server, anonymous, call};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn addr(s: &Server) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.port))
}

/// A raw request (the path is sent exactly as written).
fn raw(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> http::Response {
    http::request_with(
        addr(s),
        method,
        path,
        headers,
        body,
        None,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

fn is_public(method: &str, path: &str, onboarded: bool) -> bool {
    let m = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
    cairn::auth::guard::is_public(&m, path, onboarded)
}

/// Every path of the route table, with parameters filled in, and a few unknown ones.
fn every_path() -> Vec<String> {
    let table = cairn::api::route_table();
    assert!(
        table.len() > 40,
        "the route table looks incomplete: {table:?}"
    );
    let mut paths: Vec<String> = table
        .iter()
        .map(|p| {
            p.split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    paths.extend(["/no/such/route", "/api/v1/nope", "/v1/nope"].map(String::from));
    paths
}

fn walk_anonymously(s: &Server, onboarded: bool) -> usize {
    let mut checked = 0;
    for path in every_path() {
        for method in METHODS {
            if is_public(method, &path, onboarded) {
                continue;
            }
            let r = raw(s, method, &path, &[], Some(b"{}"));
            let page = method == "GET" && !path.starts_with("/api/") && !path.starts_with("/v1/");
            if page {
                assert_eq!(r.status, 303, "{method} {path}: {}", r.text());
                let to = r.header("location").unwrap_or_default();
                assert!(
                    to == "/login" || to == "/onboard",
                    "{method} {path} -> {to}"
                );
            } else {
                assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
                assert_eq!(r.json().unwrap()["error"]["code"], "unauthenticated");
            }
            // A made-up token is no better than none.
            let r = raw(
                s,
                method,
                &path,
                &[("Authorization", "Bearer cairn_abcdef_0123")],
                Some(b"{}"),
            );
            assert_eq!(r.status, 401, "{method} {path} with a bad token");
            checked += 1;
        }
    }
    checked
}

fn set_cookie(r: &reqwest::Response) -> String {
    r.headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn login(
    c: &reqwest::Client,
    url: &str,
    user: &str,
    pass: &str,
    cookie: Option<&str>,
) -> (u16, Value, String) {
    let mut rb = c
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({"username": user, "password": pass}));
    if let Some(c) = cookie {
        rb = rb.header("cookie", c);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let cookie = set_cookie(&r);
    let mut v: Value = r.json().await.unwrap_or(Value::Null);
    if let Some(retry) = retry {
        v["retry_after"] = retry.into();
    }
    (status, v, cookie)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_anonymous_callers_and_sessions_follow_the_contract() {
    let work = tempfile::tempdir().unwrap();
    let models = work.path().join("no-models");
    std::fs::create_dir_all(&models).unwrap();
    let args = ["--models", models.to_str().unwrap()];
    let mut s = Server::spawn("auth", &work.path().join("data"), &args);
    let url = s.url.clone();
    let c = anonymous();

    // Not onboarded: the public surface is tiny, everything else refuses.
    let (st, state) = call(c.get(format!("{url}/api/v1/auth/state"))).await;
    assert_eq!((st, &state["onboarded"]), (200, &json!(false)), "{state}");
    assert_eq!(raw(&s, "GET", "/healthz", &[], None).status, 200);
    let checked = walk_anonymously(&s, false);
    assert!(checked > 100, "only {checked} method/path pairs checked");

    // Onboarding needs the code from the log; a wrong one names the field.
    let code = s.setup_code().expect("the log shows a setup code");
    let (st, v) = call(
        c.post(format!("{url}/api/v1/auth/onboard"))
            .json(&json!({"code": "AAAA-BBBB-CCCC", "username": ADMIN, "password": PASSWORD})),
    )
    .await;
    assert_eq!(
        (st, &v["error"]["code"], &v["error"]["field"]),
        (403, &json!("bad_code"), &json!("code")),
        "{v}"
    );
    let (st, v) = call(
        c.post(format!("{url}/api/v1/auth/onboard"))
            .json(&json!({"code": code, "username": ADMIN, "password": "short"})),
    )
    .await;
    assert_eq!((st, &v["error"]["field"]), (400, &json!("password")), "{v}");
    // Session fixation: a cookie the attacker planted before onboarding is not adopted.
    let r = c
        .post(format!("{url}/api/v1/auth/onboard"))
        .header("cookie", "cairn_session=planted-by-attacker")
        .json(&json!({"code": code, "username": ADMIN, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let flags = set_cookie(&r);
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(flags.contains(flag), "cookie lacks {flag}: {flags}");
    }
    let first = cookie_pair(&flags);
    assert!(!first.contains("planted"), "{first}");
    let csrf = r.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, _) = call(
        c.get(format!("{url}/api/v1/system"))
            .header("cookie", "cairn_session=planted-by-attacker"),
    )
    .await;
    assert_eq!(st, 401, "the planted id is not a session");
    // The code is void now; onboarding is no longer public.
    let (st, _) = call(
        c.post(format!("{url}/api/v1/auth/onboard"))
            .json(&json!({"code": code, "username": "second", "password": PASSWORD})),
    )
    .await;
    assert_eq!(st, 401);
    let checked = walk_anonymously(&s, true);
    assert!(checked > 100);

    // CSRF: a session may read freely, but writes need the token.
    let (st, _) = call(
        c.get(format!("{url}/api/v1/system"))
            .header("cookie", &first),
    )
    .await;
    assert_eq!(st, 200);
    let put = |cookie: &str, token: Option<&str>| {
        let mut rb = c
            .put(format!("{url}/api/v1/settings/site"))
            .header("cookie", cookie.to_string())
            .json(&json!("north-3"));
        if let Some(t) = token {
            rb = rb.header("x-csrf-token", t.to_string());
        }
        rb
    };
    let (st, v) = call(put(&first, None)).await;
    assert_eq!((st, &v["error"]["code"]), (403, &json!("csrf")), "{v}");
    let (st, _) = call(put(&first, Some("0".repeat(64).as_str()))).await;
    assert_eq!(st, 403);
    let (st, v) = call(put(&first, Some(&csrf))).await;
    assert_eq!(st, 200, "{v}");

    // A second login gets a different session; logout ends only that one.
    let (st, v, second) = login(&c, &url, ADMIN, PASSWORD, Some(&first)).await;
    assert_eq!(st, 200, "{v}");
    let second = cookie_pair(&second);
    assert_ne!(first, second);
    let csrf2 = v["csrf"].as_str().unwrap().to_string();
    let r = c
        .post(format!("{url}/api/v1/auth/logout"))
        .header("cookie", &second)
        .header("x-csrf-token", &csrf2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(set_cookie(&r).contains("Max-Age=0"));
    let (st, _) = call(
        c.get(format!("{url}/api/v1/system"))
            .header("cookie", &second),
    )
    .await;
    assert_eq!(st, 401, "a logged-out session is dead");
    let (st, _) = call(
        c.get(format!("{url}/api/v1/system"))
            .header("cookie", &first),
    )
    .await;
    assert_eq!(st, 200);

    // Tokens: scopes hold, secrets are shown once, revocation is immediate.
    let mk = |name: &str, scope: &str| {
        c.post(format!("{url}/api/v1/auth/tokens"))
            .header("cookie", first.clone())
            .header("x-csrf-token", csrf.clone())
            .json(&json!({"name": name, "scope": scope}))
    };
    let (st, v) = call(mk("bad", "root")).await;
    assert_eq!((st, &v["error"]["field"]), (400, &json!("scope")), "{v}");
    let (_, reader) = call(mk("reader", "reader")).await;
    let (_, operator) = call(mk("operator", "operator")).await;
    let reader_c = support::token_client(reader["token"].as_str().unwrap());
    let operator_c = support::token_client(operator["token"].as_str().unwrap());
    let (st, v) = call(reader_c.get(format!("{url}/api/v1/settings/site"))).await;
    assert_eq!((st, &v["value"]), (200, &json!("north-3")));
    let (st, v) = call(
        reader_c
            .put(format!("{url}/api/v1/settings/site"))
            .json(&json!("x")),
    )
    .await;
    assert_eq!((st, &v["error"]["code"]), (403, &json!("forbidden")), "{v}");
    let (st, _) = call(
        operator_c
            .put(format!("{url}/api/v1/settings/site"))
            .json(&json!("x")),
    )
    .await;
    assert_eq!(st, 403, "settings are for admins");
    let (st, _) = call(operator_c.get(format!("{url}/api/v1/auth/tokens"))).await;
    assert_eq!(st, 403);
    let (st, v) = call(
        operator_c
            .post(format!("{url}/api/v1/memory/records"))
            .json(&json!({"namespace": "shared", "text": "operators may write memory"})),
    )
    .await;
    assert!(st == 200 || st == 201 || st == 503, "{st} {v}");
    let (st, list) = call(
        c.get(format!("{url}/api/v1/auth/tokens"))
            .header("cookie", &first),
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        !list.to_string().contains(reader["token"].as_str().unwrap()),
        "secrets are never listed"
    );
    let id = reader["id"].as_str().unwrap();
    let (st, _) = call(
        c.delete(format!("{url}/api/v1/auth/tokens/{id}"))
            .header("cookie", &first)
            .header("x-csrf-token", &csrf),
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = call(reader_c.get(format!("{url}/api/v1/settings/site"))).await;
    assert_eq!(st, 401, "a revoked token is refused");

    // The audit log names who changed what.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, audit) = call(
        c.get(format!("{url}/api/v1/audit/actions?limit=100"))
            .header("cookie", &first),
    )
    .await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["actor"] == ADMIN
            && e["method"] == "PUT"
            && e["path"] == "/api/v1/settings/site"
            && e["status"] == 200),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "token:reader" && e["status"] == 403),
        "{audit}"
    );

    // Lockout: five wrong passwords lock the name, even for the right password, with Retry-After.
    for _ in 0..5 {
        let (st, v, _) = login(&c, &url, ADMIN, "wrong password!", None).await;
        assert_eq!(
            (st, &v["error"]["code"]),
            (401, &json!("bad_credentials")),
            "{v}"
        );
    }
    let (st, v, _) = login(&c, &url, ADMIN, PASSWORD, None).await;
    assert_eq!((st, &v["error"]["code"]), (429, &json!("locked")), "{v}");
    assert!(v["retry_after"].as_str().unwrap().parse::<u64>().unwrap() > 0);
    // Existing sessions are not affected by the lock.
    let (st, _) = call(
        c.get(format!("{url}/api/v1/system"))
            .header("cookie", &first),
    )
    .await;
    assert_eq!(st, 200);

    // Sessions and tokens survive a restart; the setup code does not come back.
    let token = operator["token"].as_str().unwrap().to_string();
    s.restart("auth-2", &args);
    assert!(
        s.setup_code().is_none(),
        "onboarded appliances print no code"
    );
    let (st, _) = call(
        c.get(format!("{url}/api/v1/system"))
            .header("cookie", &first),
    )
    .await;
    assert_eq!(st, 200, "the session survives a restart");
    let (st, _) = call(support::token_client(&token).get(format!("{url}/api/v1/system"))).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_https_only_body_caps_traversal_and_silent_clients() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start_temp("transport", &["--models", models.path().to_str().unwrap()]).await;
    let bearer = format!("Bearer {}", s.token);
    let auth = [("Authorization", bearer.as_str())];

    // Plain HTTP on the HTTPS port is redirected, never served.
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr(&s)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(b"GET /api/v1/system HTTP/1.1\r\nHost: box.local:8443\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = tcp.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 308"), "{text}");
    assert!(
        text.contains("Location: https://box.local:8443/api/v1/system"),
        "{text}"
    );
    assert!(!text.contains("hostname"), "no data over plain HTTP");

    // Oversized bodies get 413 (after authentication; anonymous ones 401 before any read).
    // Just over the 64 KiB management limit (small enough to fit the socket buffers, so the
    // client finishes writing before it reads the answer).
    let big = vec![b'"'; 70 * 1024];
    // The server answers (and closes) before it has read the whole body; its lingering close
    // still lets the client read the answer: every attempt shows the status.
    let statuses = |headers: &[(&str, &str)]| -> Vec<u16> {
        (0..5)
            .filter_map(|_| {
                http::request_with(
                    addr(&s),
                    "PUT",
                    "/api/v1/settings/big",
                    headers,
                    Some(&big),
                    None,
                    Duration::from_secs(60),
                )
                .ok()
                .map(|r| r.status)
            })
            .collect()
    };
    let seen = statuses(&auth);
    assert!(seen == [413; 5], "{seen:?}");
    // Anonymous: refused before the body is read, and the answer still reaches the client.
    let seen = statuses(&[]);
    assert!(seen == [401; 5], "{seen:?}");
    let small = http::request_with(
        addr(&s),
        "PUT",
        "/api/v1/settings/big",
        &[],
        Some(b"\"x\""),
        None,
        Duration::from_secs(60),
    )
    .expect("an anonymous write is answered");
    assert_eq!(small.status, 401);
    let (st, _) = call(s.client().get(format!("{}/api/v1/settings/big", s.url))).await;
    assert_eq!(st, 404, "nothing was stored");

    // Path traversal on the static routes never escapes them.
    for p in [
        "/assets/../api/v1/system",
        "/assets/../../../../etc/passwd",
        "/assets/..%2f..%2f..%2fetc%2fpasswd",
        "/assets/%2e%2e/%2e%2e/etc/passwd",
        "/assets/./../Cargo.toml",
        "/assets//etc/passwd",
    ] {
        let r = raw(&s, "GET", p, &[], None);
        assert!(
            r.status == 404 || r.status == 400,
            "{p}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("root:"), "{p}");
        assert!(!r.text().contains("hostname"), "{p}");
    }

    // The operator replaces the certificate: checked as a pair, served from the next
    // handshake, kept across restarts.
    let before = raw(&s, "GET", "/healthz", &[], None).fingerprint;
    let pair = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let ((cert, key), (_, other_key)) = (pair("box.example"), pair("other.example"));
    let c = s.client();
    let (st, v) = call(
        c.put(format!("{}/api/v1/tls", s.url))
            .json(&json!({"certificate": cert, "key": other_key})),
    )
    .await;
    assert_eq!((st, &v["error"]["field"]), (400, &json!("key")), "{v}");
    let (st, v) = call(
        c.put(format!("{}/api/v1/tls", s.url))
            .json(&json!({"certificate": "nope", "key": key})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(
        raw(&s, "GET", "/healthz", &[], None).fingerprint,
        before,
        "nothing changed"
    );
    let (st, v) = call(
        c.put(format!("{}/api/v1/tls", s.url))
            .json(&json!({"certificate": cert, "key": key})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let after = raw(&s, "GET", "/healthz", &[], None).fingerprint;
    assert_ne!(after, before);
    assert_eq!(v["fingerprint"], json!(after));
    let (_, sys) = call(c.get(format!("{}/api/v1/system", s.url))).await;
    assert_eq!(sys["tls_fingerprint"], json!(after));

    // A client that connects and says nothing is dropped (TLS handshake deadline), and one that
    // never finishes its headers too; the server keeps answering others meanwhile.
    let mut idle = std::net::TcpStream::connect(addr(&s)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let slow = std::thread::spawn({
        let a = addr(&s);
        move || slow_headers(a)
    });
    assert_eq!(raw(&s, "GET", "/healthz", &[], None).status, 200);
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the silent connection was closed");
    assert!(
        slow.join().unwrap(),
        "the slow-headers connection was closed"
    );
}

/// Completes a TLS handshake, sends half a request line and waits: true when the server closes.
fn slow_headers(addr: SocketAddr) -> bool {
    // The harness client sends whole requests; a raw rustls stream sends a partial one.
    use std::io::{Read, Write};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    tls.flush().unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    // Closed, possibly after a 408; never a served request.
    !text.contains("\"status\"")
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .env("CAIRN_CONFIG", config)
        .env_remove("CAIRN_TOKEN")
        .env_remove("CAIRN_REMOTE")
        .env_remove("CAIRN_FINGERPRINT")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_cli_pins_on_first_contact_and_uses_the_api() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start_temp("cli", &["--models", models.path().to_str().unwrap()]).await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("cli.toml");
    let (url, token) = (s.url.as_str(), s.token.as_str());
    let (_, system) = call(s.client().get(format!("{url}/api/v1/system"))).await;
    let fp = system["tls_fingerprint"].as_str().unwrap().to_string();

    // First contact: the certificate is pinned and shown for comparison with the banner.
    let (ok, out, err) = cli(&config, &["status", "--remote", url, "--token", token]);
    assert!(ok, "{out}{err}");
    assert!(err.contains("first contact") && err.contains(&fp), "{err}");
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains(&fp), "{saved}");
    // Later contacts use the pin silently.
    let (ok, _, err) = cli(&config, &["status", "--remote", url, "--token", token]);
    assert!(ok && !err.contains("first contact"), "{err}");

    // `login` saves URL and token: no flags needed afterwards.
    let (ok, out, err) = cli(&config, &["login", "--remote", url, "--token", token]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&config, &["settings", "set", "site", "north-3"]);
    assert!(ok && out.contains("north-3"), "{out}{err}");
    let (ok, out, _) = cli(&config, &["settings", "get", "site"]);
    assert!(ok && out.trim() == "\"north-3\"", "{out}");
    let (ok, out, _) = cli(&config, &["logs", "--limit", "500"]);
    assert!(ok && out.contains("listening on"), "{out}");
    let (ok, out, _) = cli(&config, &["audit"]);
    assert!(ok && out.contains("/api/v1/settings/site"), "{out}");
    // Machine settings: the host name at once, a network change on probation, a bad value
    // refused with the field's message; the event stream shows the operator's actions.
    let (ok, out, err) = cli(&config, &["machine", "hostname", "cli-box"]);
    assert!(
        ok && out.contains("cli-box") && out.contains("applied"),
        "{out}{err}"
    );
    let (ok, _, err) = cli(
        &config,
        &[
            "machine",
            "network",
            "static",
            "--address",
            "10.4.0.9/24",
            "--gateway",
            "10.5.0.1",
        ],
    );
    assert!(
        !ok && err.contains("422") && err.contains("10.5.0.1"),
        "{err}"
    );
    let (ok, out, err) = cli(
        &config,
        &[
            "machine",
            "network",
            "static",
            "--address",
            "10.4.0.9/24",
            "--dns",
            "10.4.0.1",
        ],
    );
    assert!(ok && out.contains("cairn machine confirm"), "{out}{err}");
    let (ok, out, err) = cli(&config, &["machine", "revert"]);
    assert!(ok && out.contains("restored"), "{out}{err}");
    let (ok, out, _) = cli(&config, &["machine", "show"]);
    let shown: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert!(ok && shown["settings"]["hostname"] == "cli-box", "{out}");
    assert_eq!(shown["settings"]["network"]["mode"], "dhcp", "{out}");
    let (ok, out, _) = cli(&config, &["events", "--kind", "machine"]);
    assert!(
        ok && out.contains("machine.settings") && out.contains("reverted"),
        "{out}"
    );
    assert!(!out.contains("operator.action"), "{out}");

    // A reader token made with the CLI may read but not write.
    let (ok, reader, err) = cli(
        &config,
        &["token", "create", "ci-reader", "--scope", "reader"],
    );
    assert!(ok && reader.trim().starts_with("cairn_"), "{reader}{err}");
    let reader = reader.trim();
    let (ok, _, _) = cli(&config, &["--token", reader, "settings", "get", "site"]);
    assert!(ok);
    let (ok, _, err) = cli(
        &config,
        &["--token", reader, "settings", "set", "site", "x"],
    );
    assert!(!ok && err.contains("403"), "{err}");

    // No token: a clear refusal with the hint.
    let bare = work.path().join("bare.toml");
    let (ok, _, err) = cli(&bare, &["status", "--remote", url]);
    assert!(
        !ok && err.contains("401") && err.contains("--token"),
        "{err}"
    );
    // Reboot asks for confirmation; hosted, the appliance says it cannot.
    let (ok, _, err) = cli(&config, &["reboot"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, _, err) = cli(&config, &["reboot", "--yes"]);
    assert!(!ok && err.contains("cairn-init"), "{err}");

    // A changed certificate is refused until the operator passes the new fingerprint.
    let saved = std::fs::read_to_string(&config).unwrap();
    let tampered = saved.replace(&fp, &["00"; 32].join(":"));
    std::fs::write(&config, tampered).unwrap();
    let (ok, _, err) = cli(&config, &["status"]);
    assert!(!ok && err.contains("not the pinned one"), "{err}");
    let (ok, _, err) = cli(&config, &["status", "--fingerprint", &fp]);
    assert!(ok, "{err}");

    // `login --user` with the password makes and saves a token of its own.
    let with_password = |config: &Path, password: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .env("CAIRN_CONFIG", config)
            .env("CAIRN_PASSWORD", password)
            .env_remove("CAIRN_TOKEN")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let user_cfg = work.path().join("user.toml");
    let (ok, err) = with_password(
        &user_cfg,
        "not the password",
        &["login", "--remote", url, "--user", ADMIN],
    );
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, err) = with_password(
        &user_cfg,
        PASSWORD,
        &["login", "--remote", url, "--user", ADMIN],
    );
    assert!(ok, "{err}");
    // A second login reuses the token the first one saved instead of minting another.
    let (ok, err) = with_password(
        &user_cfg,
        PASSWORD,
        &["login", "--remote", url, "--user", ADMIN],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&user_cfg, &["token", "list"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.matches(&format!("cli {ADMIN}@")).count(),
        1,
        "`cairn login` twice leaves one admin token: {out}"
    );
    let (ok, out, err) = cli(&user_cfg, &["settings", "get", "site"]);
    assert!(ok && out.contains("north-3"), "{out}{err}");

    // First boot from the CLI: onboarding with the code from the log.
    let fresh_data = tempfile::tempdir().unwrap();
    let fresh = Server::spawn(
        "cli-fresh",
        fresh_data.path(),
        &["--models", models.path().to_str().unwrap()],
    );
    let code = fresh.setup_code().expect("setup code");
    let fresh_cfg = work.path().join("fresh.toml");
    let (ok, err) = with_password(
        &fresh_cfg,
        PASSWORD,
        &[
            "onboard",
            "--remote",
            &fresh.url,
            "--code",
            "WRNG-WRNG-WRNG",
        ],
    );
    assert!(!ok && err.contains("setup code is not correct"), "{err}");
    let (ok, err) = with_password(
        &fresh_cfg,
        PASSWORD,
        &["onboard", "--remote", &fresh.url, "--code", &code],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&fresh_cfg, &["token", "list"]);
    assert!(ok && out.contains("cli admin@"), "{out}{err}");
}

/// A client whose connections leave from `local` (any 127/8 address reaches the server on Linux).
fn client_from(local: [u8; 4]) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .local_address(std::net::IpAddr::from(local))
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_logins_lock_per_address_and_tokens_expire() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start_temp("hardening", &["--models", models.path().to_str().unwrap()]).await;
    let url = s.url.clone();

    // 30 wrong passwords at once for one user from one address: the attempts are reserved
    // before hashing and one login per address runs at a time, so at most the lockout's five
    // reach argon2 (401) and the rest are refused at once (429).
    let c = client_from([127, 0, 0, 1]);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (c, url) = (c.clone(), url.clone());
        set.spawn(
            async move { login(&c, &url, ADMIN, &format!("wrong password {i}"), None).await },
        );
    }
    let (mut unauthorized, mut refused) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (st, v, _) = r.unwrap();
        match st {
            401 => unauthorized += 1,
            429 => {
                assert!(
                    v["retry_after"].as_str().is_some(),
                    "429 without Retry-After: {v}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(
        unauthorized <= cairn::auth::limiter::MAX_FAILURES && refused >= 25,
        "{unauthorized}×401, {refused}×429"
    );

    // Lock the administrator out from 127.0.0.1 (bounded: the lock comes within five failures).
    let mut locked = false;
    for i in 0..20 {
        let (st, v, _) = login(&c, &url, ADMIN, &format!("still wrong {i}"), None).await;
        if st == 429 && v["error"]["code"] == "locked" {
            locked = true;
            break;
        }
        assert!(st == 401 || st == 429, "{st} {v}");
    }
    assert!(locked, "repeated failures lock the name from this address");
    let (st, v, _) = login(&c, &url, ADMIN, PASSWORD, None).await;
    assert_eq!((st, &v["error"]["code"]), (429, &json!("locked")), "{v}");
    // … but not from another address.
    let other = client_from([127, 0, 0, 2]);
    let (st, v, _) = login(&other, &url, ADMIN, PASSWORD, None).await;
    assert_eq!(st, 200, "a lock caused from 127.0.0.1 stops 127.0.0.2: {v}");

    // A failed login's user name of any length is not stored verbatim in the audit.
    let long = format!("{}é", "x".repeat(5000));
    let third = client_from([127, 0, 0, 3]);
    let (st, v, _) = login(&third, &url, &long, "wrong password", None).await;
    assert_eq!(st, 401, "{v}");
    let admin = s.client();
    let mut seen = None;
    for _ in 0..100 {
        let (_, audit) = call(admin.get(format!("{url}/api/v1/audit/actions?limit=1000"))).await;
        let entries = audit["entries"].as_array().cloned().unwrap_or_default();
        assert!(
            entries
                .iter()
                .all(|e| e["actor"].as_str().unwrap_or_default().len() <= 64),
            "an audited actor is longer than a user name may be"
        );
        if let Some(e) = entries
            .iter()
            .find(|e| e["actor"] == cairn::auth::INVALID_NAME && e["path"] == "/api/v1/auth/login")
        {
            seen = Some(e.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.is_some(),
        "the failed login is audited under a placeholder"
    );

    // Tokens: an unknown field is refused; an expired token gets 401 with a clear message.
    let mk = |body: Value| admin.post(format!("{url}/api/v1/auth/tokens")).json(&body);
    let (st, v) = call(mk(json!({"name": "t0", "scope": "reader", "ttl": 5}))).await;
    assert_eq!(st, 400, "unknown fields are refused: {v}");
    let (st, v) = call(mk(json!({"name": "t1", "scope": "reader"}))).await;
    assert_eq!(st, 201, "{v}");
    let ninety = 90 * 24 * 3600;
    let left = v["expires"].as_u64().unwrap() - v["created"].as_u64().unwrap();
    assert_eq!(left, ninety, "the default lifetime: {v}");
    let (st, v) = call(mk(
        json!({"name": "t2", "scope": "reader", "expires_in": 1}),
    ))
    .await;
    assert_eq!(st, 201, "{v}");
    let short = support::token_client(v["token"].as_str().unwrap());
    let mut expired = None;
    // Bounded: the token lives one second; this is a did-not-hang guard, not a timing check.
    for _ in 0..300 {
        let (st, v) = call(short.get(format!("{url}/api/v1/system"))).await;
        if st == 401 {
            expired = Some(v);
            break;
        }
        assert_eq!(st, 200, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = expired.expect("a token past its expiry is refused");
    assert_eq!(v["error"]["code"], "token_expired", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
}

//! `cairn serve`: the HTTPS server, in the image (under cairn-init) or hosted.
//!
//! Start-up: open the store (a failure degrades to read-only mode instead of exiting, so the
//! operator can still see what is wrong), load or create the TLS identity, bind, tell init it
//! is ready. Connections are bounded in number (in all and per client address) and in time (a
//! handshake deadline, an idle deadline covering protocol detection and headers, body and write
//! deadlines, HTTP/2 stream and keep-alive limits: `conn.rs`), so idle or slow clients cannot
//! pin resources. SIGTERM stops accepting, lets requests in flight
//! finish (up to five seconds) and closes the database cleanly.

use crate::api::{self, AppState};
use crate::control::Control;
use crate::store::Store;
use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

/// How long a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client gets to send request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `cairn serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Data directory (the data partition in the image).
    pub data: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Running under cairn-init.
    pub appliance: bool,
    /// Degraded, read-only mode with this reason.
    pub degraded: Option<String>,
    /// Local models.
    pub inference: crate::inference::InferenceOptions,
    /// Connection limits and deadlines.
    pub limits: crate::conn::Limits,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// Whether the client's first byte is a TLS handshake record (0x16), waiting at most until the
/// handshake deadline for it.
async fn starts_with_tls(tcp: &tokio::net::TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        // Closed, failed or silent: let the TLS path fail it with its own deadline.
        _ => true,
    }
}

/// Answers a plain-HTTP request on the HTTPS port with a redirect to the `https://` URL.
async fn redirect_plain_http(mut tcp: tokio::net::TcpStream, port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let read_head = async {
        while len < buf.len() {
            match tcp.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    if tokio::time::timeout(HEADER_TIMEOUT, read_head)
        .await
        .is_err()
    {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with('/') && p.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or("/");
    let host = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("host")
                .then(|| v.trim().to_string())
        })
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or_else(|| format!("localhost:{port}"));
    let body = "This port speaks HTTPS only.\n";
    let response = format!(
        "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://{host}{path}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(response.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM or SIGINT: stop.
    Stop,
    /// The appliance asked to start again (a restore is staged).
    Restart,
}

/// Runs the server until SIGTERM/SIGINT or a restart request.
pub async fn run(opts: ServeOptions, control: Control) -> Result<Exit> {
    let started = Instant::now();
    let mut degraded = opts.degraded.clone();
    if degraded.is_none() {
        // A restore staged by the previous run goes into place before anything opens the data.
        let data = opts.data.clone();
        let staged = tokio::task::spawn_blocking(move || {
            crate::api::remove_partial_uploads(&data);
            crate::backup::apply_staged(&data)
        });
        match staged.await? {
            Ok(Some(m)) => warn!(
                "restored the backup of {:?} made by Cairn {} at {} (Unix time)",
                m.hostname, m.cairn, m.created
            ),
            Ok(None) => {}
            Err(e) => {
                error!("applying the staged restore: {e}; continuing in degraded, read-only mode");
                degraded = Some(format!("a staged restore could not be applied: {e}"));
            }
        }
    }
    // The store and the TLS identity are independent: open them at the same time.
    let store_task = {
        let dir = opts.data.clone();
        let skip = degraded.is_some();
        tokio::task::spawn_blocking(move || (!skip).then(|| Store::open(&dir)))
    };
    let tls_task = {
        let tls_dir = (degraded.is_none()).then(|| opts.data.join("tls"));
        tokio::task::spawn_blocking(move || {
            let hostname = crate::sysinfo::hostname();
            crate::tls::load_or_create(tls_dir.as_deref(), &hostname).or_else(|e| {
                warn!("TLS identity on disk unusable ({e}); using a temporary one");
                crate::tls::load_or_create(None, &hostname)
            })
        })
    };
    let store = match store_task.await? {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            error!("{e}: continuing in degraded, read-only mode");
            degraded = Some(e.to_string());
            None
        }
        None => None,
    };
    debug!("store ready after {} ms", started.elapsed().as_millis());
    let identity = tls_task.await??;
    debug!(
        "TLS identity ready after {} ms",
        started.elapsed().as_millis()
    );
    let inference = {
        let opts = opts.inference.clone();
        tokio::task::spawn_blocking(move || crate::inference::Inference::new(&opts))
            .await?
            .map_err(|e| anyhow::anyhow!("models: {e}"))?
    };
    info!(
        "models: {} on {}",
        inference
            .list()
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        inference.device()
    );
    let inference = Arc::new(inference);
    let memory = match &store {
        Some(st) => {
            let embedder = crate::memory::models::local_embedder(&inference);
            let db = st.database();
            let path = st.path().to_path_buf();
            let opened = tokio::task::spawn_blocking(move || {
                crate::memory::Memory::open_database(db, &path, embedder)
            })
            .await?;
            match opened {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    error!("memory: {e}; memory routes answer 503");
                    None
                }
            }
        }
        None => None,
    };
    debug!("memory ready after {} ms", started.elapsed().as_millis());
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let router = {
        let opts = crate::router::RouterOptions {
            inference: inference.clone(),
            metrics: metrics.clone(),
            db: store
                .as_ref()
                .map(|s| (s.database(), s.path().to_path_buf())),
            data_dir: opts.data.clone(),
        };
        Arc::new(tokio::task::spawn_blocking(move || crate::router::Router::open(opts)).await?)
    };
    let agents = match &store {
        Some(st) if degraded.is_none() => {
            let services = crate::agents::ApplianceServices::new(router.clone(), memory.clone());
            match services {
                Ok(services) => {
                    let config = cairn_agents::RuntimeConfig::new(opts.data.clone());
                    match cairn_agents::Runtime::open(st.database(), Arc::new(services), config)
                        .await
                    {
                        Ok(rt) => Some(rt),
                        Err(e) => {
                            error!("agents: {e}; agent routes answer 503");
                            None
                        }
                    }
                }
                Err(e) => {
                    error!("agents: {e}; agent routes answer 503");
                    None
                }
            }
        }
        _ => None,
    };
    debug!("agents ready after {} ms", started.elapsed().as_millis());
    let auth = {
        let db = store.as_ref().map(|s| s.database());
        match tokio::task::spawn_blocking(move || crate::auth::Auth::open(db)).await? {
            Ok(a) => Arc::new(a),
            Err(e) => {
                // Unreadable auth tables: keep serving with accounts in memory, so the
                // operator can onboard with a fresh code and see what is wrong.
                error!("accounts: {e}; using a temporary in-memory account store");
                Arc::new(crate::auth::Auth::open(None)?)
            }
        }
    };
    let tls_dir = (degraded.is_none() && store.is_some()).then(|| opts.data.join("tls"));
    let certs = crate::tls::Certificates::new(&identity, tls_dir)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config_for(certs.clone())?);
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let port = listener.local_addr()?.port();
    let control = Arc::new(control);
    let machine = {
        let (data, control) = (opts.data.clone(), control.clone());
        let esp = control
            .is_present()
            .then(|| PathBuf::from(cairn_init::layout::ESP_CONFIG));
        let boot_info = PathBuf::from(cairn_init::layout::BOOT_INFO);
        Arc::new(
            tokio::task::spawn_blocking(move || {
                crate::machine::Machine::open(&data, esp, boot_info, control)
            })
            .await?,
        )
    };
    let state = Arc::new(AppState {
        store,
        degraded: degraded.clone(),
        data_dir: opts.data.clone(),
        started,
        control,
        machine,
        certs,
        appliance: opts.appliance,
        inference: inference.clone(),
        metrics,
        memory: memory.clone(),
        agents,
        router,
        auth: auth.clone(),
        restart: Arc::new(tokio::sync::Notify::new()),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    let memory_job = memory.map(|m| tokio::spawn(crate::memory::background(m, inference.clone())));
    let app = api::router(state.clone());

    if let Some(r) = &degraded {
        warn!("DEGRADED, READ-ONLY: {r}");
    }
    let setup_code = auth.setup_code();
    if let Some(code) = &setup_code {
        info!(
            "setup code: {code} (open https://<address>:{port}/onboard to create the administrator)"
        );
    }
    info!(
        "listening on https://{} (TLS SHA-256 {}), ready in {} ms",
        listener.local_addr()?,
        identity.fingerprint,
        started.elapsed().as_millis()
    );
    if state.control.is_present() {
        let mut notes: Vec<String> = degraded
            .iter()
            .map(|r| format!("Appliance:   degraded, read-only ({r})"))
            .collect();
        if let Some(code) = &setup_code {
            notes.push(format!(
                "Setup code:  {code}  (one time; enter it at /onboard)"
            ));
        }
        if let Err(e) = state.control.ready(&identity.fingerprint, port, notes) {
            warn!("could not notify init: {e}");
        }
    }

    let limits = opts.limits;
    let admission = crate::conn::Admission::new(limits);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let restart = state.restart.clone();
    let mut exit = Exit::Stop;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => {
                state.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                break;
            }
            _ = restart.notified() => {
                exit = Exit::Restart;
                break;
            }
        };
        // Over a limit: closed at once, before any byte is read.
        let permit = match admission.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                debug!("refused {peer}: {why:?}");
                drop(tcp);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let conn = admission.connection();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
            if !starts_with_tls(&tcp, deadline).await {
                redirect_plain_http(tcp, port).await;
                drop(permit);
                return;
            }
            match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => serve_connection(tls, peer, app, limits, permit, conn).await,
                Ok(Err(e)) => debug!("TLS handshake from {peer} failed: {e}"),
                Err(_) => debug!("TLS handshake from {peer} timed out"),
            }
        });
    }
    info!("shutting down");
    drop(listener);
    // Requests in flight may finish; idle connections are not waited for (new requests on
    // them are answered 503 `stopping` by the guard).
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while admission.requests() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(app);
    if let Some(job) = memory_job {
        job.abort();
        let _ = job.await;
    }
    if let Some(m) = state.memory.clone() {
        let _ = tokio::task::spawn_blocking(move || m.flush()).await;
    }
    {
        let router = state.router.clone();
        let _ = tokio::task::spawn_blocking(move || router.flush_usage()).await;
    }
    // The database closes when the last state handle drops.
    drop(state);
    info!("stopped");
    Ok(exit)
}

/// Serves HTTP/1.1 or HTTP/2 on an established TLS connection under `limits`.
async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    app: axum::Router,
    limits: crate::conn::Limits,
    permit: crate::conn::Permit,
    conn: Arc<crate::conn::ConnState>,
) {
    use crate::conn::{BodyDeadline, Guarded, TimedBody, TrackedBody};
    use crate::conn::{
        H2_KEEP_ALIVE_INTERVAL, H2_KEEP_ALIVE_TIMEOUT, H2_MAX_ERROR_RESETS, H2_MAX_HEADER_LIST,
        H2_MAX_PENDING_RESETS, H2_MAX_STREAMS,
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT.min(limits.idle_timeout));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_ERROR_RESETS);
    let peer_addr = crate::auth::guard::PeerAddr(peer);
    let svc = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let in_flight = conn.enter();
            let missed = BodyDeadline::default();
            let mut req = req.map(|b| {
                axum::body::Body::new(TimedBody::new(b, limits.body_timeout, missed.clone()))
            });
            req.extensions_mut().insert(peer_addr);
            req.extensions_mut().insert(missed);
            let answer = tower::ServiceExt::oneshot(app.clone(), req);
            async move {
                let response = match answer.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, std::convert::Infallible>(response.map(|b| TrackedBody::new(b, in_flight)))
            }
        })
    };
    let io = TokioIo::new(Guarded::new(tls, conn, Some(permit)));
    if let Err(e) = builder.serve_connection_with_upgrades(io, svc).await {
        debug!("connection from {peer}: {e}");
    }
}

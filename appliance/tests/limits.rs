//! Connection bounds of a hosted `cairn serve` (`appliance/src/conn.rs`): a client that says
//! nothing after the TLS handshake and a request body that trickles in are cut off; the
//! per-address and global connection caps refuse extra connections while others are served,
//! and the server serves again once they close; every answer carries a request id and the
//! security headers.

#[path = "support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use support::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

type Tls = TlsStream<tokio::net::TcpStream>;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to the server from the loopback address `from`.
async fn tcp_from(from: IpAddr, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// A completed TLS handshake with the server from `from`.
async fn tls_from(from: IpAddr, port: u16) -> std::io::Result<Tls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = tcp_from(from, port).await?;
    let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .map_err(|_| std::io::Error::other("handshake did not finish"))?
}

/// Reads until the server closes the connection, for at most `tries` reads of a second each;
/// returns what was read and whether the server closed it.
async fn read_until_closed<S: AsyncReadExt + Unpin>(s: &mut S, tries: usize) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..tries {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&got).into(), false)
}

/// A client whose connections come from `from`, with no connection reuse.
fn client_from(from: IpAddr) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .local_address(from)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Whether `GET /healthz` from `from` is answered 200.
async fn served_from(s: &Server, from: IpAddr) -> bool {
    match client_from(from)
        .get(format!("{}/healthz", s.url))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16() == 200,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_and_trickling_bodies_are_cut_off_and_answers_carry_headers() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::spawn(
        "limits-deadlines",
        data.path(),
        &["--idle-timeout", "1", "--body-timeout", "2"],
    );

    // (a) TLS done, then nothing: the server closes the connection (the idle deadline covers
    // the protocol detection and the first request's headers).
    let mut silent = tls_from(loopback(1), s.port).await.expect("handshake");
    let (said, closed) = read_until_closed(&mut silent, 60).await;
    assert!(closed, "the silent connection is still open");
    assert!(!said.contains("HTTP/"), "nothing was asked: {said}");

    // (b) A login whose body comes one byte at a time: answered 408 and closed before the body
    // is complete.
    let mut slow = tls_from(loopback(1), s.port).await.expect("handshake");
    let body = br#"{"username": "admin", "password": "a password of 64 bytes....."}"#;
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let (mut answer, mut closed, mut sent) = (String::new(), false, 0);
    for byte in body {
        if slow.write_all(&[*byte]).await.is_err() || slow.flush().await.is_err() {
            closed = true;
            break;
        }
        sent += 1;
        // Half a second between bytes; stop as soon as the server answered and closed.
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), async {
            let mut buf = [0u8; 4096];
            slow.read(&mut buf).await.inspect(|&n| {
                answer.push_str(&String::from_utf8_lossy(&buf[..n]));
            })
        })
        .await
            && n == 0
        {
            closed = true;
            break;
        }
    }
    if !closed {
        let (rest, c) = read_until_closed(&mut slow, 60).await;
        answer.push_str(&rest);
        closed = c;
    }
    assert!(sent < body.len(), "the whole trickled body was taken");
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer}");
    assert!(answer.contains("body_timeout"), "answer: {answer}");
    assert!(closed, "the connection stayed open after the 408");

    // The server goes on serving.
    assert!(served_from(&s, loopback(1)).await);

    // (f) Every answer, public or refused, carries a request id, nosniff, no-store and HSTS.
    let c = client_from(loopback(1));
    for path in ["/healthz", "/api/v1/system"] {
        let r = c.get(format!("{}{path}", s.url)).send().await.unwrap();
        let h = r.headers();
        let id = h["x-request-id"].to_str().unwrap();
        assert!(
            id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
        assert_eq!(h["strict-transport-security"], "max-age=31536000", "{path}");
    }
    // Console pages keep their own cache policy (revalidate), with the other headers.
    let r = c.get(format!("{}/", s.url)).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert!(r.headers().contains_key("strict-transport-security"));
    assert!(r.headers().contains_key("x-request-id"));
    // By the name "localhost" no HSTS: it would pin every local port of the browser to HTTPS.
    let by_name = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], s.port)))
        .build()
        .unwrap();
    let r = by_name
        .get(format!("https://localhost:{}/healthz", s.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(!r.headers().contains_key("strict-transport-security"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_extra_clients_and_the_server_recovers() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::spawn(
        "limits-caps",
        data.path(),
        &[
            "--max-connections",
            "6",
            "--max-connections-per-address",
            "3",
            // Long enough that the held connections stay for the whole test.
            "--idle-timeout",
            "600",
        ],
    );
    // Holds `n` idle TLS connections from `from` (retrying while the server still counts a
    // connection that just closed).
    async fn hold(from: IpAddr, port: u16, n: usize) -> Vec<Tls> {
        let mut held = Vec::new();
        for _ in 0..200 {
            if held.len() == n {
                break;
            }
            match tls_from(from, port).await {
                Ok(t) => held.push(t),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert_eq!(held.len(), n, "could not open {n} connections from {from}");
        held
    }

    // (c) Three idle connections from 127.0.0.1 fill its share: a fourth is refused, while
    // another address is served.
    let mut first = hold(loopback(1), s.port, 3).await;
    assert!(
        !served_from(&s, loopback(1)).await,
        "a fourth connection from one address was served"
    );
    let mut refused = tcp_from(loopback(1), s.port).await.expect("connect");
    let (_, closed) = read_until_closed(&mut refused, 60).await;
    assert!(closed, "the refused connection was left open");
    assert!(served_from(&s, loopback(2)).await);

    // (d) Three more from 127.0.0.2 reach the global cap: 127.0.0.3 is refused too.
    let second = hold(loopback(2), s.port, 3).await;
    assert!(
        !served_from(&s, loopback(3)).await,
        "a connection over the global cap was served"
    );
    // The held connections are still open (the refusals did not close them).
    for t in &mut first {
        t.write_all(b"GET /healthz HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = read_until_closed(t, 60).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Once they close, the server serves again.
    drop(first);
    drop(second);
    let mut again = false;
    for _ in 0..100 {
        if served_from(&s, loopback(3)).await {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again, "not served after the connections closed");
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

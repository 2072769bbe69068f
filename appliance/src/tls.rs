//! The console's TLS certificate: generated on first start (ECDSA P-256, self-signed), kept on
//! the data partition, and identified to operators by its SHA-256 fingerprint, which the boot
//! banner shows so the first connection can be verified. Also the client side of pinning:
//! [`PinVerifier`] and [`pinned_client`], used by the CLI and the model router's providers.

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A certificate and key ready for rustls.
pub struct Identity {
    /// DER certificate chain (one self-signed certificate).
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate, colon-separated upper-case hex.
    pub fingerprint: String,
}

/// Formats a certificate fingerprint the way the banner and the CLI show it.
pub fn fingerprint(der: &[u8]) -> String {
    fingerprint_of_digest(&Sha256::digest(der))
}

/// Formats a SHA-256 digest as a fingerprint (`AB:CD:…`).
pub fn fingerprint_of_digest(digest: &[u8]) -> String {
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A server certificate check by SHA-256 pin (after the CA chain, when one is given). Without
/// a pin it accepts any certificate whose handshake signature is valid and only remembers it:
/// how the CLI learns a pin on first contact, to use the pinned client afterwards.
#[derive(Debug)]
pub struct PinVerifier {
    pin: Option<Vec<u8>>,
    chain: Option<Arc<dyn ServerCertVerifier>>,
    algs: WebPkiSupportedAlgorithms,
    seen: std::sync::Mutex<Option<Vec<u8>>>,
}

impl PinVerifier {
    pub(crate) fn pinned(
        pin: Vec<u8>,
        chain: Option<Arc<dyn ServerCertVerifier>>,
        algs: WebPkiSupportedAlgorithms,
    ) -> PinVerifier {
        PinVerifier {
            pin: Some(pin),
            chain,
            algs,
            seen: std::sync::Mutex::new(None),
        }
    }

    /// Accepts any certificate and remembers the last one seen (first contact only).
    pub fn observer(algs: WebPkiSupportedAlgorithms) -> PinVerifier {
        PinVerifier {
            pin: None,
            chain: None,
            algs,
            seen: std::sync::Mutex::new(None),
        }
    }

    /// The DER of the last certificate a server presented.
    pub fn seen(&self) -> Option<Vec<u8>> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(end_entity.as_ref().to_vec());
        }
        if let Some(chain) = &self.chain {
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        }
        let Some(pin) = &self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = Sha256::digest(end_entity.as_ref());
        if got.as_slice() == pin.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate pin mismatch: the server's certificate has SHA-256 {}",
                hex::encode(got)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A client that trusts exactly the server certificate with this SHA-256 (hex, colons
/// allowed): how the CLI reaches an appliance whose fingerprint its console banner shows.
pub fn pinned_client(sha256: &str, timeout: Duration) -> Result<reqwest::Client, String> {
    let pin: String = sha256.chars().filter(|c| *c != ':').collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pin = hex::decode(&pin).map_err(|e| format!("fingerprint: {e}"))?;
    if pin.len() != 32 {
        return Err("fingerprint: a SHA-256 is 64 hex digits".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier::pinned(
            pin,
            None,
            provider.signature_verification_algorithms,
        )))
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| format!("HTTP client: {}", error_chain(&e)))
}

/// An error and its sources, joined (`a: b: c`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn generate(hostname: &str) -> Result<(String, String)> {
    let mut names = vec![
        "localhost".to_string(),
        "cairn".to_string(),
        "cairn.local".to_string(),
    ];
    if !names.iter().any(|n| n == hostname) && !hostname.is_empty() {
        names.push(hostname.to_string());
    }
    let mut params = rcgen::CertificateParams::new(names).context("certificate names")?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(
        std::net::Ipv4Addr::LOCALHOST.into(),
    ));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Cairn appliance {hostname}"),
    );
    // Valid from a day before now (clock skew) for ten years.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Loads the identity from `dir` (`cert.pem`, `key.pem`), creating it on first start. With
/// `dir` = `None` (degraded mode) a fresh identity lives in memory only.
pub fn load_or_create(dir: Option<&Path>, hostname: &str) -> Result<Identity> {
    let (cert_pem, key_pem) = match dir {
        Some(d) => {
            let (c, k) = (d.join("cert.pem"), d.join("key.pem"));
            if c.exists() && k.exists() {
                (std::fs::read_to_string(&c)?, std::fs::read_to_string(&k)?)
            } else {
                std::fs::create_dir_all(d)?;
                let (cp, kp) = generate(hostname)?;
                write_private(&k, kp.as_bytes())?;
                write_private(&c, cp.as_bytes())?;
                tracing::info!("generated a new TLS certificate in {}", d.display());
                (cp, kp)
            }
        }
        None => generate(hostname)?,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("reading the certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading the key")?;
    let leaf = chain.first().context("certificate file is empty")?;
    Ok(Identity {
        fingerprint: fingerprint(leaf),
        chain,
        key,
    })
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The certificate the server presents: replaceable by the operator while the server runs
/// (new handshakes get the new one; the files on the data partition are replaced atomically).
#[derive(Debug)]
pub struct Certificates {
    current: std::sync::RwLock<(Arc<rustls::sign::CertifiedKey>, String)>,
    dir: Option<std::path::PathBuf>,
}

/// Largest accepted PEM input (a chain of a few certificates and a key).
pub const MAX_PEM: usize = 64 * 1024;

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not belong to the certificate".to_string()
            }
            e => format!("unusable certificate or key: {e}"),
        })
}

impl Certificates {
    /// Serves `id`; replacements are written to `dir` (none in degraded mode).
    pub fn new(id: &Identity, dir: Option<std::path::PathBuf>) -> Result<Arc<Certificates>> {
        let ck = certified(id.chain.clone(), id.key.clone_key()).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(Certificates {
            current: std::sync::RwLock::new((ck, id.fingerprint.clone())),
            dir,
        }))
    }

    /// The fingerprint of the certificate now served.
    pub fn fingerprint(&self) -> String {
        self.current.read().map(|c| c.1.clone()).unwrap_or_default()
    }

    /// Checks a PEM certificate chain and its PEM private key, stores them and serves them
    /// from the next handshake on; returns the new fingerprint. Nothing changes on error.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<String, (&'static str, String)> {
        let cert_err = |m: String| ("certificate", m);
        let key_err = |m: String| ("key", m);
        if cert_pem.len() > MAX_PEM {
            return Err(cert_err(format!("limited to {MAX_PEM} bytes")));
        }
        if key_pem.len() > MAX_PEM {
            return Err(key_err(format!("limited to {MAX_PEM} bytes")));
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| cert_err(format!("the certificate is not PEM: {e}")))?;
        let leaf = chain.first().ok_or_else(|| {
            cert_err("no certificate found (expected -----BEGIN CERTIFICATE-----)".into())
        })?;
        rustls::server::ParsedCertificate::try_from(leaf)
            .map_err(|e| cert_err(format!("the certificate does not parse: {e}")))?;
        let fp = fingerprint(leaf);
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| key_err(format!("the key is not a PEM private key: {e}")))?;
        let ck = certified(chain, key).map_err(key_err)?;
        if let Some(dir) = &self.dir {
            // Key first: a crash between the two leaves the old certificate with a key that
            // does not match, which start-up reports; the pair is written in one direction.
            let io = |e: std::io::Error| ("certificate", format!("storing it: {e}"));
            std::fs::create_dir_all(dir).map_err(io)?;
            let backup = |name: &str| {
                let p = dir.join(name);
                if p.exists() {
                    let _ = std::fs::copy(&p, dir.join(format!("{name}.previous")));
                }
            };
            backup("cert.pem");
            backup("key.pem");
            write_private(&dir.join("key.pem"), key_pem.as_bytes())
                .map_err(|e| ("certificate", format!("storing it: {e}")))?;
            write_private(&dir.join("cert.pem"), cert_pem.as_bytes())
                .map_err(|e| ("certificate", format!("storing it: {e}")))?;
        }
        if let Ok(mut c) = self.current.write() {
            *c = (ck, fp.clone());
        }
        Ok(fp)
    }
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

/// A rustls server configuration serving `certs` (TLS 1.2 and 1.3, h2 and http/1.1).
pub fn server_config_for(certs: Arc<Certificates>) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A rustls server configuration for the identity (TLS 1.2 and 1.3, h2 and http/1.1).
pub fn server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(Some(dir.path()), "edge-1").unwrap();
        let b = load_or_create(Some(dir.path()), "edge-1").unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        server_config(&a).unwrap();
        let c = load_or_create(None, "x").unwrap();
        assert_ne!(c.fingerprint, a.fingerprint);
    }

    #[test]
    fn replacement_checks_the_pair_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(Some(dir.path()), "edge-1").unwrap();
        let certs = Certificates::new(&a, Some(dir.path().to_path_buf())).unwrap();
        let (cert2, key2) = generate("edge-2").unwrap();
        let (_, key3) = generate("edge-3").unwrap();
        assert!(certs.replace("garbage", &key2).is_err());
        assert!(certs.replace(&cert2, "garbage").is_err());
        let (field, e) = certs.replace(&cert2, &key3).unwrap_err();
        assert!(field == "key" && e.contains("does not belong"), "{e}");
        assert_eq!(certs.fingerprint(), a.fingerprint, "nothing changed");
        let fp = certs.replace(&cert2, &key2).unwrap();
        assert_eq!(certs.fingerprint(), fp);
        let reloaded = load_or_create(Some(dir.path()), "edge-1").unwrap();
        assert_eq!(
            reloaded.fingerprint, fp,
            "the new pair is what the next start serves"
        );
        assert!(dir.path().join("cert.pem.previous").exists());
    }
}

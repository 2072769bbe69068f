//! Agent packages: a manifest, a component and an Ed25519 signature over both, in one file.
//!
//! Layout (all integers little-endian):
//! `CAIRNPK1` · u32 manifest length · manifest (TOML) · u64 component length · component ·
//! u32 signature-block length (0 when unsigned, else 96) · publisher key (32) · signature (64).
//! The signature covers `cairn-agent-package/v1\0` ‖ sha256(manifest) ‖ sha256(component).

use crate::manifest::Manifest;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// File magic.
pub const MAGIC: &[u8; 8] = b"CAIRNPK1";
/// Largest package accepted.
pub const MAX_PACKAGE: usize = 64 << 20;
/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 64 << 10;
const DOMAIN: &[u8] = b"cairn-agent-package/v1\0";

/// Why a package was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PackageError {
    /// Not a package file, or cut short.
    #[error("malformed package: {0}")]
    Malformed(String),
    /// The manifest is invalid.
    #[error("{0}")]
    Manifest(String),
    /// No signature.
    #[error("package is unsigned: sign it with `cairn agent sign`")]
    Unsigned,
    /// Signed by a key other than the manifest's publisher.
    #[error("package is signed by {signer}, but its manifest names publisher {publisher}")]
    WrongKey {
        /// Key that signed.
        signer: String,
        /// Key the manifest names.
        publisher: String,
    },
    /// The signature does not match the contents.
    #[error("signature does not match the package contents (tampered or corrupted)")]
    BadSignature,
    /// The publisher is not in the trust store.
    #[error("publisher {0} is not trusted on this appliance")]
    UnknownPublisher(String),
    /// The publisher's key was revoked.
    #[error("publisher {0} was revoked")]
    Revoked(String),
}

/// A parsed package (signature not yet checked against a trust store).
#[derive(Debug, Clone)]
pub struct Package {
    /// The manifest text as signed.
    pub manifest_text: String,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The WebAssembly component.
    pub component: Vec<u8>,
    /// Publisher key and signature, if signed.
    pub signature: Option<([u8; 32], [u8; 64])>,
}

fn digest_message(manifest: &[u8], component: &[u8]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(&Sha256::digest(manifest));
    m.extend_from_slice(&Sha256::digest(component));
    m
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], PackageError> {
        if self.b.len() < n {
            return Err(PackageError::Malformed(format!("cut short in the {what}")));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u32(&mut self, what: &str) -> Result<usize, PackageError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    }
    fn u64(&mut self, what: &str) -> Result<usize, PackageError> {
        let b = self.take(8, what)?;
        usize::try_from(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .map_err(|_| PackageError::Malformed(format!("{what} is too long")))
    }
}

impl Package {
    /// Parses a package file; checks structure and manifest, not the signature.
    pub fn parse(bytes: &[u8]) -> Result<Package, PackageError> {
        if bytes.len() > MAX_PACKAGE {
            return Err(PackageError::Malformed(format!(
                "{} bytes is over the {} MiB limit",
                bytes.len(),
                MAX_PACKAGE >> 20
            )));
        }
        let mut r = Reader { b: bytes };
        if r.take(8, "magic")? != MAGIC {
            return Err(PackageError::Malformed(
                "not a Cairn agent package (bad magic)".into(),
            ));
        }
        let ml = r.u32("manifest length")?;
        if ml > MAX_MANIFEST {
            return Err(PackageError::Malformed("manifest over 64 KiB".into()));
        }
        let manifest_text = std::str::from_utf8(r.take(ml, "manifest")?)
            .map_err(|_| PackageError::Malformed("manifest is not UTF-8".into()))?
            .to_string();
        let cl = r.u64("component length")?;
        let component = r.take(cl, "component")?.to_vec();
        let sl = r.u32("signature length")?;
        let signature = match sl {
            0 => None,
            96 => {
                let s = r.take(96, "signature")?;
                let key: [u8; 32] = s[..32].try_into().expect("32 bytes");
                let sig: [u8; 64] = s[32..].try_into().expect("64 bytes");
                Some((key, sig))
            }
            n => {
                return Err(PackageError::Malformed(format!(
                    "signature block of {n} bytes (expected 0 or 96)"
                )));
            }
        };
        if !r.b.is_empty() {
            return Err(PackageError::Malformed(format!(
                "{} trailing bytes",
                r.b.len()
            )));
        }
        let manifest = Manifest::parse(&manifest_text).map_err(PackageError::Manifest)?;
        Ok(Package {
            manifest_text,
            manifest,
            component,
            signature,
        })
    }

    /// Serializes the package.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(self.manifest_text.len() as u32).to_le_bytes());
        out.extend_from_slice(self.manifest_text.as_bytes());
        out.extend_from_slice(&(self.component.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.component);
        match &self.signature {
            None => out.extend_from_slice(&0u32.to_le_bytes()),
            Some((k, s)) => {
                out.extend_from_slice(&96u32.to_le_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(s);
            }
        }
        out
    }

    /// Checks the signature against the manifest's publisher (not yet the trust store).
    pub fn verify_signature(&self) -> Result<String, PackageError> {
        let Some((key, sig)) = &self.signature else {
            return Err(PackageError::Unsigned);
        };
        let signer = hex::encode(key);
        if !signer.eq_ignore_ascii_case(&self.manifest.publisher) {
            return Err(PackageError::WrongKey {
                signer,
                publisher: self.manifest.publisher.clone(),
            });
        }
        let msg = digest_message(self.manifest_text.as_bytes(), &self.component);
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&msg, sig)
            .map_err(|_| PackageError::BadSignature)?;
        Ok(signer)
    }

    /// SHA-256 of the component, hex.
    pub fn component_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.component))
    }
}

/// A publisher's signing key (PKCS#8 v2 document, stored hex-encoded).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// A fresh key from the system's CSPRNG.
    pub fn generate() -> Result<SigningKey, String> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| "could not generate a key".to_string())?;
        SigningKey::from_pkcs8(doc.as_ref())
    }

    /// A key from its PKCS#8 document.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        Ok(SigningKey {
            pair,
            pkcs8: der.to_vec(),
        })
    }

    /// The key file's text (hex PKCS#8 and a comment naming the public key).
    pub fn to_file_text(&self) -> String {
        format!(
            "# cairn agent signing key; public key {}\n{}\n",
            self.public_hex(),
            hex::encode(&self.pkcs8)
        )
    }

    /// Reads a key file written by [`SigningKey::to_file_text`].
    pub fn from_file_text(text: &str) -> Result<SigningKey, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or("key file is empty")?;
        let der = hex::decode(line).map_err(|_| "key file is not hex".to_string())?;
        SigningKey::from_pkcs8(&der)
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// Builds and signs a package. The manifest's publisher must be this key.
    pub fn sign(&self, manifest_text: &str, component: Vec<u8>) -> Result<Package, PackageError> {
        let manifest = Manifest::parse(manifest_text).map_err(PackageError::Manifest)?;
        if !manifest.publisher.eq_ignore_ascii_case(&self.public_hex()) {
            return Err(PackageError::WrongKey {
                signer: self.public_hex(),
                publisher: manifest.publisher,
            });
        }
        let msg = digest_message(manifest_text.as_bytes(), &component);
        let sig: [u8; 64] = self
            .pair
            .sign(&msg)
            .as_ref()
            .try_into()
            .expect("Ed25519 signatures are 64 bytes");
        let key: [u8; 32] = self
            .pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes");
        Ok(Package {
            manifest_text: manifest_text.to_string(),
            manifest,
            component,
            signature: Some((key, sig)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_for(key: &SigningKey) -> String {
        format!(
            "name = \"echo\"\nversion = \"1.0.0\"\npublisher = \"{}\"\n",
            key.public_hex()
        )
    }

    #[test]
    fn signed_package_round_trips_and_verifies() {
        let key = SigningKey::generate().unwrap();
        let p = key
            .sign(&manifest_for(&key), b"\0asm-ish".to_vec())
            .unwrap();
        let back = Package::parse(&p.to_bytes()).unwrap();
        assert_eq!(back.verify_signature().unwrap(), key.public_hex());
        let reread = SigningKey::from_file_text(&key.to_file_text()).unwrap();
        assert_eq!(reread.public_hex(), key.public_hex());
    }

    #[test]
    fn unsigned_tampered_and_wrong_key_are_refused() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let mut p = key.sign(&manifest_for(&key), vec![1, 2, 3]).unwrap();
        let unsigned = Package {
            signature: None,
            ..p.clone()
        };
        assert_eq!(
            Package::parse(&unsigned.to_bytes())
                .unwrap()
                .verify_signature(),
            Err(PackageError::Unsigned)
        );
        // Flip one byte of the component.
        let mut bytes = p.to_bytes();
        let at = 8 + 4 + p.manifest_text.len() + 8;
        bytes[at] ^= 1;
        assert_eq!(
            Package::parse(&bytes).unwrap().verify_signature(),
            Err(PackageError::BadSignature)
        );
        // Signed by another key than the manifest names.
        let by_other = other.sign(&manifest_for(&other), vec![1, 2, 3]).unwrap();
        p.signature = by_other.signature;
        assert!(matches!(
            p.verify_signature(),
            Err(PackageError::WrongKey { .. })
        ));
        assert!(matches!(
            key.sign(&manifest_for(&other), vec![]),
            Err(PackageError::WrongKey { .. })
        ));
    }

    #[test]
    fn malformed_files_get_clear_errors() {
        assert!(matches!(
            Package::parse(b"nope"),
            Err(PackageError::Malformed(_))
        ));
        let key = SigningKey::generate().unwrap();
        let bytes = key
            .sign(&manifest_for(&key), vec![7; 100])
            .unwrap()
            .to_bytes();
        for cut in [9, 20, bytes.len() - 1] {
            let e = Package::parse(&bytes[..cut]).unwrap_err();
            assert!(matches!(e, PackageError::Malformed(_)), "{cut}: {e}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(
            Package::parse(&extra)
                .unwrap_err()
                .to_string()
                .contains("trailing")
        );
    }
}

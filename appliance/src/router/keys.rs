//! Provider API keys at rest: AES-256-GCM (ring) under a 32-byte key kept in
//! `router.key` in the data directory, created with mode 0600. A sealed key is
//! `nonce (12 bytes) || ciphertext || tag`, with the provider's name as associated data so a
//! sealed key cannot be moved to another provider.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::io::Write;
use std::path::Path;

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "router.key";

/// Seals and opens provider keys.
pub struct KeyBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl KeyBox {
    /// Loads the key file at `path`, creating it (0600, fsynced) on first use.
    pub fn open(path: &Path) -> std::io::Result<KeyBox> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(b) => {
                // Tighten a key file someone loosened.
                let meta = std::fs::metadata(path)?;
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                }
                b
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                rng.fill(&mut b)
                    .map_err(|_| std::io::Error::other("no system randomness"))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(&b)?;
                f.sync_all()?;
                b
            }
            Err(e) => return Err(e),
        };
        if bytes.len() != 32 {
            return Err(std::io::Error::other(format!(
                "{} must hold 32 bytes, it holds {}",
                path.display(),
                bytes.len()
            )));
        }
        Self::from_bytes(&bytes, rng)
    }

    /// A key that lives only in memory (degraded mode: keys are not persisted).
    pub fn ephemeral() -> std::io::Result<KeyBox> {
        let rng = SystemRandom::new();
        let mut b = [0u8; 32];
        rng.fill(&mut b)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        Self::from_bytes(&b, rng)
    }

    fn from_bytes(b: &[u8], rng: SystemRandom) -> std::io::Result<KeyBox> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, b).map_err(|_| std::io::Error::other("bad key"))?;
        Ok(KeyBox {
            key: LessSafeKey::new(unbound),
            rng,
        })
    }

    /// Encrypts `secret`, bound to `owner`.
    pub fn seal(&self, owner: &str, secret: &str) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no system randomness".to_string())?;
        let mut buf = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner.as_bytes()),
                &mut buf,
            )
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts what [`KeyBox::seal`] made for `owner`; `None` if it was altered, made under
    /// another key or for another owner.
    pub fn unseal(&self, owner: &str, sealed: &[u8]) -> Option<String> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(owner.as_bytes()), &mut buf)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_round_trip_and_the_files_never_hold_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let secret = "sk-live-0123456789abcdef";
        let sealed = {
            let kb = KeyBox::open(&path).unwrap();
            kb.seal("cloud", secret).unwrap()
        };
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        // The ciphertext does not contain the key, in any window.
        assert!(
            !sealed
                .windows(8)
                .any(|w| secret.as_bytes().windows(8).any(|s| s == w))
        );
        // Reopening the key file decrypts; another owner or a flipped bit does not.
        let kb = KeyBox::open(&path).unwrap();
        assert_eq!(kb.unseal("cloud", &sealed).as_deref(), Some(secret));
        assert_eq!(kb.unseal("other", &sealed), None);
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(kb.unseal("cloud", &bad), None);
        assert_eq!(kb.unseal("cloud", &sealed[..10]), None);
        // Another key file cannot open it.
        let other = KeyBox::open(&dir.path().join("other.key")).unwrap();
        assert_eq!(other.unseal("cloud", &sealed), None);
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(kb.seal("cloud", secret).unwrap(), sealed);
    }

    #[test]
    fn a_truncated_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, b"short").unwrap();
        assert!(KeyBox::open(&path).is_err());
    }
}

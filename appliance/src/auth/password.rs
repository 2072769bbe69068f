//! Password hashing with argon2id (OWASP parameters: 19 MiB, 2 passes, 1 lane), the rules
//! a new password must meet, and the [`Gate`] that bounds how many hashes run at once: every
//! argon2 call takes a [`Permit`], so no request path can hash without one.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Password hashes allowed to run at once (each holds 19 MiB for tens of milliseconds); a
/// request that finds them all taken is refused at once (429 `busy`), never queued.
pub const HASH_PERMITS: usize = 2;

/// Bounds concurrent argon2 work.
#[derive(Debug)]
pub struct Gate {
    busy: AtomicUsize,
    peak: AtomicUsize,
    max: usize,
}

/// The right to run argon2 once or a few times in a row; released on drop.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
}

impl Gate {
    /// A gate with `max` permits (at least one).
    pub fn new(max: usize) -> Arc<Gate> {
        Arc::new(Gate {
            busy: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            max: max.max(1),
        })
    }

    /// A permit, or `None` at once when all are taken.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut cur = self.busy.load(Ordering::Acquire);
        loop {
            if cur >= self.max {
                return None;
            }
            match self
                .busy
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.peak.fetch_max(cur + 1, Ordering::AcqRel);
                    return Some(Permit { gate: self.clone() });
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Permits held now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// The most permits ever held at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Shortest accepted password, in characters.
pub const MIN_LEN: usize = 10;
/// Longest accepted password, in characters (bounds the hashing work of a request).
pub const MAX_LEN: usize = 256;

fn hasher() -> Argon2<'static> {
    // The parameters are constants within argon2's limits, so `new` cannot fail.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a new password is refused, in words for the form.
pub fn check(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(format!("use at least {MIN_LEN} characters"));
    }
    if n > MAX_LEN {
        return Err(format!("use at most {MAX_LEN} characters"));
    }
    if password.trim().is_empty() {
        return Err("the password cannot be only spaces".into());
    }
    Ok(())
}

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) of `password` with a random salt.
pub fn hash(_: &Permit, password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = super::random_bytes();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the stored PHC string (false for a malformed one).
pub fn verify(_: &Permit, password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => hasher().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so a login for an unknown name
/// costs as much time as one for a known name (made under `permit` the first time).
pub fn decoy(permit: &Permit) -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash(permit, "decoy password never used").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let gate = Gate::new(1);
        let p = gate.try_acquire().unwrap();
        let a = hash(&p, "correct horse battery").unwrap();
        let b = hash(&p, "correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "salts differ");
        assert!(verify(&p, "correct horse battery", &a));
        assert!(!verify(&p, "correct horse batterY", &a));
        assert!(!verify(&p, "anything", "not a phc string"));
    }

    #[test]
    fn the_gate_never_lets_more_than_its_permits_hash_at_once() {
        let gate = Gate::new(HASH_PERMITS);
        let refused = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..200 {
                        match gate.try_acquire() {
                            Some(_p) => {
                                assert!(gate.busy() <= HASH_PERMITS);
                                std::thread::yield_now();
                            }
                            None => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        assert!(gate.peak() <= HASH_PERMITS, "peak {}", gate.peak());
        assert_eq!(gate.busy(), 0, "every permit was given back");
        assert!(refused.load(Ordering::Relaxed) > 0, "a full gate refuses");
        let held: Vec<Permit> = (0..HASH_PERMITS)
            .filter_map(|_| gate.try_acquire())
            .collect();
        assert_eq!(held.len(), HASH_PERMITS);
        assert!(gate.try_acquire().is_none(), "full: refused at once");
        drop(held);
        assert!(gate.try_acquire().is_some());
    }

    #[test]
    fn rules() {
        assert!(check("short").is_err());
        assert!(check("          ").is_err());
        assert!(check(&"x".repeat(MAX_LEN + 1)).is_err());
        assert!(check("ten chars!").is_ok());
    }
}

//! Who may manage the appliance: the one-time setup code, the admin account (argon2id), console
//! sessions with CSRF tokens, scoped API tokens, login throttling and the operator audit log.
//! The contract is `docs/console.md`; [`guard`] enforces it on every request.
//!
//! Accounts, sessions and tokens live in redb (`auth_*` tables, every change fsync'd before it
//! is acknowledged) and in an in-memory copy that answers each request without a read
//! transaction. Session ids and tokens are stored only as SHA-256 hashes. In degraded mode
//! (no database) everything is kept in memory until the next start.

pub mod guard;
pub mod limiter;
pub mod password;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const USERS: TableDefinition<&str, &str> = TableDefinition::new("auth_users");
pub(crate) const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("auth_sessions");
pub(crate) const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("auth_tokens");
pub(crate) const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit_actions");

/// Idle time after which a session ends, seconds.
pub const SESSION_IDLE: u64 = 12 * 3600;
/// Longest life of a session, seconds.
pub const SESSION_MAX: u64 = 7 * 24 * 3600;
/// Name of the session cookie.
pub const COOKIE: &str = "cairn_session";
/// Audit entries kept (the oldest are dropped).
const AUDIT_KEEP: u64 = 10_000;
/// Lifetime of an API token created without `expires_in`/`expires_at`, seconds (90 days).
pub const TOKEN_DEFAULT_LIFETIME: u64 = 90 * 24 * 3600;
/// Longest lifetime `expires_in` may ask for, seconds (10 years; beyond, ask for "never").
pub const TOKEN_MAX_LIFETIME: u64 = 10 * 365 * 24 * 3600;
/// How a failed login with a user name that breaks the account rules is audited.
pub const INVALID_NAME: &str = "(invalid user name)";
/// Setup-code alphabet: no 0/O, 1/I/L.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read only (GET/HEAD).
    Reader,
    /// Everything but administration.
    Operator,
    /// Everything.
    Admin,
}

impl Scope {
    /// Parses `reader`, `operator` or `admin`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "reader" => Some(Scope::Reader),
            "operator" => Some(Scope::Operator),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// The name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Reader => "reader",
            Scope::Operator => "operator",
            Scope::Admin => "admin",
        }
    }
}

/// The authenticated caller of a request (a request extension set by [`guard`]).
#[derive(Debug, Clone)]
pub struct Caller {
    /// User name, or `token:NAME` for an API token.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The session's key when it came with a session cookie.
    pub session: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    hash: String,
    scope: Scope,
    created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    user: String,
    scope: Scope,
    csrf: String,
    created: u64,
    #[serde(default)]
    last_seen: u64,
}

/// An API token as listed (never with its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Identifier (also the token's prefix).
    pub id: String,
    /// The operator's label.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the last use since this start, if any.
    #[serde(default)]
    pub last_used: Option<u64>,
    /// Unix seconds after which the token is refused; `null`: never (asked for explicitly).
    /// Tokens stored before expiry existed get the default lifetime from the first start of
    /// a version that knows it.
    pub expires: Option<u64>,
    #[serde(skip_serializing)]
    #[serde(default)]
    hash: String,
}

/// One operator action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub time: u64,
    /// Who (user name or `token:NAME`, or `anonymous`).
    pub actor: String,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Response status.
    pub status: u16,
}

/// A new session: the cookie value (shown once) and its CSRF token.
pub struct NewSession {
    /// Cookie value.
    pub id: String,
    /// CSRF token the client must echo in `X-CSRF-Token`.
    pub csrf: String,
    /// The user.
    pub user: String,
    /// Its scope.
    pub scope: Scope,
}

/// Why an authentication operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A field is invalid (the form shows the message next to it).
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The setup code is wrong.
    #[error("the setup code is not correct")]
    BadCode,
    /// Already onboarded.
    #[error("the appliance already has an administrator")]
    Onboarded,
    /// Wrong user name or password.
    #[error("wrong user name or password")]
    BadCredentials,
    /// Locked after repeated failures.
    #[error("too many failed attempts; try again in {0} s")]
    Locked(u64),
    /// Too many password checks at once (globally, or from this address).
    #[error("{0}; try again in a moment")]
    Busy(&'static str),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    // The OS generator only fails when the kernel has no entropy source at all; a zeroed
    // value would be catastrophic, so that is the one place this process may stop.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        tracing::error!("the kernel's random number generator failed");
        std::process::abort();
    }
    b
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Compares two strings in time independent of where they differ.
pub fn constant_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `name` meets the account rules (1-64 of `a-z 0-9 . _ -`).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// The user name as the audit log and the lockout keys may hold it: itself when it meets the
/// account rules, else [`INVALID_NAME`] (so nothing an anonymous caller sends is kept verbatim).
pub fn audit_name(name: &str) -> &str {
    if valid_name(name) { name } else { INVALID_NAME }
}

/// Why a bearer token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not a token of this appliance (unknown, revoked or mistyped).
    Unknown,
    /// It expired at these Unix seconds.
    Expired(u64),
}

fn check_name(field: &'static str, name: &str) -> Result<(), AuthError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(AuthError::Invalid {
            field,
            message: "use 1-64 lower-case letters, digits, '.', '_' or '-'".into(),
        })
    }
}

#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    sessions: HashMap<String, Session>,
    tokens: HashMap<String, TokenInfo>,
    setup_code: Option<String>,
}

/// The appliance's accounts, sessions, tokens and audit log.
pub struct Auth {
    db: Option<Arc<Database>>,
    state: Mutex<State>,
    /// Failed logins per user name and client address (`user|addr:IP`).
    pub by_user: limiter::Limiter,
    /// Failed logins and setup-code attempts per client address.
    pub by_addr: limiter::Limiter,
    /// Bounds concurrent argon2 work over every path that hashes a password.
    pub hashing: Arc<password::Gate>,
    /// Client addresses with a password check in progress (one at a time each).
    pub in_flight: Arc<limiter::InFlight>,
    audit_seq: Mutex<u64>,
}

fn storage(e: impl Into<crate::store::StoreError>) -> AuthError {
    AuthError::Store(e.into())
}

fn load<T: for<'de> Deserialize<'de>>(
    db: &Database,
    table: TableDefinition<&str, &str>,
) -> Result<HashMap<String, T>, AuthError> {
    let txn = db.begin_read().map_err(storage)?;
    let t = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
        Err(e) => return Err(storage(e)),
    };
    let mut out = HashMap::new();
    for row in t.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        match serde_json::from_str(v.value()) {
            Ok(rec) => {
                out.insert(k.value().to_string(), rec);
            }
            Err(e) => tracing::warn!("auth: skipping unreadable record {}: {e}", k.value()),
        }
    }
    Ok(out)
}

impl Auth {
    /// Opens the auth tables of `db` (or keeps everything in memory without one). When no
    /// administrator exists yet, a fresh setup code is made.
    pub fn open(db: Option<Arc<Database>>) -> Result<Auth, AuthError> {
        let mut state = State::default();
        let mut seq = 0;
        if let Some(db) = &db {
            state.users = load(db, USERS)?;
            state.sessions = load(db, SESSIONS)?;
            state.tokens = load_tokens(db)?;
            let txn = db.begin_read().map_err(storage)?;
            if let Ok(t) = txn.open_table(AUDIT) {
                seq = t
                    .last()
                    .map_err(storage)?
                    .map(|(k, _)| k.value())
                    .unwrap_or(0);
            }
        }
        let t = unix_now();
        state.sessions.retain(|_, s| {
            t < s.created + SESSION_MAX && t < s.last_seen.max(s.created) + SESSION_IDLE
        });
        if state.users.is_empty() {
            state.setup_code = Some(new_setup_code());
        }
        Ok(Auth {
            db,
            state: Mutex::new(state),
            by_user: limiter::Limiter::new(limiter::MAX_FAILURES),
            by_addr: limiter::Limiter::new(limiter::MAX_ADDR_FAILURES),
            hashing: password::Gate::new(password::HASH_PERMITS),
            in_flight: Arc::default(),
            audit_seq: Mutex::new(seq),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), AuthError> {
        let Some(db) = &self.db else { return Ok(()) };
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(table).map_err(storage)?;
            match value {
                Some(v) => {
                    t.insert(key, v).map_err(storage)?;
                }
                None => {
                    t.remove(key).map_err(storage)?;
                }
            }
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }

    /// Whether an administrator exists.
    pub fn onboarded(&self) -> bool {
        !self.lock().users.is_empty()
    }

    /// The one-time setup code while not onboarded (shown on the console only).
    pub fn setup_code(&self) -> Option<String> {
        self.lock().setup_code.clone()
    }

    /// Checks the setup code (spaces, dashes and case do not matter); only before onboarding.
    pub fn check_setup_code(&self, code: &str) -> Result<(), AuthError> {
        let expected = self.setup_code().ok_or(AuthError::Onboarded)?;
        let normalized: String = code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if !constant_eq(&normalized, &expected.replace('-', "")) {
            return Err(AuthError::BadCode);
        }
        Ok(())
    }

    /// Creates the administrator with the setup code; the code is void afterwards.
    /// Blocking (argon2id under `permit`, and an fsync).
    pub fn onboard(
        &self,
        permit: &password::Permit,
        code: &str,
        user: &str,
        pass: &str,
    ) -> Result<NewSession, AuthError> {
        self.check_setup_code(code)?;
        check_name("username", user)?;
        password::check(pass).map_err(|message| AuthError::Invalid {
            field: "password",
            message,
        })?;
        let rec = User {
            hash: password::hash(permit, pass).map_err(|message| AuthError::Invalid {
                field: "password",
                message,
            })?,
            scope: Scope::Admin,
            created: unix_now(),
        };
        {
            // Re-check under the lock: two onboardings racing must not both win.
            let mut st = self.lock();
            if st.setup_code.is_none() || !st.users.is_empty() {
                return Err(AuthError::Onboarded);
            }
            let json = serde_json::to_string(&rec).unwrap_or_default();
            self.write(USERS, user, Some(&json))?;
            st.users.insert(user.to_string(), rec);
            st.setup_code = None;
        }
        tracing::info!("onboarding complete: administrator {user:?} created; setup code void");
        self.new_session(user, Scope::Admin)
    }

    /// Checks a password and opens a session. Blocking (argon2id under `permit`).
    pub fn login(
        &self,
        permit: &password::Permit,
        user: &str,
        pass: &str,
    ) -> Result<NewSession, AuthError> {
        let rec = self.lock().users.get(user).cloned();
        let ok = match &rec {
            Some(u) => password::verify(permit, pass, &u.hash),
            None => {
                let _ = password::verify(permit, pass, password::decoy(permit));
                false
            }
        };
        match rec {
            Some(u) if ok => self.new_session(user, u.scope),
            _ => Err(AuthError::BadCredentials),
        }
    }

    /// Changes `user`'s password after checking the current one; ends the user's other
    /// sessions. Blocking (argon2id under `permit`).
    pub fn change_password(
        &self,
        permit: &password::Permit,
        user: &str,
        current: &str,
        new: &str,
        keep_session: Option<&str>,
    ) -> Result<(), AuthError> {
        let rec = self
            .lock()
            .users
            .get(user)
            .cloned()
            .ok_or(AuthError::BadCredentials)?;
        // The cheap rule first: a refused new password costs no hashing.
        password::check(new).map_err(|message| AuthError::Invalid {
            field: "password",
            message,
        })?;
        if !password::verify(permit, current, &rec.hash) {
            return Err(AuthError::Invalid {
                field: "current",
                message: "the current password is not correct".into(),
            });
        }
        let rec = User {
            hash: password::hash(permit, new).map_err(|message| AuthError::Invalid {
                field: "password",
                message,
            })?,
            ..rec
        };
        let json = serde_json::to_string(&rec).unwrap_or_default();
        self.write(USERS, user, Some(&json))?;
        let ended: Vec<String> = {
            let mut st = self.lock();
            st.users.insert(user.to_string(), rec);
            st.sessions
                .iter()
                .filter(|(k, s)| s.user == user && Some(k.as_str()) != keep_session)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for k in ended {
            self.end_session(&k)?;
        }
        Ok(())
    }

    fn new_session(&self, user: &str, scope: Scope) -> Result<NewSession, AuthError> {
        let id = hex::encode(random_bytes::<32>());
        let csrf = hex::encode(random_bytes::<32>());
        let t = unix_now();
        let s = Session {
            user: user.to_string(),
            scope,
            csrf: csrf.clone(),
            created: t,
            last_seen: t,
        };
        let key = sha256_hex(&id);
        let json = serde_json::to_string(&s).unwrap_or_default();
        self.write(SESSIONS, &key, Some(&json))?;
        self.lock().sessions.insert(key, s);
        Ok(NewSession {
            id,
            csrf,
            user: user.to_string(),
            scope,
        })
    }

    /// The caller and CSRF token of a session cookie value, if it is a live session.
    pub fn session(&self, cookie: &str) -> Option<(Caller, String)> {
        let key = sha256_hex(cookie);
        let t = unix_now();
        let mut st = self.lock();
        let s = st.sessions.get_mut(&key)?;
        if t >= s.created + SESSION_MAX || t >= s.last_seen.max(s.created) + SESSION_IDLE {
            return None;
        }
        // Idle time is tracked in memory; the stored value is the creation time.
        s.last_seen = t;
        Some((
            Caller {
                name: s.user.clone(),
                scope: s.scope,
                session: Some(key),
            },
            s.csrf.clone(),
        ))
    }

    /// Ends a session (by its stored key).
    pub fn end_session(&self, key: &str) -> Result<(), AuthError> {
        self.write(SESSIONS, key, None)?;
        self.lock().sessions.remove(key);
        Ok(())
    }

    /// The caller an `Authorization: Bearer` token stands for.
    pub fn token(&self, token: &str) -> Result<Caller, TokenRefusal> {
        let id = token
            .strip_prefix("cairn_")
            .and_then(|t| t.split('_').next())
            .ok_or(TokenRefusal::Unknown)?;
        let hash = sha256_hex(token);
        let mut st = self.lock();
        let t = st.tokens.get_mut(id).ok_or(TokenRefusal::Unknown)?;
        if !constant_eq(&t.hash, &hash) {
            return Err(TokenRefusal::Unknown);
        }
        let now = unix_now();
        if let Some(at) = t.expires
            && now >= at
        {
            return Err(TokenRefusal::Expired(at));
        }
        t.last_used = Some(now);
        Ok(Caller {
            name: format!("token:{}", t.name),
            scope: t.scope,
            session: None,
        })
    }

    /// Every API token (without secrets), oldest first.
    pub fn tokens(&self) -> Vec<TokenInfo> {
        let mut v: Vec<TokenInfo> = self.lock().tokens.values().cloned().collect();
        v.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        v
    }

    /// Makes an API token that expires at `expires` (Unix seconds; `None`: never); returns it
    /// with the secret, which is not kept.
    pub fn create_token(
        &self,
        name: &str,
        scope: Scope,
        expires: Option<u64>,
    ) -> Result<(TokenInfo, String), AuthError> {
        let ok = (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control);
        if !ok {
            return Err(AuthError::Invalid {
                field: "name",
                message: "use 1-64 printable characters".into(),
            });
        }
        if self.lock().tokens.values().any(|t| t.name == name) {
            return Err(AuthError::Invalid {
                field: "name",
                message: format!("a token named {name:?} exists"),
            });
        }
        let id = hex::encode(random_bytes::<6>());
        let secret = hex::encode(random_bytes::<32>());
        let token = format!("cairn_{id}_{secret}");
        let info = TokenInfo {
            id: id.clone(),
            name: name.to_string(),
            scope,
            created: unix_now(),
            last_used: None,
            expires,
            hash: sha256_hex(&token),
        };
        // The stored form keeps the hash (skipped when listing).
        let mut stored = serde_json::to_value(&info).unwrap_or_default();
        stored["hash"] = info.hash.clone().into();
        self.write(TOKENS, &id, Some(&stored.to_string()))?;
        self.lock().tokens.insert(id, info.clone());
        Ok((info, token))
    }

    /// Revokes a token; false when there is no such token.
    pub fn revoke_token(&self, id: &str) -> Result<bool, AuthError> {
        if !self.lock().tokens.contains_key(id) {
            return Ok(false);
        }
        self.write(TOKENS, id, None)?;
        self.lock().tokens.remove(id);
        Ok(true)
    }

    /// Appends an operator action to the audit log. Blocking (fsync).
    pub fn record(&self, entry: &AuditEntry) -> Result<(), AuthError> {
        let Some(db) = &self.db else { return Ok(()) };
        let mut seq = self.audit_seq.lock().unwrap_or_else(|p| p.into_inner());
        let key = *seq + 1;
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(AUDIT).map_err(storage)?;
            let json = serde_json::to_string(entry).unwrap_or_default();
            t.insert(key, json.as_str()).map_err(storage)?;
            if key > AUDIT_KEEP {
                t.retain_in(..key - AUDIT_KEEP, |_, _| false)
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        *seq = key;
        Ok(())
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, AuthError> {
        let Some(db) = &self.db else {
            return Ok(Vec::new());
        };
        let txn = db.begin_read().map_err(storage)?;
        let t = match txn.open_table(AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)?.rev().take(limit) {
            let (_, v) = row.map_err(storage)?;
            if let Ok(e) = serde_json::from_str(v.value()) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

/// The stored tokens; a record from before expiry existed (no `expires` field) gets the default
/// lifetime counted from now, written back so that it does not move at every start.
fn load_tokens(db: &Database) -> Result<HashMap<String, TokenInfo>, AuthError> {
    let raw: HashMap<String, serde_json::Value> = load(db, TOKENS)?;
    let deadline = unix_now() + TOKEN_DEFAULT_LIFETIME;
    let mut out = HashMap::new();
    let mut migrated = Vec::new();
    for (id, mut v) in raw {
        if let Some(obj) = v.as_object_mut()
            && !obj.contains_key("expires")
        {
            obj.insert("expires".into(), deadline.into());
            migrated.push((id.clone(), v.to_string()));
        }
        match serde_json::from_value::<TokenInfo>(v) {
            Ok(t) => {
                out.insert(id, t);
            }
            Err(e) => tracing::warn!("auth: skipping unreadable token {id}: {e}"),
        }
    }
    if !migrated.is_empty() {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(TOKENS).map_err(storage)?;
            for (id, json) in &migrated {
                t.insert(id.as_str(), json.as_str()).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        tracing::info!(
            "auth: {} API token(s) from before token expiry now expire in {} days",
            migrated.len(),
            TOKEN_DEFAULT_LIFETIME / 86_400
        );
    }
    Ok(out)
}

fn new_setup_code() -> String {
    let bytes = random_bytes::<12>();
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| CODE_ALPHABET[*b as usize % CODE_ALPHABET.len()] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(a: &Auth) -> password::Permit {
        a.hashing.try_acquire().unwrap()
    }

    fn open(dir: &std::path::Path) -> Auth {
        let db = Arc::new(Database::create(dir.join("a.redb")).unwrap());
        Auth::open(Some(db)).unwrap()
    }

    #[test]
    fn onboarding_voids_the_code_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let code = {
            let a = open(dir.path());
            let code = a.setup_code().unwrap();
            assert_eq!(code.len(), 14, "{code}");
            assert!(matches!(
                a.onboard(&permit(&a), "AAAA-AAAA-AAAA", "admin", "long enough pw"),
                Err(AuthError::BadCode)
            ));
            assert!(matches!(
                a.onboard(&permit(&a), &code, "admin", "short"),
                Err(AuthError::Invalid {
                    field: "password",
                    ..
                })
            ));
            assert!(matches!(
                a.onboard(&permit(&a), &code, "Bad Name", "long enough pw"),
                Err(AuthError::Invalid {
                    field: "username",
                    ..
                })
            ));
            // Codes are accepted without dashes and in lower case.
            let s = a
                .onboard(
                    &permit(&a),
                    &code.replace('-', "").to_lowercase(),
                    "admin",
                    "long enough pw",
                )
                .unwrap();
            assert!(a.session(&s.id).is_some());
            assert!(a.setup_code().is_none());
            assert!(matches!(
                a.onboard(&permit(&a), &code, "admin2", "long enough pw"),
                Err(AuthError::Onboarded)
            ));
            code
        };
        let a = open(dir.path());
        assert!(a.onboarded());
        assert!(a.setup_code().is_none());
        assert!(matches!(
            a.onboard(&permit(&a), &code, "x", "long enough pw"),
            Err(AuthError::Onboarded)
        ));
        assert!(a.login(&permit(&a), "admin", "long enough pw").is_ok());
        assert!(matches!(
            a.login(&permit(&a), "admin", "wrong password"),
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            a.login(&permit(&a), "nobody", "long enough pw"),
            Err(AuthError::BadCredentials)
        ));
    }

    #[test]
    fn tokens_are_stored_hashed_scoped_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let (id, token) = {
            let a = open(dir.path());
            let (info, token) = a.create_token("ci", Scope::Reader, None).unwrap();
            assert!(
                a.create_token("ci", Scope::Admin, None).is_err(),
                "names are unique"
            );
            (info.id, token)
        };
        let raw = std::fs::read(dir.path().join("a.redb")).unwrap();
        let secret = token.rsplit('_').next().unwrap();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is not on disk"
        );
        let a = open(dir.path());
        let c = a.token(&token).unwrap();
        assert_eq!((c.name.as_str(), c.scope), ("token:ci", Scope::Reader));
        assert!(a.token(&format!("{token}x")).is_err());
        assert_eq!(
            a.token("cairn_nope_nope").unwrap_err(),
            TokenRefusal::Unknown
        );
        assert!(a.revoke_token(&id).unwrap());
        assert!(a.token(&token).is_err());
        assert!(!a.revoke_token(&id).unwrap());
    }

    #[test]
    fn password_change_ends_other_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let code = a.setup_code().unwrap();
        let one = a
            .onboard(&permit(&a), &code, "admin", "first password")
            .unwrap();
        let two = a.login(&permit(&a), "admin", "first password").unwrap();
        let keep = a.session(&one.id).unwrap().0.session;
        assert!(
            a.change_password(
                &permit(&a),
                "admin",
                "wrong",
                "second password",
                keep.as_deref()
            )
            .is_err()
        );
        a.change_password(
            &permit(&a),
            "admin",
            "first password",
            "second password",
            keep.as_deref(),
        )
        .unwrap();
        assert!(a.session(&one.id).is_some());
        assert!(a.session(&two.id).is_none());
        assert!(a.login(&permit(&a), "admin", "second password").is_ok());
    }

    #[test]
    fn audit_keeps_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        for i in 0..3 {
            a.record(&AuditEntry {
                time: i,
                actor: "admin".into(),
                method: "PUT".into(),
                path: format!("/api/v1/settings/k{i}"),
                status: 200,
            })
            .unwrap();
        }
        drop(a);
        let a = open(dir.path());
        let e = a.audit(2).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].path, "/api/v1/settings/k2");
    }

    #[test]
    fn expired_tokens_are_refused_and_old_records_get_the_default_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let now = unix_now();
        let (_, old) = a.create_token("old", Scope::Admin, Some(now - 1)).unwrap();
        assert_eq!(a.token(&old).unwrap_err(), TokenRefusal::Expired(now - 1));
        let (_, never) = a.create_token("never", Scope::Admin, None).unwrap();
        assert!(a.token(&never).is_ok());
        // A record written before tokens had an expiry.
        let (legacy, legacy_token) = a
            .create_token("legacy", Scope::Reader, Some(now + 10))
            .unwrap();
        let mut rec = serde_json::to_value(&legacy).unwrap();
        rec.as_object_mut().unwrap().remove("expires");
        rec["hash"] = sha256_hex(&legacy_token).into();
        a.write(TOKENS, &legacy.id, Some(&rec.to_string())).unwrap();
        drop(a);
        let a = open(dir.path());
        assert!(a.token(&legacy_token).is_ok(), "old tokens keep working");
        let listed = a.tokens();
        let get = |n: &str| listed.iter().find(|t| t.name == n).unwrap().expires;
        let migrated = get("legacy").unwrap();
        assert!(migrated >= now + TOKEN_DEFAULT_LIFETIME, "{migrated}");
        assert_eq!(get("never"), None, "an explicit never stays never");
        drop(a);
        let a = open(dir.path());
        let again = a
            .tokens()
            .iter()
            .find(|t| t.name == "legacy")
            .unwrap()
            .expires;
        assert_eq!(
            again,
            Some(migrated),
            "the migrated expiry is stored, not recomputed"
        );
    }

    #[test]
    fn audit_names_are_the_account_rules_or_a_placeholder() {
        assert_eq!(audit_name("admin"), "admin");
        assert_eq!(audit_name(&"a".repeat(65)), INVALID_NAME);
        assert_eq!(audit_name("é".repeat(40).as_str()), INVALID_NAME);
        assert_eq!(audit_name("Admin"), INVALID_NAME);
        assert_eq!(audit_name(""), INVALID_NAME);
    }
}

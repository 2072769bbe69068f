//! The model router: every LLM call — the OpenAI-compatible API and agents — goes through
//! [`Router`], which picks a target among the local models and the configured remote providers
//! (by explicit model name or by [`Policy`]), enforces the call's constraints and the budgets
//! before the call, retries transient failures within a retry budget, falls back to the next
//! eligible target, keeps a circuit breaker per provider, and accounts tokens and cost in redb.
//! See docs/router.md.

mod chat_stream;
pub mod config;
pub mod health;
pub mod keys;
pub mod ledger;
pub mod local;
mod plan;
pub mod remote;

pub use cairn_models::chat::Message as ChatMessage;
pub use config::{ModelKind, Policy, ProviderConfig, ProviderKind, RemoteModel, RouterSettings};

use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::store::StoreError;
use health::{Breaker, BreakerState, RetryBudget, backoff, random_unit};
use keys::KeyBox;
use ledger::{Ledger, Score, StoredProvider, UsageLine, UsageRow};
use local::LocalFailure;
use remote::{FailKind, Failure};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Retry-After values up to this are waited for; longer ones move on to the next target.
const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(10);
/// Backoff base and cap.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Retry budget: `RETRY_FLOOR + RETRY_RATIO × calls` retries per provider per window.
const RETRY_WINDOW: Duration = Duration::from_secs(60);
const RETRY_RATIO: f64 = 0.2;
const RETRY_FLOOR: usize = 3;
/// Completion tokens assumed when a call sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// Who makes a call (accounting and per-agent budgets).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Caller {
    /// The HTTP API (`/v1/...`).
    #[default]
    Api,
    /// An agent, optionally in a run.
    Agent {
        /// The agent's name.
        name: String,
        /// The run.
        run: Option<String>,
    },
}

impl Caller {
    /// The accounting label: `api` or `agent:NAME`.
    pub fn label(&self) -> String {
        match self {
            Caller::Api => "api".into(),
            Caller::Agent { name, .. } => format!("agent:{name}"),
        }
    }
}

/// Per-call routing context.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// Who calls.
    pub caller: Caller,
    /// Policy for this call (the configured default when `None`).
    pub policy: Option<Policy>,
    /// Sensitive data never leaves the appliance: remote targets are ineligible.
    pub sensitive: bool,
    /// Most this call may cost (estimated before the call).
    pub max_cost_usd: Option<f64>,
    /// Most this call may take: targets measured slower are skipped, attempts are cut at it.
    pub max_latency_ms: Option<u64>,
    /// Task kind for learned quality scores (`summarise`, `code`, …).
    pub task_kind: Option<String>,
}

/// A chat call.
#[derive(Debug, Clone, Default)]
pub struct ChatCall {
    /// Local model id, `provider/model`, or `None` / `"auto"`: the policy picks.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate ([`DEFAULT_MAX_TOKENS`] when `None`).
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Seed.
    pub seed: Option<u64>,
    /// Top-k (local models and Anthropic).
    pub top_k: Option<usize>,
    /// Min-p (local models).
    pub min_p: Option<f32>,
    /// Repetition penalty (local models).
    pub repetition_penalty: Option<f32>,
    /// Presence penalty (local and OpenAI-compatible).
    pub presence_penalty: Option<f32>,
    /// Frequency penalty (local and OpenAI-compatible).
    pub frequency_penalty: Option<f32>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// End of turn or a stop string.
    #[default]
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Tokens of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Prompt tokens served from a kept KV cache (local models).
    pub cached_tokens: u64,
}

/// A finished chat.
#[derive(Debug, Clone, Serialize)]
pub struct ChatOutcome {
    /// The answer.
    pub text: String,
    /// The model that answered (local id or `provider/model`).
    pub model: String,
    /// `local` or the provider's name.
    pub provider: String,
    /// Tokens.
    pub usage: TokenUsage,
    /// US dollars.
    pub cost_usd: f64,
    /// Wall time of the successful attempt itself; the rest of the call is the router's own work.
    pub latency: Duration,
    /// Why it ended.
    pub finish_reason: Finish,
}

/// What a [`ChatStream`] yields.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// More text.
    Delta(String),
    /// The end, with the accounting.
    Done(ChatOutcome),
    /// The stream failed after it started (no fallback is possible then).
    Error(String),
}

/// A streaming chat: text deltas, then `Done` or `Error`. Dropping it cancels the call.
pub struct ChatStream {
    /// The model that answers.
    pub model: String,
    /// `local` or the provider's name.
    pub provider: String,
    rx: mpsc::Receiver<StreamEvent>,
}

impl ChatStream {
    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.rx.recv().await
    }
}

/// Embeddings.
#[derive(Debug, Clone)]
pub struct EmbedOutcome {
    /// One vector per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// The model.
    pub model: String,
    /// `local` or the provider's name.
    pub provider: String,
    /// Tokens.
    pub prompt_tokens: u64,
    /// US dollars.
    pub cost_usd: f64,
    /// Milliseconds.
    pub latency_ms: u64,
}

/// Why the router could not serve a call. `status()` and `code()` give the HTTP mapping.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouterError {
    /// No such model (404).
    #[error("model {0:?} does not exist")]
    UnknownModel(String),
    /// A chat model used for embeddings or the reverse (400).
    #[error("model {model:?} is a {kind} model")]
    WrongKind {
        /// The model.
        model: String,
        /// What it is.
        kind: &'static str,
    },
    /// The call is invalid (400).
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// The parameter.
        param: Option<&'static str>,
    },
    /// Policy, sensitivity, offline mode or a constraint forbids every target (403).
    #[error("{0}")]
    Forbidden(String),
    /// A budget refuses the call before it is made (402 for cost, 429 for tokens).
    #[error("{message}")]
    Budget {
        /// Which budget.
        message: String,
        /// A cost budget (402) rather than a token budget (429).
        cost: bool,
        /// Seconds until the window resets.
        retry_after: Option<u64>,
    },
    /// The prompt does not fit the model's context (400 `context_length_exceeded`).
    #[error("{0}")]
    ContextTooLong(String),
    /// Every target is busy or rate limited (429).
    #[error("{message}")]
    Busy {
        /// What happened.
        message: String,
        /// Seconds.
        retry_after: u64,
    },
    /// No target could be reached (503).
    #[error("{message}")]
    Unavailable {
        /// Each target's failure.
        message: String,
        /// Seconds.
        retry_after: Option<u64>,
        /// A local model failed to load (`model_unavailable`).
        load: bool,
    },
    /// Targets answered with errors (502).
    #[error("{0}")]
    Upstream(String),
    /// The usage ledger could not be read (500).
    #[error("usage ledger: {0}")]
    Ledger(#[source] std::sync::Arc<crate::store::StoreError>),
    /// A local model failed while generating (500); the message is the engine's, which logs
    /// its typed cause on its worker thread.
    #[error("{0}")]
    LocalModel(String),
}

impl From<crate::store::StoreError> for RouterError {
    fn from(e: crate::store::StoreError) -> Self {
        RouterError::Ledger(std::sync::Arc::new(e))
    }
}

impl RouterError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            RouterError::UnknownModel(_) => 404,
            RouterError::WrongKind { .. }
            | RouterError::Invalid { .. }
            | RouterError::ContextTooLong(_) => 400,
            RouterError::Forbidden(_) => 403,
            RouterError::Budget { cost: true, .. } => 402,
            RouterError::Budget { cost: false, .. } | RouterError::Busy { .. } => 429,
            RouterError::Unavailable { .. } => 503,
            RouterError::Upstream(_) => 502,
            RouterError::Ledger(_) | RouterError::LocalModel(_) => 500,
        }
    }

    /// Stable error code.
    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            RouterError::UnknownModel(_) => "model_not_found",
            RouterError::WrongKind { .. } | RouterError::Invalid { .. } => return None,
            RouterError::Forbidden(_) => "policy_forbids",
            RouterError::Budget { .. } => "budget_exceeded",
            RouterError::ContextTooLong(_) => "context_length_exceeded",
            RouterError::Busy { .. } => "model_busy",
            RouterError::Unavailable { load: true, .. } => "model_unavailable",
            RouterError::Unavailable { .. } => "no_target_available",
            RouterError::Upstream(_) => "upstream_failed",
            RouterError::Ledger(_) | RouterError::LocalModel(_) => return None,
        })
    }

    /// `Retry-After` seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            RouterError::Budget { retry_after, .. }
            | RouterError::Unavailable { retry_after, .. } => *retry_after,
            RouterError::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The request parameter at fault.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            RouterError::UnknownModel(_) | RouterError::WrongKind { .. } => Some("model"),
            RouterError::Invalid { param, .. } => *param,
            RouterError::ContextTooLong(_) => Some("messages"),
            RouterError::Unavailable { load: true, .. } => Some("model"),
            _ => None,
        }
    }
}

/// Why one target failed.
#[derive(Debug, Clone)]
enum TargetFailure {
    Local(LocalFailure),
    Remote(Failure),
    BreakerOpen(Duration),
}

impl TargetFailure {
    fn message(&self) -> String {
        match self {
            TargetFailure::Local(l) => l.message().to_string(),
            TargetFailure::Remote(f) => f.message.clone(),
            TargetFailure::BreakerOpen(d) => {
                format!("circuit breaker open (next probe in {} ms)", d.as_millis())
            }
        }
    }
}

/// Turns the failures of every target tried into one error naming each.
fn combine(mut failures: Vec<(String, TargetFailure)>) -> RouterError {
    if failures.len() == 1 {
        let (name, f) = failures.remove(0);
        return match f {
            TargetFailure::Local(LocalFailure::Busy {
                message,
                retry_after,
            }) => RouterError::Busy {
                message,
                retry_after,
            },
            TargetFailure::Local(LocalFailure::TooLong(m)) => RouterError::ContextTooLong(m),
            TargetFailure::Local(LocalFailure::Load(m)) => RouterError::Unavailable {
                message: m,
                retry_after: Some(30),
                load: true,
            },
            TargetFailure::Local(LocalFailure::Invalid(m)) => RouterError::Invalid {
                message: m,
                param: None,
            },
            TargetFailure::Local(LocalFailure::Failed(m)) => RouterError::LocalModel(m),
            TargetFailure::BreakerOpen(d) => RouterError::Unavailable {
                message: format!("{name}: {}", f.message()),
                retry_after: Some(d.as_secs().max(1)),
                load: false,
            },
            TargetFailure::Remote(r) => remote_error(&name, &r),
        };
    }
    let message = format!(
        "every target failed: {}",
        failures
            .iter()
            .map(|(n, f)| format!("{n}: {}", f.message()))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let busy = |f: &TargetFailure| match f {
        TargetFailure::Local(LocalFailure::Busy { retry_after, .. }) => Some(*retry_after),
        TargetFailure::Remote(Failure {
            kind: FailKind::RateLimited,
            retry_after,
            ..
        }) => Some(retry_after.map_or(1, |d| d.as_secs().max(1))),
        _ => None,
    };
    if failures.iter().all(|(_, f)| busy(f).is_some()) {
        let retry_after = failures
            .iter()
            .filter_map(|(_, f)| busy(f))
            .min()
            .unwrap_or(1);
        return RouterError::Busy {
            message,
            retry_after,
        };
    }
    let unreachable = |f: &TargetFailure| match f {
        TargetFailure::Local(LocalFailure::Load(_) | LocalFailure::Busy { .. }) => true,
        TargetFailure::BreakerOpen(_) => true,
        TargetFailure::Remote(r) => matches!(
            r.kind,
            FailKind::Timeout | FailKind::Connect | FailKind::RateLimited
        ),
        _ => false,
    };
    if failures.iter().all(|(_, f)| unreachable(f)) {
        RouterError::Unavailable {
            message,
            retry_after: Some(5),
            load: false,
        }
    } else {
        RouterError::Upstream(message)
    }
}

fn remote_error(name: &str, r: &Failure) -> RouterError {
    let message = format!("{name}: {}", r.message);
    match r.kind {
        FailKind::RateLimited => RouterError::Busy {
            message,
            retry_after: r.retry_after.map_or(1, |d| d.as_secs().max(1)),
        },
        FailKind::Timeout | FailKind::Connect => RouterError::Unavailable {
            message,
            retry_after: Some(5),
            load: false,
        },
        _ => RouterError::Upstream(message),
    }
}

/// Frees a half-open breaker's probe slot when the attempt holding it ends without a verdict:
/// its future was dropped (the caller went away) or it panicked. Otherwise the breaker would
/// wait for that probe forever and never let a call through again.
struct ProbeSlot<'a> {
    health: &'a HealthMap,
    provider: &'a str,
    held: bool,
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        if self.held
            && let Ok(mut map) = self.health.lock()
            && let Some(h) = map.get_mut(self.provider)
        {
            h.breaker.release();
        }
    }
}

/// A call on a remote target not yet accounted: dropped unsettled (its future dropped, or its
/// task panicked), it records a failed call, so the usage never misses one.
struct Unsettled {
    acct: Accountant,
    provider: String,
    model: String,
    armed: bool,
}

impl Unsettled {
    /// Watches a call on `t`; nothing to watch for a local target.
    fn watch(acct: &Accountant, t: &Target) -> Option<Unsettled> {
        match t {
            Target::Local(_) => None,
            Target::Remote(p, m) => Some(Unsettled {
                acct: acct.clone(),
                provider: p.config.name.clone(),
                model: m.id.clone(),
                armed: true,
            }),
        }
    }

    /// The call is accounted by its own path.
    fn settle(mut self) {
        self.armed = false;
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        if self.armed {
            self.acct.record(
                &self.provider,
                &self.model,
                UsageRow {
                    failures: 1,
                    ..Default::default()
                },
            );
        }
    }
}

/// A configured provider, ready for calls.
struct Provider {
    config: ProviderConfig,
    key: Option<String>,
    sealed_key: Option<String>,
    client: reqwest::Client,
}

impl Provider {
    fn endpoint(&self) -> remote::Endpoint<'_> {
        remote::Endpoint {
            config: &self.config,
            key: self.key.as_deref(),
            client: &self.client,
        }
    }
}

/// A provider as the API shows it: its configuration and whether a key is set, never the key.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderView {
    /// Configuration.
    #[serde(flatten)]
    pub config: ProviderConfig,
    /// Whether an API key is stored.
    pub key_set: bool,
}

/// A provider's breaker as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    /// Provider.
    pub provider: String,
    /// State.
    pub state: BreakerState,
    /// Consecutive failures while closed.
    pub consecutive_failures: u32,
    /// Times it opened since start.
    pub opened: u64,
    /// Milliseconds until an open breaker lets a probe through.
    pub retry_in_ms: Option<u64>,
    /// Milliseconds the provider asked us to wait (429 `Retry-After`).
    pub rate_limited_ms: Option<u64>,
    /// Calls and retries in the retry budget's window.
    pub window_calls: usize,
    /// Retries in the window.
    pub window_retries: usize,
}

/// A learned score as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreView {
    /// Model.
    pub model: String,
    /// Task kind.
    pub task_kind: String,
    /// Judgements.
    pub n: u64,
    /// Their mean.
    pub mean: f64,
}

/// Why an administrative change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Invalid input (400).
    #[error(transparent)]
    Invalid(#[from] config::Invalid),
    /// No such provider (404).
    #[error("no provider {0:?}")]
    NotFound(String),
    /// It exists already (409).
    #[error("provider {0:?} exists already")]
    Conflict(String),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Health {
    breaker: Breaker,
    retries: RetryBudget,
    rate_limited_until: Option<Instant>,
}

impl Health {
    fn new(c: &ProviderConfig) -> Health {
        Health {
            breaker: Breaker::new(
                c.breaker_failures,
                Duration::from_millis(c.breaker_cooldown_ms),
            ),
            retries: RetryBudget::new(RETRY_WINDOW, RETRY_RATIO, RETRY_FLOOR),
            rate_limited_until: None,
        }
    }
}

type HealthMap = Arc<Mutex<HashMap<String, Health>>>;
type LatencyMap = Arc<Mutex<HashMap<String, f64>>>;

/// A target of one call.
#[derive(Clone)]
enum Target {
    Local(String),
    Remote(Arc<Provider>, RemoteModel),
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Local(id) => id.clone(),
            Target::Remote(p, m) => format!("{}/{}", p.config.name, m.id),
        }
    }
    fn provider(&self) -> String {
        match self {
            Target::Local(_) => "local".into(),
            Target::Remote(p, _) => p.config.name.clone(),
        }
    }
    fn is_local(&self) -> bool {
        matches!(self, Target::Local(_))
    }
    fn cost(&self, prompt: u64, completion: u64) -> f64 {
        match self {
            Target::Local(_) => 0.0,
            Target::Remote(_, m) => m.cost(prompt, completion),
        }
    }
}

/// What ranking needs to know of a candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rank {
    /// A local model.
    pub local: bool,
    /// Estimated cost of the call.
    pub cost: f64,
    /// Measured latency (EWMA, ms), if measured.
    pub latency_ms: Option<f64>,
    /// Learned mean score for the task kind, if any.
    pub score: Option<Score>,
}

impl Rank {
    /// Mean score with a 0.5 prior weighing one judgement.
    fn quality(&self) -> f64 {
        let s = self.score.unwrap_or_default();
        (s.sum + 0.5) / (s.n as f64 + 1.0)
    }
}

/// The order in which `policy` tries candidates: indices into `c`, best first.
pub fn rank(policy: Policy, c: &[Rank]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..c.len()).collect();
    let remote = |i: &usize| !c[*i].local;
    match policy {
        Policy::LocalOnly => idx.retain(|i| c[*i].local),
        Policy::PreferLocal => idx.sort_by(|a, b| {
            remote(a)
                .cmp(&remote(b))
                .then(c[*a].cost.total_cmp(&c[*b].cost))
        }),
        Policy::Cheapest => idx.sort_by(|a, b| {
            c[*a]
                .cost
                .total_cmp(&c[*b].cost)
                .then(remote(a).cmp(&remote(b)))
        }),
        Policy::Fastest => idx.sort_by(|a, b| {
            // Unmeasured targets first, so they get measured.
            let l = |i: &usize| c[*i].latency_ms.unwrap_or(-1.0);
            l(a).total_cmp(&l(b)).then(remote(a).cmp(&remote(b)))
        }),
        Policy::BestQuality => idx.sort_by(|a, b| {
            c[*b]
                .quality()
                .total_cmp(&c[*a].quality())
                .then(c[*a].cost.total_cmp(&c[*b].cost))
        }),
    }
    idx
}

/// Rough token count of a text (4 bytes a token), for estimates before a call.
fn estimate_tokens(text_len: usize) -> u64 {
    (text_len as u64).div_ceil(4)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Settings of [`Router::open`].
pub struct RouterOptions {
    /// Local models.
    pub inference: Arc<Inference>,
    /// Inference counters (local calls).
    pub metrics: Arc<Metrics>,
    /// The database and its file (none in degraded mode: nothing persists).
    pub db: Option<(Arc<redb::Database>, PathBuf)>,
    /// Where the key file lives.
    pub data_dir: PathBuf,
}

/// The model router.
pub struct Router {
    inference: Arc<Inference>,
    metrics: Arc<Metrics>,
    ledger: Ledger,
    keys: Result<KeyBox, String>,
    settings: RwLock<RouterSettings>,
    providers: RwLock<BTreeMap<String, Arc<Provider>>>,
    health: HealthMap,
    latency: LatencyMap,
    scores: Mutex<HashMap<(String, String), Score>>,
}

/// Accounting shared by the call paths and stream tasks.
#[derive(Clone)]
struct Accountant {
    ledger: Ledger,
    latency: LatencyMap,
    health: HealthMap,
    caller: String,
}

impl Accountant {
    fn record(&self, provider: &str, model: &str, row: UsageRow) {
        let (level, what) = if row.calls > 0 {
            (
                "info",
                format!(
                    "{} → {provider}/{model}: {} + {} tokens, ${:.4}",
                    self.caller, row.prompt_tokens, row.completion_tokens, row.cost_usd
                ),
            )
        } else {
            (
                "warn",
                format!("{} → {provider}/{model}: attempt failed", self.caller),
            )
        };
        crate::events::emit("router.call", provider, level, what);
        if !self.ledger.persistent() {
            return;
        }
        let now = unix_now();
        if let Err(e) = self.ledger.record(
            (now / 86_400) as u32,
            now / 3600,
            &self.caller,
            provider,
            model,
            &row,
        ) {
            tracing::warn!("router: usage of {provider}/{model} not recorded: {e}");
        }
    }

    /// Records a call; the ledger only queues it, so this never waits for a commit.
    async fn record_async(&self, provider: String, model: String, row: UsageRow) {
        self.record(&provider, &model, row);
    }

    fn observe_latency(&self, target: &str, ms: f64) {
        if let Ok(mut l) = self.latency.lock() {
            let e = l.entry(target.to_string()).or_insert(ms);
            *e = 0.7 * *e + 0.3 * ms;
        }
    }

    fn breaker_failure(&self, provider: &str) {
        if let Ok(mut h) = self.health.lock()
            && let Some(h) = h.get_mut(provider)
        {
            let now = Instant::now();
            let before = h.breaker.state(now);
            h.breaker.failure(now);
            if before != BreakerState::Open && h.breaker.state(now) == BreakerState::Open {
                crate::events::emit(
                    "router.breaker",
                    provider,
                    "warn",
                    "breaker opened: calls skip this provider until a probe succeeds",
                );
            }
        }
    }
}

impl Router {
    /// Opens the router: settings, providers (keys decrypted with the key file in
    /// `data_dir`) and scores from the database.
    pub fn open(opts: RouterOptions) -> Router {
        let ledger = Ledger::new(opts.db);
        let keys = if ledger.persistent() {
            KeyBox::open(&opts.data_dir.join(keys::KEY_FILE))
        } else {
            KeyBox::ephemeral()
        }
        .map_err(|e| format!("the router's key file is unusable: {e}"));
        if let Err(e) = &keys {
            tracing::error!("{e}; provider keys cannot be stored or read");
        }
        let settings = ledger.settings().unwrap_or_else(|e| {
            tracing::error!("router settings unreadable ({e}); using defaults");
            RouterSettings::default()
        });
        let mut providers = BTreeMap::new();
        let mut health = HashMap::new();
        for sp in ledger.providers().unwrap_or_else(|e| {
            tracing::error!("router providers unreadable: {e}");
            Vec::new()
        }) {
            let name = sp.config.name.clone();
            let key = match (&sp.sealed_key, &keys) {
                (None, _) => None,
                (Some(hexed), Ok(kb)) => {
                    let k = hex::decode(hexed).ok().and_then(|b| kb.unseal(&name, &b));
                    if k.is_none() {
                        tracing::error!(
                            "router: the key of provider {name} cannot be decrypted (key file replaced?); set it again"
                        );
                    }
                    k
                }
                (Some(_), Err(_)) => None,
            };
            match remote::client(&sp.config) {
                Ok(client) => {
                    health.insert(name.clone(), Health::new(&sp.config));
                    providers.insert(
                        name,
                        Arc::new(Provider {
                            config: sp.config,
                            key,
                            sealed_key: sp.sealed_key,
                            client,
                        }),
                    );
                }
                Err(e) => tracing::error!("router: provider {name} unusable: {e}"),
            }
        }
        let scores = ledger
            .scores()
            .unwrap_or_default()
            .into_iter()
            .map(|(m, k, s)| ((m, k), s))
            .collect();
        Router {
            inference: opts.inference,
            metrics: opts.metrics,
            ledger,
            keys,
            settings: RwLock::new(settings),
            providers: RwLock::new(providers),
            health: Arc::new(Mutex::new(health)),
            latency: Arc::new(Mutex::new(HashMap::new())),
            scores: Mutex::new(scores),
        }
    }

    fn accountant(&self, ctx: &CallContext) -> Accountant {
        Accountant {
            ledger: self.ledger.clone(),
            latency: self.latency.clone(),
            health: self.health.clone(),
            caller: ctx.caller.label(),
        }
    }

    /// Waits (at most 5 s) until the usage of every finished call is committed.
    pub fn flush_usage(&self) {
        self.ledger.flush(Duration::from_secs(5));
    }

    /// The current settings.
    pub fn settings(&self) -> RouterSettings {
        self.settings.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Replaces the settings (persisted first).
    pub fn set_settings(&self, s: RouterSettings) -> Result<(), AdminError> {
        self.ledger.put_settings(&s)?;
        if let Ok(mut cur) = self.settings.write() {
            *cur = s;
        }
        Ok(())
    }

    fn provider_list(&self) -> Vec<Arc<Provider>> {
        self.providers
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    fn view(p: &Provider) -> ProviderView {
        ProviderView {
            config: p.config.clone(),
            key_set: p.key.is_some() || p.sealed_key.is_some(),
        }
    }

    /// Every provider (without keys).
    pub fn providers(&self) -> Vec<ProviderView> {
        self.provider_list().iter().map(|p| Self::view(p)).collect()
    }

    /// One provider (without its key).
    pub fn provider(&self, name: &str) -> Option<ProviderView> {
        self.providers
            .read()
            .ok()
            .and_then(|p| p.get(name).map(|p| Self::view(p)))
    }

    fn install(
        &self,
        input: config::ProviderInput,
        existing: Option<Arc<Provider>>,
    ) -> Result<ProviderView, AdminError> {
        let cfg = input.config;
        let client = remote::client(&cfg).map_err(|e| config::Invalid {
            field: if cfg.ca_pem.is_some() {
                "ca_pem".into()
            } else {
                "base_url".into()
            },
            message: e,
        })?;
        // A key belongs to the address and trust it was given for: a new base_url, CA or pin
        // drops it unless the same update sets it again.
        let moved = existing.as_ref().is_some_and(|p| {
            p.config.base_url != cfg.base_url
                || p.config.ca_pem != cfg.ca_pem
                || p.config.tls_sha256 != cfg.tls_sha256
        });
        let (key, sealed_key) = match input.key {
            None if moved => {
                if existing.as_ref().is_some_and(|p| p.sealed_key.is_some()) {
                    tracing::info!(
                        "router: provider {}: base_url, ca_pem or tls_sha256 changed; its key is dropped",
                        cfg.name
                    );
                }
                (None, None)
            }
            None => existing
                .as_ref()
                .map(|p| (p.key.clone(), p.sealed_key.clone()))
                .unwrap_or_default(),
            Some(k) if k.is_empty() => (None, None),
            Some(k) => {
                let kb = self.keys.as_ref().map_err(|e| config::Invalid {
                    field: "key".into(),
                    message: e.clone(),
                })?;
                let sealed = kb.seal(&cfg.name, &k).map_err(|e| config::Invalid {
                    field: "key".into(),
                    message: e,
                })?;
                (Some(k), Some(hex::encode(sealed)))
            }
        };
        self.ledger.put_provider(&StoredProvider {
            config: cfg.clone(),
            sealed_key: sealed_key.clone(),
        })?;
        let p = Arc::new(Provider {
            config: cfg,
            key,
            sealed_key,
            client,
        });
        if let Ok(mut h) = self.health.lock() {
            h.insert(p.config.name.clone(), Health::new(&p.config));
        }
        if let Ok(mut map) = self.providers.write() {
            map.insert(p.config.name.clone(), p.clone());
        }
        Ok(Self::view(&p))
    }

    /// Adds a provider; its key is sealed before it is stored.
    pub fn create_provider(
        &self,
        input: config::ProviderInput,
    ) -> Result<ProviderView, AdminError> {
        if self.provider(&input.config.name).is_some() {
            return Err(AdminError::Conflict(input.config.name));
        }
        self.install(input, None)
    }

    /// Replaces a provider's configuration; a key left out is kept (dropped when `base_url`,
    /// `ca_pem` or `tls_sha256` changes), `""` removes it.
    pub fn update_provider(
        &self,
        input: config::ProviderInput,
    ) -> Result<ProviderView, AdminError> {
        let existing = self
            .providers
            .read()
            .ok()
            .and_then(|p| p.get(&input.config.name).cloned())
            .ok_or_else(|| AdminError::NotFound(input.config.name.clone()))?;
        self.install(input, Some(existing))
    }

    /// Removes a provider.
    pub fn delete_provider(&self, name: &str) -> Result<(), AdminError> {
        if self.provider(name).is_none() {
            return Err(AdminError::NotFound(name.into()));
        }
        self.ledger.delete_provider(name)?;
        if let Ok(mut map) = self.providers.write() {
            map.remove(name);
        }
        if let Ok(mut h) = self.health.lock() {
            h.remove(name);
        }
        Ok(())
    }

    /// Every provider's breaker.
    pub fn breakers(&self) -> Vec<BreakerView> {
        let now = Instant::now();
        let Ok(mut h) = self.health.lock() else {
            return Vec::new();
        };
        let mut out: Vec<BreakerView> = h
            .iter_mut()
            .map(|(name, h)| {
                let (calls, retries) = h.retries.counts(now);
                BreakerView {
                    provider: name.clone(),
                    state: h.breaker.state(now),
                    consecutive_failures: h.breaker.failures(),
                    opened: h.breaker.opened_count(),
                    retry_in_ms: h.breaker.retry_in(now).map(|d| d.as_millis() as u64),
                    rate_limited_ms: h
                        .rate_limited_until
                        .filter(|t| *t > now)
                        .map(|t| (t - now).as_millis() as u64),
                    window_calls: calls,
                    window_retries: retries,
                }
            })
            .collect();
        out.sort_by(|a, b| a.provider.cmp(&b.provider));
        out
    }

    /// Usage of the last `days` days (today included), newest first.
    pub fn usage(&self, days: u32) -> Result<Vec<UsageLine>, AdminError> {
        let today = (unix_now() / 86_400) as u32;
        let from = today.saturating_sub(days.saturating_sub(1));
        let mut rows: Vec<UsageLine> = self
            .ledger
            .usage(from, today, None)?
            .into_iter()
            .map(|(day, caller, provider, model, usage)| UsageLine {
                day: ledger::day_string(day),
                caller,
                provider,
                model,
                usage,
            })
            .collect();
        rows.sort_by(|a, b| b.day.cmp(&a.day));
        Ok(rows)
    }

    /// Learns a judge's score (0-1, clamped) of `model` on `task_kind`; persisted.
    pub fn record_score(&self, model: &str, task_kind: &str, score: f64) {
        if !score.is_finite() {
            return;
        }
        let score = score.clamp(0.0, 1.0);
        let s = {
            let Ok(mut map) = self.scores.lock() else {
                return;
            };
            let e = map
                .entry((model.to_string(), task_kind.to_string()))
                .or_default();
            e.n += 1;
            e.sum += score;
            *e
        };
        if self.ledger.persistent() {
            let ledger = self.ledger.clone();
            let (m, k) = (model.to_string(), task_kind.to_string());
            let write = move || {
                if let Err(e) = ledger.put_score(&m, &k, &s) {
                    tracing::warn!("router: score of {m} not stored: {e}");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(write);
                }
                Err(_) => write(),
            }
        }
    }

    /// Every learned score.
    pub fn scores(&self) -> Vec<ScoreView> {
        let mut v: Vec<ScoreView> = self
            .scores
            .lock()
            .map(|m| {
                m.iter()
                    .map(|((model, kind), s)| ScoreView {
                        model: model.clone(),
                        task_kind: kind.clone(),
                        n: s.n,
                        mean: if s.n == 0 { 0.0 } else { s.sum / s.n as f64 },
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| (&a.model, &a.task_kind).cmp(&(&b.model, &b.task_kind)));
        v
    }

    fn timeout_for(p: &Provider, ctx: &CallContext) -> Duration {
        let t = Duration::from_millis(p.config.timeout_ms);
        match ctx.max_latency_ms {
            Some(m) => t.min(Duration::from_millis(m.max(1))),
            None => t,
        }
    }

    /// Runs `attempt` on provider `p` with its breaker, retries, backoff and retry budget.
    async fn with_retries<T, F, Fut>(
        &self,
        p: &Provider,
        ctx: &CallContext,
        mut attempt: F,
    ) -> Result<T, TargetFailure>
    where
        F: FnMut(Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let name = &p.config.name;
        let timeout = Self::timeout_for(p, ctx);
        let started = Instant::now();
        let mut n = 0u32;
        let mut slot = ProbeSlot {
            health: &self.health,
            provider: name,
            held: false,
        };
        loop {
            {
                let now = Instant::now();
                let mut map = self.health.lock().map_err(|_| {
                    TargetFailure::Local(LocalFailure::Failed("health lock poisoned".into()))
                })?;
                let h = map
                    .entry(name.clone())
                    .or_insert_with(|| Health::new(&p.config));
                let probe = h.breaker.state(now) == BreakerState::HalfOpen;
                if !h.breaker.allow(now) {
                    return Err(TargetFailure::BreakerOpen(
                        h.breaker.retry_in(now).unwrap_or(Duration::from_secs(1)),
                    ));
                }
                slot.held = probe;
                if n == 0 {
                    h.retries.record_call(now);
                }
            }
            let r = attempt(timeout).await;
            // Every outcome below gives the breaker its verdict.
            slot.held = false;
            let delay = match r {
                Ok(v) => {
                    if let Ok(mut map) = self.health.lock()
                        && let Some(h) = map.get_mut(name)
                    {
                        h.breaker.success();
                    }
                    return Ok(v);
                }
                Err(f) => self.after_failure(p, ctx, n, started, f)?,
            };
            tokio::time::sleep(delay).await;
            n += 1;
        }
    }

    /// Books a failed attempt on `p`'s health and decides: retry after the returned delay, or
    /// give up with the failure.
    fn after_failure(
        &self,
        p: &Provider,
        ctx: &CallContext,
        n: u32,
        started: Instant,
        mut f: Failure,
    ) -> Result<Duration, TargetFailure> {
        let name = &p.config.name;
        let now = Instant::now();
        let mut map = self.health.lock().map_err(|_| {
            TargetFailure::Local(LocalFailure::Failed("health lock poisoned".into()))
        })?;
        let h = map
            .entry(name.clone())
            .or_insert_with(|| Health::new(&p.config));
        if f.kind.unhealthy() {
            h.breaker.failure(now);
        } else if f.kind == FailKind::RateLimited {
            h.breaker.release();
        } else {
            // It answered (a 4xx): reachable and healthy, the call was refused.
            h.breaker.success();
        }
        let mut delay = backoff(n, BACKOFF_BASE, BACKOFF_CAP, random_unit());
        if f.kind == FailKind::RateLimited {
            let ra = f.retry_after.unwrap_or(delay);
            h.rate_limited_until = Some(now + ra);
            if ra > MAX_RETRY_AFTER_WAIT {
                f.message.push_str(&format!(
                    " (Retry-After {} s: trying elsewhere)",
                    ra.as_secs()
                ));
                return Err(TargetFailure::Remote(f));
            }
            delay = ra;
        }
        if !f.kind.retryable() || n >= p.config.max_retries {
            if n > 0 {
                f.message.push_str(&format!(" (after {} attempts)", n + 1));
            }
            return Err(TargetFailure::Remote(f));
        }
        if h.breaker.state(now) != BreakerState::Closed {
            f.message.push_str(" (circuit breaker opened)");
            return Err(TargetFailure::Remote(f));
        }
        if let Some(max) = ctx.max_latency_ms
            && started.elapsed() + delay >= Duration::from_millis(max)
        {
            return Err(TargetFailure::Remote(f));
        }
        if !h.retries.try_retry(now) {
            f.message.push_str(" (retry budget exhausted)");
            return Err(TargetFailure::Remote(f));
        }
        tracing::debug!(
            "router: {name}: {}; retry in {} ms",
            f.message,
            delay.as_millis()
        );
        Ok(delay)
    }

    fn check_chat(call: &ChatCall) -> Result<(u64, u64), RouterError> {
        if call.messages.is_empty() {
            return Err(RouterError::Invalid {
                message: "messages must not be empty".into(),
                param: Some("messages"),
            });
        }
        if call.max_tokens == Some(0) {
            return Err(RouterError::Invalid {
                message: "max_tokens must be at least 1".into(),
                param: Some("max_tokens"),
            });
        }
        let chars: usize = call.messages.iter().map(|m| m.content.len() + 4).sum();
        Ok((
            estimate_tokens(chars),
            u64::from(call.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
        ))
    }

    /// One chat, answered whole.
    pub async fn chat(
        &self,
        ctx: &CallContext,
        call: ChatCall,
    ) -> Result<ChatOutcome, RouterError> {
        let (prompt_est, out_est) = Self::check_chat(&call)?;
        let targets = self.plan(
            ctx,
            ModelKind::Chat,
            call.model.as_deref(),
            prompt_est,
            out_est,
        )?;
        let acct = self.accountant(ctx);
        let mut failures = Vec::new();
        for t in targets {
            let started = Instant::now();
            let watch = Unsettled::watch(&acct, &t);
            let r = match &t {
                Target::Local(id) => local::chat(&self.inference, &self.metrics, id, &call)
                    .await
                    .map_err(TargetFailure::Local),
                Target::Remote(p, m) => {
                    let call = &call;
                    let p2 = p.clone();
                    self.with_retries(p, ctx, |timeout| {
                        let p = p2.clone();
                        let id = m.id.clone();
                        async move { remote::chat(&p.endpoint(), &id, call, timeout).await }
                    })
                    .await
                    .map(|rc| {
                        let usage = TokenUsage {
                            prompt_tokens: rc.prompt_tokens.unwrap_or(prompt_est),
                            completion_tokens: rc
                                .completion_tokens
                                .unwrap_or_else(|| estimate_tokens(rc.text.len())),
                            cached_tokens: 0,
                        };
                        (rc.text, rc.finish, usage)
                    })
                }
            };
            // Accounted below, without a wait that could drop it half-way.
            if let Some(w) = watch {
                w.settle();
            }
            match r {
                Ok((text, finish, usage)) => {
                    let latency = started.elapsed();
                    let cost = t.cost(usage.prompt_tokens, usage.completion_tokens);
                    acct.observe_latency(&t.name(), latency.as_secs_f64() * 1000.0);
                    let model_id = match &t {
                        Target::Local(id) => id.clone(),
                        Target::Remote(_, m) => m.id.clone(),
                    };
                    acct.record_async(
                        t.provider(),
                        model_id,
                        UsageRow {
                            calls: 1,
                            failures: 0,
                            prompt_tokens: usage.prompt_tokens,
                            completion_tokens: usage.completion_tokens,
                            cost_usd: cost,
                        },
                    )
                    .await;
                    return Ok(ChatOutcome {
                        text,
                        model: t.name(),
                        provider: t.provider(),
                        usage,
                        cost_usd: cost,
                        latency,
                        finish_reason: finish,
                    });
                }
                Err(TargetFailure::Local(LocalFailure::Invalid(m))) => {
                    return Err(RouterError::Invalid {
                        message: m,
                        param: None,
                    });
                }
                Err(f) => {
                    tracing::info!("router: {} failed: {}", t.name(), f.message());
                    self.note_failure(&acct, &t, &f).await;
                    failures.push((t.name(), f));
                }
            }
        }
        Err(combine(failures))
    }

    async fn note_failure(&self, acct: &Accountant, t: &Target, f: &TargetFailure) {
        if matches!(f, TargetFailure::Remote(_)) {
            let model = match t {
                Target::Local(id) => id.clone(),
                Target::Remote(_, m) => m.id.clone(),
            };
            acct.record_async(
                t.provider(),
                model,
                UsageRow {
                    failures: 1,
                    ..Default::default()
                },
            )
            .await;
        }
    }

    /// Embeddings of `inputs`.
    pub async fn embed(
        &self,
        ctx: &CallContext,
        model: Option<String>,
        inputs: Vec<String>,
    ) -> Result<EmbedOutcome, RouterError> {
        if inputs.is_empty() {
            return Err(RouterError::Invalid {
                message: "input must not be empty".into(),
                param: Some("input"),
            });
        }
        let est = estimate_tokens(inputs.iter().map(String::len).sum());
        let targets = self.plan(ctx, ModelKind::Embedding, model.as_deref(), est, 0)?;
        let acct = self.accountant(ctx);
        let mut failures = Vec::new();
        for t in targets {
            let started = Instant::now();
            let watch = Unsettled::watch(&acct, &t);
            let r = match &t {
                Target::Local(id) => local::embed(&self.inference, id, inputs.clone())
                    .await
                    .map_err(TargetFailure::Local),
                Target::Remote(p, m) => {
                    let inputs = &inputs;
                    let p2 = p.clone();
                    self.with_retries(p, ctx, |timeout| {
                        let p = p2.clone();
                        let id = m.id.clone();
                        async move { remote::embed(&p.endpoint(), &id, inputs, timeout).await }
                    })
                    .await
                    .map(|(v, tokens)| (v, tokens.unwrap_or(est)))
                }
            };
            if let Some(w) = watch {
                w.settle();
            }
            match r {
                Ok((vectors, tokens)) => {
                    let latency = started.elapsed();
                    let cost = t.cost(tokens, 0);
                    acct.observe_latency(&t.name(), latency.as_secs_f64() * 1000.0);
                    let model_id = match &t {
                        Target::Local(id) => id.clone(),
                        Target::Remote(_, m) => m.id.clone(),
                    };
                    acct.record_async(
                        t.provider(),
                        model_id,
                        UsageRow {
                            calls: 1,
                            failures: 0,
                            prompt_tokens: tokens,
                            completion_tokens: 0,
                            cost_usd: cost,
                        },
                    )
                    .await;
                    return Ok(EmbedOutcome {
                        vectors,
                        model: t.name(),
                        provider: t.provider(),
                        prompt_tokens: tokens,
                        cost_usd: cost,
                        latency_ms: latency.as_millis() as u64,
                    });
                }
                Err(TargetFailure::Local(LocalFailure::Invalid(m))) => {
                    return Err(RouterError::Invalid {
                        message: m,
                        param: Some("input"),
                    });
                }
                Err(f) => {
                    self.note_failure(&acct, &t, &f).await;
                    failures.push((t.name(), f));
                }
            }
        }
        Err(combine(failures))
    }
}

#[cfg(test)]
mod tests;

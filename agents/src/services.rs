//! What the appliance lends the runtime: the router, memory and the network. The runtime checks
//! capabilities and quotas before calling these; implementations only do the work.

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A failure the guest sees (mirrors the WIT `error` variant).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    /// Not granted.
    #[error("capability: {0}")]
    Capability(String),
    /// Bad arguments.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Quota or budget spent.
    #[error("quota: {0}")]
    Quota(String),
    /// Target missing or unavailable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Tried and failed.
    #[error("failed: {0}")]
    Failed(String),
}

/// Who is calling: the agent and its run.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Agent name.
    pub agent: String,
    /// Run id.
    pub run: String,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
}

/// A chat request after capability checks.
#[derive(Debug, Clone)]
pub struct Chat {
    /// Model, if the agent named one.
    pub model: Option<String>,
    /// Conversation.
    pub messages: Vec<ChatMessage>,
    /// Completion limit.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Keep on the device.
    pub sensitive: bool,
}

/// A finished chat.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatAnswer {
    /// Text.
    pub text: String,
    /// Model that answered.
    pub model: String,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Cost in US dollars (0 for local models).
    pub cost_usd: f64,
}

/// A recalled memory record.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryHit {
    /// Record id.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// Tier.
    pub tier: String,
    /// Text.
    pub text: String,
    /// Fused score.
    pub score: f32,
}

/// An outbound HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body (capped by the implementation).
    pub body: Vec<u8>,
}

/// Pieces of a streamed chat, then the final answer.
pub enum StreamItem {
    /// A piece of text.
    Piece(String),
    /// The end, with accounting.
    Done(ChatAnswer),
}

/// The appliance's side of the agent imports.
pub trait Services: Send + Sync + 'static {
    /// Chat through the router.
    fn chat<'a>(
        &'a self,
        caller: &'a Caller,
        chat: Chat,
    ) -> BoxFuture<'a, Result<ChatAnswer, HostError>>;
    /// Streamed chat through the router: pieces, then `Done`.
    fn chat_stream<'a>(
        &'a self,
        caller: &'a Caller,
        chat: Chat,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<Result<StreamItem, HostError>>, HostError>>;
    /// Embeddings through the router.
    fn embed<'a>(
        &'a self,
        caller: &'a Caller,
        texts: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, HostError>>;
    /// Stores a memory record (namespace already checked).
    fn remember<'a>(
        &'a self,
        caller: &'a Caller,
        namespace: String,
        tier: String,
        text: String,
        metadata: String,
    ) -> BoxFuture<'a, Result<String, HostError>>;
    /// Recalls memory records (namespace already checked).
    fn recall<'a>(
        &'a self,
        caller: &'a Caller,
        namespace: String,
        query: String,
        k: u32,
    ) -> BoxFuture<'a, Result<Vec<MemoryHit>, HostError>>;
    /// An outbound request (host already checked against the allow-list).
    fn http<'a>(
        &'a self,
        caller: &'a Caller,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<HttpAnswer, HostError>>;
    /// Whether the appliance is in offline mode (no egress at all).
    fn offline(&self) -> bool;
    /// A judge's score (0 to 1) of output a model produced for a kind of task, for the
    /// router's quality-aware policies. The default ignores it.
    fn record_score(&self, model: &str, task_kind: &str, score: f64) {
        let _ = (model, task_kind, score);
    }
    /// Something operators may want to watch happened (`kind` such as `agent.run`, `subject`
    /// the agent): the appliance puts it on its event stream. The default drops it.
    fn event(&self, kind: &str, subject: &str, message: &str) {
        let _ = (kind, subject, message);
    }
}

/// Services for a runtime with no router, memory or network: every call is `unavailable`.
pub struct NoServices;

fn unavailable<'a, T: Send + 'a>(what: &str) -> BoxFuture<'a, Result<T, HostError>> {
    let m = format!("{what} is not available on this runtime");
    Box::pin(async move { Err(HostError::Unavailable(m)) })
}

impl Services for NoServices {
    fn chat<'a>(&'a self, _: &'a Caller, _: Chat) -> BoxFuture<'a, Result<ChatAnswer, HostError>> {
        unavailable("llm")
    }
    fn chat_stream<'a>(
        &'a self,
        _: &'a Caller,
        _: Chat,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<Result<StreamItem, HostError>>, HostError>>
    {
        unavailable("llm")
    }
    fn embed<'a>(
        &'a self,
        _: &'a Caller,
        _: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, HostError>> {
        unavailable("embeddings")
    }
    fn remember<'a>(
        &'a self,
        _: &'a Caller,
        _: String,
        _: String,
        _: String,
        _: String,
    ) -> BoxFuture<'a, Result<String, HostError>> {
        unavailable("memory")
    }
    fn recall<'a>(
        &'a self,
        _: &'a Caller,
        _: String,
        _: String,
        _: u32,
    ) -> BoxFuture<'a, Result<Vec<MemoryHit>, HostError>> {
        unavailable("memory")
    }
    fn http<'a>(
        &'a self,
        _: &'a Caller,
        _: String,
        _: String,
        _: Vec<(String, String)>,
        _: Vec<u8>,
    ) -> BoxFuture<'a, Result<HttpAnswer, HostError>> {
        unavailable("http")
    }
    fn offline(&self) -> bool {
        true
    }
}

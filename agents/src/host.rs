//! The imports an agent sees, implemented over [`Services`] with every capability checked
//! against the manifest. A denied call returns `error::capability` and is audited; a call over
//! the task's host-call budget traps the guest.

use crate::db::{Db, LogLine, Span, Usage, now_ms};
use crate::manifest::Manifest;
use crate::services::{Caller, Chat, ChatMessage, HostError, Services, StreamItem};
use std::sync::Arc;
use wasmtime::StoreLimits;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "wit",
    world: "agent",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "cairn:agent/llm.chat-stream": ChatStreamState,
    },
});

use cairn::agent::types::{ChatReply, ChatRequest, Error};
use cairn::agent::{agents, clock, http, kv, llm, log, memory, random};

/// Most log lines kept per run.
pub const MAX_LOG_LINES: usize = 500;
/// Longest log line kept.
pub const MAX_LOG_LINE: usize = 4096;
/// Most spans (timed host calls) kept per run.
pub const MAX_SPANS: usize = 1000;
/// Most output a guest may write to stdout and stderr over an instance's life.
pub const MAX_STDIO: usize = 256 << 10;

/// A streamed chat held in the guest's resource table.
pub struct ChatStreamState {
    rx: tokio::sync::mpsc::Receiver<Result<StreamItem, HostError>>,
    done: bool,
}

/// What the host-call side needs from the runtime.
pub(crate) trait Peers: Send + Sync {
    /// Delivers a message to a running agent.
    fn send<'a>(
        &'a self,
        from: &'a str,
        ancestry: &'a [String],
        to: &'a str,
        body: String,
    ) -> crate::services::BoxFuture<'a, Result<Option<String>, HostError>>;
    /// Runs a subtask and waits for it.
    fn spawn<'a>(
        &'a self,
        parent: &'a str,
        ancestry: &'a [String],
        agent: &'a str,
        input: String,
    ) -> crate::services::BoxFuture<'a, Result<String, HostError>>;
}

/// The task an instance is working on.
#[derive(Default)]
pub(crate) struct RunCtx {
    pub id: String,
    /// Agents above this one in a chain of subtasks or messages (cycle guard).
    pub ancestry: Vec<String>,
    pub host_calls: u64,
    pub max_host_calls: u64,
    pub logs: Vec<LogLine>,
    pub logs_dropped: u64,
    pub spans: Vec<Span>,
    pub spans_dropped: u64,
    pub usage: Usage,
}

/// Per-instance state: WASI (no preopens unless granted, no network), limits, the task.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) services: Arc<dyn Services>,
    pub(crate) peers: std::sync::Weak<dyn Peers>,
    pub(crate) db: Db,
    pub(crate) run: RunCtx,
    pub(crate) stdio: MemoryOutputPipe,
    pub(crate) stdio_seen: usize,
    /// The `/data` quota, when `files` is granted.
    pub(crate) files_quota: Option<Arc<crate::files::FilesQuota>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn to_guest(e: HostError) -> Error {
    match e {
        HostError::Capability(m) => Error::Capability(m),
        HostError::Invalid(m) => Error::Invalid(m),
        HostError::Quota(m) => Error::Quota(m),
        HostError::Unavailable(m) => Error::Unavailable(m),
        HostError::Failed(m) => Error::Failed(m),
    }
}

impl HostState {
    fn name(&self) -> &str {
        &self.manifest.name
    }

    fn caller(&self) -> Caller {
        Caller {
            agent: self.manifest.name.clone(),
            run: self.run.id.clone(),
        }
    }

    /// Counts a host call; traps the guest beyond the task's budget.
    fn count(&mut self) -> wasmtime::Result<()> {
        self.run.host_calls += 1;
        self.run.usage.host_calls = self.run.host_calls;
        if self.run.host_calls > self.run.max_host_calls {
            return Err(wasmtime::Error::msg(format!(
                "host-call limit: more than {} host calls in one task",
                self.run.max_host_calls
            )));
        }
        Ok(())
    }

    /// Adds a finished host call to the run's trace.
    fn span(&mut self, name: &str, detail: String, start_ms: u64, error: Option<String>) {
        if self.run.spans.len() >= MAX_SPANS {
            self.run.spans_dropped += 1;
            return;
        }
        self.run.spans.push(Span {
            name: name.into(),
            detail,
            start_ms,
            end_ms: now_ms(),
            error,
        });
    }

    /// Awaits a service call and records it as a span.
    async fn traced<T>(
        &mut self,
        name: &str,
        detail: String,
        call: impl std::future::Future<Output = Result<T, HostError>>,
    ) -> Result<T, Error> {
        let start = now_ms();
        let r = call.await;
        self.span(name, detail, start, r.as_ref().err().map(|e| e.to_string()));
        r.map_err(to_guest)
    }

    /// Records a refused capability in the audit log and builds the guest's error.
    fn deny(&mut self, capability: &str, detail: String) -> Error {
        let msg = format!("{capability}: {detail}");
        self.span(
            &format!("{capability} (denied)"),
            detail.clone(),
            now_ms(),
            Some("capability".into()),
        );
        self.services.event("agent.denied", self.name(), &msg);
        if let Err(e) = self.db.audit(
            Some(self.name()),
            Some(&self.run.id),
            "capability_denied",
            &msg,
        ) {
            tracing::warn!(error = %e, "audit write failed");
        }
        self.push_log("warn", format!("denied: {msg}"));
        Error::Capability(msg)
    }

    pub(crate) fn push_log(&mut self, level: &str, mut message: String) {
        if self.run.logs.len() >= MAX_LOG_LINES {
            self.run.logs_dropped += 1;
            return;
        }
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        self.run.logs.push(LogLine {
            ms: now_ms(),
            level: level.into(),
            message,
        });
    }

    /// Moves what the guest wrote to stdout/stderr since the last call into the run's log.
    pub(crate) fn drain_stdio(&mut self) {
        let all = self.stdio.contents();
        if all.len() > self.stdio_seen {
            let fresh = String::from_utf8_lossy(&all[self.stdio_seen..]).to_string();
            self.stdio_seen = all.len();
            for line in fresh.lines().filter(|l| !l.trim().is_empty()) {
                self.push_log("stdout", line.to_string());
            }
        }
    }

    /// Refuses LLM use beyond the agent's hourly token quota or daily cost budget.
    fn check_budget(&mut self) -> Result<(), Error> {
        let l = &self.manifest.limits;
        let hour = now_ms() / 3_600_000;
        let (tokens, _) = self
            .db
            .usage_since(&self.manifest.name, hour)
            .map_err(|e| Error::Failed(e.to_string()))?;
        if tokens >= l.tokens_per_hour {
            return Err(Error::Quota(format!(
                "{} of {} tokens this hour are used",
                tokens, l.tokens_per_hour
            )));
        }
        let (_, cost) = self
            .db
            .usage_since(&self.manifest.name, hour.saturating_sub(23))
            .map_err(|e| Error::Failed(e.to_string()))?;
        if l.cost_per_day_usd > 0.0 && cost >= l.cost_per_day_usd {
            return Err(Error::Quota(format!(
                "${cost:.4} of the ${:.4} daily budget is spent",
                l.cost_per_day_usd
            )));
        }
        Ok(())
    }

    fn account(&mut self, model: &str, prompt: u32, completion: u32, cost: f64) {
        if !self.run.usage.models.iter().any(|m| m == model) {
            self.run.usage.models.push(model.to_string());
        }
        self.run.usage.prompt_tokens += u64::from(prompt);
        self.run.usage.completion_tokens += u64::from(completion);
        self.run.usage.cost_usd += cost;
        let name = self.manifest.name.clone();
        if let Err(e) = self
            .db
            .add_usage(&name, u64::from(prompt) + u64::from(completion), cost)
        {
            tracing::warn!(error = %e, "usage write failed");
        }
    }

    fn check_chat(&mut self, req: &ChatRequest) -> Result<Chat, Error> {
        if !self.manifest.capabilities.llm {
            return Err(self.deny("llm", "the manifest does not grant llm".into()));
        }
        if let Some(m) = &req.model {
            let allowed = &self.manifest.capabilities.models;
            if !allowed.is_empty() && !allowed.contains(m) {
                return Err(self.deny(
                    "llm",
                    format!("model {m:?} is not in the manifest's models"),
                ));
            }
        }
        if req.messages.is_empty() {
            return Err(Error::Invalid("a chat needs at least one message".into()));
        }
        if let Some(m) = req
            .messages
            .iter()
            .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
        {
            return Err(Error::Invalid(format!("unknown role {:?}", m.role)));
        }
        self.check_budget()?;
        Ok(Chat {
            model: req.model.clone(),
            messages: req
                .messages
                .iter()
                .map(|m| ChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect(),
            max_tokens: req.max_tokens,
            temperature: req.temperature,
            stop: req.stop.clone(),
            sensitive: req.sensitive,
        })
    }

    fn check_kv(&mut self) -> Result<(), Error> {
        if self.manifest.capabilities.kv {
            Ok(())
        } else {
            Err(self.deny("kv", "the manifest does not grant kv".into()))
        }
    }

    fn check_namespace(&mut self, ns: &str) -> Result<(), Error> {
        if self.manifest.capabilities.memory.iter().any(|n| n == ns) {
            Ok(())
        } else {
            Err(self.deny(
                "memory",
                format!("namespace {ns:?} is not granted by the manifest"),
            ))
        }
    }

    async fn do_chat(&mut self, chat: Chat) -> Result<ChatReply, Error> {
        let caller = self.caller();
        let services = self.services.clone();
        let detail = chat
            .model
            .clone()
            .unwrap_or_else(|| "router's choice".into());
        let a = self
            .traced("llm.chat", detail, services.chat(&caller, chat))
            .await?;
        self.account(&a.model, a.prompt_tokens, a.completion_tokens, a.cost_usd);
        Ok(ChatReply {
            text: a.text,
            model: a.model,
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
        })
    }
}

impl cairn::agent::types::Host for HostState {}

impl llm::Host for HostState {
    async fn chat(&mut self, request: ChatRequest) -> wasmtime::Result<Result<ChatReply, Error>> {
        self.count()?;
        let chat = match self.check_chat(&request) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.do_chat(chat).await)
    }

    async fn complete(
        &mut self,
        prompt: String,
        max_tokens: Option<u32>,
    ) -> wasmtime::Result<Result<ChatReply, Error>> {
        self.count()?;
        let request = ChatRequest {
            model: None,
            messages: vec![cairn::agent::types::Message {
                role: "user".into(),
                content: prompt,
            }],
            max_tokens,
            temperature: None,
            stop: Vec::new(),
            sensitive: false,
        };
        let chat = match self.check_chat(&request) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.do_chat(chat).await)
    }

    async fn embed(
        &mut self,
        texts: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Vec<f32>>, Error>> {
        self.count()?;
        if !self.manifest.capabilities.embed {
            return Ok(Err(
                self.deny("embed", "the manifest does not grant embed".into())
            ));
        }
        if texts.is_empty() || texts.len() > 256 {
            return Ok(Err(Error::Invalid("embed takes 1 to 256 texts".into())));
        }
        let caller = self.caller();
        let services = self.services.clone();
        let detail = format!("{} texts", texts.len());
        Ok(self
            .traced("llm.embed", detail, services.embed(&caller, texts))
            .await)
    }

    async fn stream_chat(
        &mut self,
        request: ChatRequest,
    ) -> wasmtime::Result<Result<Resource<ChatStreamState>, Error>> {
        self.count()?;
        let chat = match self.check_chat(&request) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let caller = self.caller();
        let services = self.services.clone();
        let detail = chat
            .model
            .clone()
            .unwrap_or_else(|| "router's choice".into());
        match self
            .traced(
                "llm.stream_chat",
                detail,
                services.chat_stream(&caller, chat),
            )
            .await
        {
            Ok(rx) => Ok(Ok(self.table.push(ChatStreamState { rx, done: false })?)),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl llm::HostChatStream for HostState {
    async fn next(
        &mut self,
        stream: Resource<ChatStreamState>,
    ) -> wasmtime::Result<Result<Option<String>, Error>> {
        self.count()?;
        let s = self.table.get_mut(&stream)?;
        if s.done {
            return Ok(Ok(None));
        }
        match s.rx.recv().await {
            Some(Ok(StreamItem::Piece(p))) => Ok(Ok(Some(p))),
            Some(Ok(StreamItem::Done(a))) => {
                s.done = true;
                self.account(&a.model, a.prompt_tokens, a.completion_tokens, a.cost_usd);
                Ok(Ok(None))
            }
            Some(Err(e)) => {
                s.done = true;
                Ok(Err(to_guest(e)))
            }
            None => {
                s.done = true;
                Ok(Err(Error::Failed(
                    "the stream ended without a result".into(),
                )))
            }
        }
    }

    async fn drop(&mut self, stream: Resource<ChatStreamState>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

impl memory::Host for HostState {
    async fn remember(
        &mut self,
        namespace: String,
        tier: String,
        text: String,
        metadata: String,
    ) -> wasmtime::Result<Result<String, Error>> {
        self.count()?;
        if let Err(e) = self.check_namespace(&namespace) {
            return Ok(Err(e));
        }
        let caller = self.caller();
        let services = self.services.clone();
        let detail = format!("{namespace} ({tier})");
        Ok(self
            .traced(
                "memory.remember",
                detail,
                services.remember(&caller, namespace, tier, text, metadata),
            )
            .await)
    }

    async fn recall(
        &mut self,
        namespace: String,
        query: String,
        k: u32,
    ) -> wasmtime::Result<Result<Vec<memory::Hit>, Error>> {
        self.count()?;
        if let Err(e) = self.check_namespace(&namespace) {
            return Ok(Err(e));
        }
        let caller = self.caller();
        let services = self.services.clone();
        let detail = namespace.clone();
        Ok(self
            .traced(
                "memory.recall",
                detail,
                services.recall(&caller, namespace, query, k),
            )
            .await
            .map(|hits| {
                hits.into_iter()
                    .map(|h| memory::Hit {
                        id: h.id,
                        namespace: h.namespace,
                        tier: h.tier,
                        text: h.text,
                        score: h.score,
                    })
                    .collect()
            }))
    }
}

impl agents::Host for HostState {
    async fn send(
        &mut self,
        to: String,
        body: String,
    ) -> wasmtime::Result<Result<Option<String>, Error>> {
        self.count()?;
        if !self.manifest.capabilities.agents.contains(&to) {
            return Ok(Err(
                self.deny("agents", format!("messages to {to:?} are not granted"))
            ));
        }
        let Some(peers) = self.peers.upgrade() else {
            return Ok(Err(Error::Unavailable(
                "the runtime is shutting down".into(),
            )));
        };
        let mut ancestry = self.run.ancestry.clone();
        ancestry.push(self.manifest.name.clone());
        let from = self.manifest.name.clone();
        let detail = to.clone();
        Ok(self
            .traced(
                "agents.send",
                detail,
                peers.send(&from, &ancestry, &to, body),
            )
            .await)
    }

    async fn spawn(
        &mut self,
        agent: String,
        input: String,
    ) -> wasmtime::Result<Result<String, Error>> {
        self.count()?;
        if !self.manifest.capabilities.agents.contains(&agent) {
            return Ok(Err(
                self.deny("agents", format!("subtasks on {agent:?} are not granted"))
            ));
        }
        let Some(peers) = self.peers.upgrade() else {
            return Ok(Err(Error::Unavailable(
                "the runtime is shutting down".into(),
            )));
        };
        let mut ancestry = self.run.ancestry.clone();
        ancestry.push(self.manifest.name.clone());
        let parent = self.run.id.clone();
        let detail = agent.clone();
        Ok(self
            .traced(
                "agents.spawn",
                detail,
                peers.spawn(&parent, &ancestry, &agent, input),
            )
            .await)
    }
}

/// Splits an absolute http(s) URL into (scheme, host, port); IPv6 hosts lose their brackets.
/// URLs with user info, backslashes, whitespace or control characters are refused, so the
/// host checked here is the host every URL parser sees.
fn url_parts(url: &str) -> Option<(&str, String, u16)> {
    if url
        .chars()
        .any(|c| c.is_ascii_control() || c.is_whitespace() || c == '\\')
    {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') || authority.contains('%') {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        match tail {
            "" => (h, default),
            t => (h, t.strip_prefix(':')?.parse().ok()?),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default),
        }
    };
    if host.is_empty() || (host.contains(':') && !authority.starts_with('[')) {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

impl http::Host for HostState {
    async fn fetch(
        &mut self,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<http::Response, Error>> {
        self.count()?;
        if self.services.offline() {
            return Ok(Err(self.deny(
                "http",
                format!("offline mode: egress to {url} is refused"),
            )));
        }
        let Some((scheme, host, port)) = url_parts(&url) else {
            return Ok(Err(Error::Invalid(format!(
                "{url:?} is not an http(s) URL with a host"
            ))));
        };
        if scheme == "http" && !self.manifest.capabilities.http_plaintext {
            return Ok(Err(self.deny(
                "http",
                format!(
                    "{url} is plain http; only https is allowed unless the manifest sets \
                     capabilities.http_plaintext"
                ),
            )));
        }
        if crate::egress::looks_like_ip(&host) {
            let why = match crate::egress::parse_ip(&host) {
                None => Some(format!("{host} is not a valid address")),
                Some(ip) if !crate::egress::is_public(ip) => Some(format!(
                    "{host} is {ip}, not a public address; agents never reach loopback, \
                     private, link-local or other non-public addresses"
                )),
                Some(_) if !self.manifest.capabilities.http_ip_literals => Some(format!(
                    "{host} is an IP literal; the manifest does not set \
                     capabilities.http_ip_literals"
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                return Ok(Err(self.deny("http", why)));
            }
        }
        let default = if scheme == "https" { 443 } else { 80 };
        if !self.manifest.allows_host(&host, port, default) {
            return Ok(Err(self.deny(
                "http",
                format!("{host}:{port} is not on the egress allow-list"),
            )));
        }
        if !matches!(
            method.as_str(),
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE"
        ) {
            return Ok(Err(Error::Invalid(format!(
                "method {method:?} is not supported"
            ))));
        }
        let caller = self.caller();
        let services = self.services.clone();
        let detail = format!("{method} {url}");
        Ok(self
            .traced(
                "http.fetch",
                detail,
                services.http(&caller, method, url, headers, body),
            )
            .await
            .map(|a| http::Response {
                status: a.status,
                headers: a.headers,
                body: a.body,
            }))
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        self.count()?;
        if let Err(e) = self.check_kv() {
            return Ok(Err(e));
        }
        Ok(self
            .db
            .kv_get(self.name(), &key)
            .map_err(|e| Error::Failed(e.to_string())))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        self.count()?;
        if let Err(e) = self.check_kv() {
            return Ok(Err(e));
        }
        if key.is_empty() || key.len() > 512 {
            return Ok(Err(Error::Invalid("keys are 1 to 512 bytes".into())));
        }
        if value.len() > crate::db::MAX_KV_VALUE {
            return Ok(Err(Error::Invalid("values are at most 1 MiB".into())));
        }
        let max = self.manifest.limits.kv_bytes;
        Ok(match self.db.kv_set(self.name(), &key, &value, max) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => Err(Error::Quota(m)),
            Err(e) => Err(Error::Failed(e.to_string())),
        })
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, Error>> {
        self.count()?;
        if let Err(e) = self.check_kv() {
            return Ok(Err(e));
        }
        Ok(self
            .db
            .kv_delete(self.name(), &key)
            .map_err(|e| Error::Failed(e.to_string())))
    }

    async fn keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, Error>> {
        self.count()?;
        if let Err(e) = self.check_kv() {
            return Ok(Err(e));
        }
        Ok(self
            .db
            .kv_keys(self.name(), &prefix)
            .map_err(|e| Error::Failed(e.to_string())))
    }
}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.count()?;
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.push_log(level, message);
        Ok(())
    }
}

impl clock::Host for HostState {
    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.count()?;
        Ok(now_ms())
    }

    async fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        self.count()?;
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        Ok(START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64)
    }
}

impl random::Host for HostState {
    async fn fill(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        self.count()?;
        if len > 1 << 16 {
            return Err(wasmtime::Error::msg(
                "random: more than 64 KiB requested at once",
            ));
        }
        let mut buf = vec![0u8; len as usize];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
            .map_err(|_| wasmtime::Error::msg("random: the system CSPRNG failed"))?;
        Ok(buf)
    }

    async fn next_u64(&mut self) -> wasmtime::Result<u64> {
        let b = self.fill(8).await?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::url_parts;

    #[test]
    fn urls_split_into_scheme_host_port() {
        assert_eq!(
            url_parts("https://Docs.Local/x?y"),
            Some(("https", "docs.local".into(), 443))
        );
        assert_eq!(
            url_parts("http://a.b:8080"),
            Some(("http", "a.b".into(), 8080))
        );
        assert_eq!(
            url_parts("https://[::1]:8443/x"),
            Some(("https", "::1".into(), 8443))
        );
        assert_eq!(
            url_parts("https://[::1]/"),
            Some(("https", "::1".into(), 443))
        );
        assert_eq!(url_parts("https://a.b\\@c.d/"), None);
        assert_eq!(url_parts("https://%31%32%37.0.0.1/"), None);
        assert_eq!(url_parts("https://a.b\t/"), None);
        assert_eq!(url_parts("https://::1/"), None);
        assert_eq!(url_parts("ftp://a.b/"), None);
        assert_eq!(url_parts("https://user@a.b/"), None);
        assert_eq!(url_parts("https://a.b:99999/"), None);
        assert_eq!(url_parts("https:///x"), None);
    }
}

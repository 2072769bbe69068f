//! The appliance's side of the agent runtime: every LLM call of an agent goes through the
//! router (accounted to `agent:NAME`), memory calls go to agent memory with the agent's
//! access rules, and egress uses a rustls client with the public web roots. The runtime has
//! already checked the manifest's capabilities before any of this runs.

use crate::memory::{Access, Memory, NewRecord, Provenance, Query};
use crate::router::{
    CallContext, Caller as RouteCaller, ChatCall, ChatMessage, Router, RouterError, StreamEvent,
};
use cairn_agents::services::{
    BoxFuture, Caller, Chat, ChatAnswer, HostError, HttpAnswer, MemoryHit, Services, StreamItem,
};
use std::sync::Arc;
use std::time::Duration;

/// Largest response body an agent receives from an outbound request.
pub const MAX_HTTP_BODY: usize = 4 << 20;

/// Services backed by the router, agent memory and the network.
pub struct ApplianceServices {
    router: Arc<Router>,
    memory: Option<Arc<Memory>>,
    http: reqwest::Client,
}

impl ApplianceServices {
    /// Services over the appliance's router and memory.
    pub fn new(
        router: Arc<Router>,
        memory: Option<Arc<Memory>>,
    ) -> Result<ApplianceServices, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(ApplianceServices {
            router,
            memory,
            http,
        })
    }
}

fn ctx(caller: &Caller, sensitive: bool) -> CallContext {
    CallContext {
        caller: RouteCaller::Agent {
            name: caller.agent.clone(),
            run: Some(caller.run.clone()),
        },
        sensitive,
        task_kind: Some(format!("agent:{}", caller.agent)),
        ..Default::default()
    }
}

fn call(chat: Chat) -> ChatCall {
    ChatCall {
        model: chat.model,
        messages: chat
            .messages
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect(),
        max_tokens: chat.max_tokens,
        temperature: chat.temperature,
        stop: chat.stop,
        ..Default::default()
    }
}

fn route_error(e: RouterError) -> HostError {
    match e {
        RouterError::UnknownModel(_) => HostError::Unavailable(e.to_string()),
        RouterError::Forbidden(_) => HostError::Capability(e.to_string()),
        RouterError::Budget { .. } => HostError::Quota(e.to_string()),
        RouterError::Invalid { .. }
        | RouterError::ContextTooLong(_)
        | RouterError::WrongKind { .. } => HostError::Invalid(e.to_string()),
        other => HostError::Failed(other.to_string()),
    }
}

fn memory_error(e: crate::memory::MemoryError) -> HostError {
    use crate::memory::MemoryError as M;
    match e {
        M::Forbidden(m) => HostError::Capability(m),
        M::Input(i) => HostError::Invalid(i.to_string()),
        M::NotFound(m) => HostError::Unavailable(m),
        M::UnknownNamespace(n) => {
            HostError::Unavailable(format!("memory namespace {n:?} does not exist"))
        }
        other => HostError::Failed(other.to_string()),
    }
}

impl ApplianceServices {
    fn memory(&self) -> Result<Arc<Memory>, HostError> {
        self.memory.clone().ok_or_else(|| {
            HostError::Unavailable("agent memory is unavailable (degraded mode)".into())
        })
    }

    fn access(caller: &Caller, ns: &str) -> Access {
        // The runtime has checked the namespace against the manifest.
        Access::agent(&caller.agent, &[ns.to_string()], &[ns.to_string()])
    }
}

impl Services for ApplianceServices {
    fn chat<'a>(
        &'a self,
        caller: &'a Caller,
        chat: Chat,
    ) -> BoxFuture<'a, Result<ChatAnswer, HostError>> {
        Box::pin(async move {
            let c = ctx(caller, chat.sensitive);
            let o = self
                .router
                .chat(&c, call(chat))
                .await
                .map_err(route_error)?;
            Ok(ChatAnswer {
                text: o.text,
                model: o.model,
                prompt_tokens: o.usage.prompt_tokens.min(u64::from(u32::MAX)) as u32,
                completion_tokens: o.usage.completion_tokens.min(u64::from(u32::MAX)) as u32,
                cost_usd: o.cost_usd,
            })
        })
    }

    fn chat_stream<'a>(
        &'a self,
        caller: &'a Caller,
        chat: Chat,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<Result<StreamItem, HostError>>, HostError>>
    {
        Box::pin(async move {
            let c = ctx(caller, chat.sensitive);
            let mut stream = self
                .router
                .chat_stream(&c, call(chat))
                .await
                .map_err(route_error)?;
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            tokio::spawn(async move {
                while let Some(ev) = stream.next().await {
                    let item = match ev {
                        StreamEvent::Delta(t) => Ok(StreamItem::Piece(t)),
                        StreamEvent::Done(o) => Ok(StreamItem::Done(ChatAnswer {
                            text: o.text,
                            model: o.model,
                            prompt_tokens: o.usage.prompt_tokens.min(u64::from(u32::MAX)) as u32,
                            completion_tokens: o.usage.completion_tokens.min(u64::from(u32::MAX))
                                as u32,
                            cost_usd: o.cost_usd,
                        })),
                        StreamEvent::Error(m) => Err(HostError::Failed(m)),
                    };
                    // A guest that dropped its stream cancels the generation.
                    if tx.send(item).await.is_err() {
                        break;
                    }
                }
            });
            Ok(rx)
        })
    }

    fn embed<'a>(
        &'a self,
        caller: &'a Caller,
        texts: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, HostError>> {
        Box::pin(async move {
            let c = ctx(caller, true);
            let o = self
                .router
                .embed(&c, None, texts)
                .await
                .map_err(route_error)?;
            Ok(o.vectors)
        })
    }

    fn remember<'a>(
        &'a self,
        caller: &'a Caller,
        namespace: String,
        tier: String,
        text: String,
        metadata: String,
    ) -> BoxFuture<'a, Result<String, HostError>> {
        Box::pin(async move {
            let memory = self.memory()?;
            let metadata = if metadata.trim().is_empty() {
                None
            } else {
                Some(
                    serde_json::from_str(&metadata)
                        .map_err(|e| HostError::Invalid(format!("metadata is not JSON: {e}")))?,
                )
            };
            let access = Self::access(caller, &namespace);
            let new = NewRecord {
                tier: Some(tier),
                namespace: Some(namespace),
                text,
                metadata,
                provenance: Some(Provenance {
                    agent: Some(caller.agent.clone()),
                    run: Some(caller.run.clone()),
                    ..Default::default()
                }),
                session: Some(caller.run.clone()),
                ..Default::default()
            };
            let r = tokio::task::spawn_blocking(move || memory.remember(&access, new))
                .await
                .map_err(|e| HostError::Failed(e.to_string()))?
                .map_err(memory_error)?;
            Ok(r.record.id.to_string())
        })
    }

    fn recall<'a>(
        &'a self,
        caller: &'a Caller,
        namespace: String,
        query: String,
        k: u32,
    ) -> BoxFuture<'a, Result<Vec<MemoryHit>, HostError>> {
        Box::pin(async move {
            let memory = self.memory()?;
            let access = Self::access(caller, &namespace);
            let q = Query {
                query,
                k: Some(k as usize),
                namespaces: Some(vec![namespace]),
                ..Default::default()
            };
            let r = tokio::task::spawn_blocking(move || memory.recall(&access, &q))
                .await
                .map_err(|e| HostError::Failed(e.to_string()))?
                .map_err(memory_error)?;
            Ok(r.results
                .into_iter()
                .map(|h| MemoryHit {
                    id: h.record.id.to_string(),
                    namespace: h.record.namespace,
                    tier: h.record.tier.name().into(),
                    text: h.record.text,
                    score: h.score as f32,
                })
                .collect())
        })
    }

    fn http<'a>(
        &'a self,
        _caller: &'a Caller,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<HttpAnswer, HostError>> {
        Box::pin(async move {
            let method = reqwest::Method::from_bytes(method.as_bytes())
                .map_err(|_| HostError::Invalid(format!("method {method:?}")))?;
            let mut req = self.http.request(method, &url).body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let mut resp = req
                .send()
                .await
                .map_err(|e| HostError::Failed(format!("{url}: {e}")))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).to_string(),
                    )
                })
                .collect();
            let mut out = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| HostError::Failed(format!("{url}: {e}")))?
            {
                if out.len() + chunk.len() > MAX_HTTP_BODY {
                    return Err(HostError::Failed(format!(
                        "{url}: body over {} MiB",
                        MAX_HTTP_BODY >> 20
                    )));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(HttpAnswer {
                status,
                headers,
                body: out,
            })
        })
    }

    fn offline(&self) -> bool {
        self.router.settings().offline
    }

    fn record_score(&self, model: &str, task_kind: &str, score: f64) {
        self.router.record_score(model, task_kind, score);
    }

    fn event(&self, kind: &str, subject: &str, message: &str) {
        let problem = kind.ends_with(".denied")
            || [" failed", " refused", " killed"]
                .iter()
                .any(|w| message.contains(w));
        crate::events::emit(
            kind,
            subject,
            if problem { "warn" } else { "info" },
            message,
        );
    }
}

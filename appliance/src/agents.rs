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
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Largest response body an agent receives from an outbound request.
pub const MAX_HTTP_BODY: usize = 4 << 20;
/// Longest a name lookup for agent egress may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most addresses of one name that are tried.
const MAX_ADDRS: usize = 16;

/// How egress names are looked up: the system resolver, or a fixed table (tests).
#[derive(Clone)]
pub enum Lookup {
    /// `getaddrinfo` through tokio.
    System,
    /// Name → addresses; a name not in the table does not resolve.
    Fixed(Arc<HashMap<String, Vec<IpAddr>>>),
}

/// A refusal to reach an address an agent may never reach; surfaced as a capability error.
#[derive(Debug)]
struct NonPublic(String);

impl std::fmt::Display for NonPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonPublic {}

/// The resolver agent egress connects through: it drops every non-public address
/// ([`cairn_agents::egress::is_public`]) and hands the connector exactly the addresses it
/// checked, so a name cannot rebind to a private address between check and connect.
struct PublicResolver {
    lookup: Lookup,
}

impl PublicResolver {
    async fn resolve_public(
        &self,
        name: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let all: Vec<IpAddr> = match &self.lookup {
            Lookup::System => {
                let found =
                    tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0)))
                        .await
                        .map_err(|_| format!("looking up {name} took over {LOOKUP_TIMEOUT:?}"))??;
                found.map(|a| a.ip()).take(64).collect()
            }
            Lookup::Fixed(table) => table.get(name).cloned().unwrap_or_default(),
        };
        let public: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|ip| cairn_agents::egress::is_public(*ip))
            .take(MAX_ADDRS)
            .map(|ip| SocketAddr::new(ip, 0))
            .collect();
        if public.is_empty() {
            if all.is_empty() {
                return Err(format!("{name} does not resolve").into());
            }
            let listed: Vec<String> = all.iter().take(4).map(|ip| ip.to_string()).collect();
            return Err(Box::new(NonPublic(format!(
                "{name} resolves only to non-public addresses ({}); agents never reach \
                 loopback, private, link-local or other non-public addresses",
                listed.join(", ")
            ))));
        }
        Ok(public)
    }
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let me = PublicResolver {
            lookup: self.lookup.clone(),
        };
        Box::pin(async move {
            let addrs = me.resolve_public(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The outbound HTTP client agents' `http.fetch` goes through: public web roots, no proxy,
/// no redirects (a 3xx goes back to the agent, whose next request is checked again), the
/// [`PublicResolver`], and IP-literal hosts checked here because they skip the resolver.
pub struct Egress {
    http: reqwest::Client,
}

impl Egress {
    /// A client over `lookup`.
    pub fn new(lookup: Lookup) -> Result<Egress, String> {
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
            .dns_resolver(Arc::new(PublicResolver { lookup }))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Egress { http })
    }

    /// One request (the runtime has checked the URL against the manifest).
    pub async fn fetch(
        &self,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<HttpAnswer, HostError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| HostError::Invalid(format!("method {method:?}")))?;
        let parsed =
            reqwest::Url::parse(&url).map_err(|e| HostError::Invalid(format!("{url}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(HostError::Invalid(format!("{url}: not an http(s) URL")));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| HostError::Invalid(format!("{url}: no host")))?;
        // The URL parser has already turned any IPv4 notation into dotted form.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if cairn_agents::egress::looks_like_ip(bare) {
            let ip = cairn_agents::egress::parse_ip(bare)
                .ok_or_else(|| HostError::Invalid(format!("{url}: bad address {host}")))?;
            // A literal skips the resolver: the connection goes to exactly this address.
            if !cairn_agents::egress::is_public(ip) {
                return Err(HostError::Capability(format!(
                    "http: {ip} is not a public address; agents never reach loopback, \
                     private, link-local or other non-public addresses"
                )));
            }
        }
        let mut req = self.http.request(method, parsed).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let mut resp = req.send().await.map_err(|e| send_error(&url, &e))?;
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
    }
}

/// A failed send, with the cause; a refused address is a capability error.
fn send_error(url: &str, e: &reqwest::Error) -> HostError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut causes = Vec::new();
    while let Some(s) = source {
        if let Some(np) = s.downcast_ref::<NonPublic>() {
            return HostError::Capability(format!("http: {np}"));
        }
        causes.push(s.to_string());
        source = s.source();
    }
    causes.dedup();
    HostError::Failed(format!("{url}: {}", causes.join(": ")))
}

/// Services backed by the router, agent memory and the network.
pub struct ApplianceServices {
    router: Arc<Router>,
    memory: Option<Arc<Memory>>,
    egress: Egress,
}

impl ApplianceServices {
    /// Services over the appliance's router and memory.
    pub fn new(
        router: Arc<Router>,
        memory: Option<Arc<Memory>>,
    ) -> Result<ApplianceServices, String> {
        Ok(ApplianceServices {
            router,
            memory,
            egress: Egress::new(Lookup::System)?,
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
        Box::pin(self.egress.fetch(method, url, headers, body))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(entries: &[(&str, &[&str])]) -> Lookup {
        Lookup::Fixed(Arc::new(
            entries
                .iter()
                .map(|(n, ips)| {
                    (
                        n.to_string(),
                        ips.iter().map(|i| i.parse().unwrap()).collect(),
                    )
                })
                .collect(),
        ))
    }

    async fn refused(egress: &Egress, url: &str) -> String {
        match egress
            .fetch("GET".into(), url.to_string(), Vec::new(), Vec::new())
            .await
        {
            Err(HostError::Capability(m)) => m,
            other => panic!("{url}: expected a refused capability, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn egress_never_connects_to_loopback_link_local_or_private_addresses() {
        // A listener that must see no connection.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let egress = Egress::new(Lookup::System).unwrap();
        for url in [
            format!("https://127.0.0.1:{port}/"),
            format!("http://127.0.0.1:{port}/"),
            format!("https://2130706433:{port}/"),
            format!("https://0x7f.1:{port}/"),
            format!("https://0177.0.0.1:{port}/"),
            format!("https://[::1]:{port}/"),
            format!("https://[::ffff:127.0.0.1]:{port}/"),
            // The system resolver names loopback `localhost`.
            format!("https://localhost:{port}/"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "https://10.0.0.1/".to_string(),
        ] {
            let m = refused(&egress, &url).await;
            assert!(
                m.contains("non-public") || m.contains("not a public"),
                "{url}: {m}"
            );
        }
        assert!(
            listener.accept().is_err(),
            "a refused request reached the listener"
        );
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_and_public_ones_pinned() {
        let lookup = fixed(&[
            ("rebind.test", &["127.0.0.1", "10.1.2.3", "::1"]),
            ("metadata.test", &["169.254.169.254"]),
            ("mixed.test", &["192.168.0.1", "1.1.1.1", "fd00::1"]),
        ]);
        let egress = Egress::new(lookup.clone()).unwrap();
        for url in ["https://rebind.test/", "https://metadata.test/"] {
            let m = refused(&egress, url).await;
            assert!(m.contains("resolves only to non-public"), "{url}: {m}");
        }
        // The resolver hands the connector only the public addresses it checked.
        let r = PublicResolver { lookup };
        let addrs = r.resolve_public("mixed.test").await.unwrap();
        assert_eq!(addrs, vec!["1.1.1.1:0".parse().unwrap()]);
    }
}

//! Test support: builds the SDK's example agents for wasm32-wasip2 (and the Python agents with
//! componentize-py), signs them, and fakes the appliance's services.
#![allow(dead_code)]

use cairn_agents::package::SigningKey;
use cairn_agents::services::*;
use cairn_agents::{Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The repository root. `cargo test` sets `CARGO_MANIFEST_DIR` at run time too; that value
/// wins, because a target directory shared between clones makes the compiled-in one stale.
fn workspace() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("the crate lives in the repository")
        .to_path_buf()
}

/// Builds the example agents once per test binary and returns their directory.
pub fn agents_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let ws = workspace();
        let target = ws.join("target").join("wasm-agents");
        let installed = std::process::Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"))
            .unwrap_or(false);
        if !installed {
            let ok = std::process::Command::new("rustup")
                .args(["target", "add", "wasm32-wasip2"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`"
            );
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(&ws)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
                "-p",
                "cairn-agent-sdk",
                "--examples",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the example agents failed");
        target
            .join("wasm32-wasip2")
            .join("release")
            .join("examples")
    })
}

/// An example agent's component bytes.
pub fn component(name: &str) -> Vec<u8> {
    let file = agents_dir().join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// A signing key (fresh per call).
pub fn key() -> SigningKey {
    SigningKey::generate().unwrap()
}

/// A signed package of example `example` named `name`, with extra manifest TOML.
pub fn package(key: &SigningKey, example: &str, name: &str, extra: &str) -> Vec<u8> {
    package_of(key, component(example), name, extra)
}

/// What the fake services saw.
#[derive(Default)]
pub struct Seen {
    pub chats: Vec<Chat>,
    pub http: Vec<String>,
    pub remembered: Vec<(String, String)>,
    /// Agent names of chat callers, in order.
    pub callers: Vec<String>,
    /// Scores recorded for the router: (model, task kind, score).
    pub scores: Vec<(String, String, f64)>,
}

/// Services that answer from canned data and record every call.
pub struct FakeServices {
    pub seen: Mutex<Seen>,
    pub offline: bool,
    pub tokens_per_call: u32,
}

impl FakeServices {
    pub fn new() -> Arc<FakeServices> {
        Arc::new(FakeServices {
            seen: Mutex::new(Seen::default()),
            offline: false,
            tokens_per_call: 10,
        })
    }
}

fn answer(chat: &Chat, tokens: u32) -> ChatAnswer {
    let last = chat
        .messages
        .last()
        .map(|m| m.content.clone())
        .unwrap_or_default();
    ChatAnswer {
        text: format!(
            "Score 8. Reply to: {}",
            last.chars().take(40).collect::<String>()
        ),
        model: "fake-model".into(),
        prompt_tokens: tokens / 2,
        completion_tokens: tokens - tokens / 2,
        cost_usd: 0.0,
    }
}

impl Services for FakeServices {
    fn chat<'a>(
        &'a self,
        caller: &'a Caller,
        chat: Chat,
    ) -> BoxFuture<'a, Result<ChatAnswer, HostError>> {
        let a = answer(&chat, self.tokens_per_call);
        let mut seen = self.seen.lock().unwrap();
        seen.chats.push(chat);
        seen.callers.push(caller.agent.clone());
        drop(seen);
        Box::pin(async move { Ok(a) })
    }
    fn chat_stream<'a>(
        &'a self,
        _: &'a Caller,
        chat: Chat,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<Result<StreamItem, HostError>>, HostError>>
    {
        let a = answer(&chat, self.tokens_per_call);
        self.seen.lock().unwrap().chats.push(chat);
        Box::pin(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            for word in a.text.split_inclusive(' ') {
                tx.send(Ok(StreamItem::Piece(word.to_string())))
                    .await
                    .unwrap();
            }
            tx.send(Ok(StreamItem::Done(a))).await.unwrap();
            Ok(rx)
        })
    }
    fn embed<'a>(
        &'a self,
        _: &'a Caller,
        texts: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, HostError>> {
        Box::pin(async move { Ok(texts.iter().map(|_| vec![1.0, 0.0]).collect()) })
    }
    fn remember<'a>(
        &'a self,
        _: &'a Caller,
        namespace: String,
        _: String,
        text: String,
        _: String,
    ) -> BoxFuture<'a, Result<String, HostError>> {
        self.seen.lock().unwrap().remembered.push((namespace, text));
        Box::pin(async move { Ok("mem-1".to_string()) })
    }
    fn recall<'a>(
        &'a self,
        _: &'a Caller,
        namespace: String,
        _: String,
        _: u32,
    ) -> BoxFuture<'a, Result<Vec<MemoryHit>, HostError>> {
        Box::pin(async move {
            Ok(vec![MemoryHit {
                id: "m1".into(),
                namespace,
                tier: "semantic".into(),
                text: "The night shift starts at 22:00.".into(),
                score: 1.0,
            }])
        })
    }
    fn http<'a>(
        &'a self,
        _: &'a Caller,
        _: String,
        url: String,
        _: Vec<(String, String)>,
        _: Vec<u8>,
    ) -> BoxFuture<'a, Result<HttpAnswer, HostError>> {
        self.seen.lock().unwrap().http.push(url);
        Box::pin(async move {
            Ok(HttpAnswer {
                status: 200,
                headers: vec![],
                body: b"<html>Cairn runs agents offline.</html>".to_vec(),
            })
        })
    }
    fn offline(&self) -> bool {
        self.offline
    }
    fn record_score(&self, model: &str, task_kind: &str, score: f64) {
        self.seen
            .lock()
            .unwrap()
            .scores
            .push((model.into(), task_kind.into(), score));
    }
}

/// A runtime over a fresh redb file in `dir`.
pub async fn runtime(dir: &Path, services: Arc<dyn Services>) -> Runtime {
    let db = Arc::new(redb::Database::create(dir.join("cairn.redb")).unwrap());
    let mut config = RuntimeConfig::new(dir.to_path_buf());
    config.max_instances = 64;
    config.max_running = 8;
    Runtime::open(db, services, config).await.unwrap()
}

/// A Python agent from `sdk/python/<module>.py`, built into a component with the
/// componentize-py named by `CAIRN_COMPONENTIZE_PY` (`cargo xtask test` makes a venv with the
/// version pinned in `sdk/python/requirements.txt` and sets it).
pub fn python_agent(module: &str) -> Vec<u8> {
    let componentize = std::env::var_os("CAIRN_COMPONENTIZE_PY").expect(
        "CAIRN_COMPONENTIZE_PY must name the componentize-py program (cargo xtask test sets it; \
         or `pip install -r sdk/python/requirements.txt` into a venv and point it there)",
    );
    let ws = workspace();
    // Built from a copy: componentize-py writes `__pycache__` into the app's directory.
    let out = tempfile::tempdir().unwrap();
    let app = out.path().join("app");
    std::fs::create_dir(&app).unwrap();
    for entry in std::fs::read_dir(ws.join("sdk/python")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "py") {
            std::fs::copy(entry.path(), app.join(entry.file_name())).unwrap();
        }
    }
    let wasm = out.path().join(format!("{module}.wasm"));
    let status = std::process::Command::new(componentize)
        .arg("-d")
        .arg(ws.join("agents/wit"))
        .args(["-w", "agent", "componentize", "-p"])
        .arg(&app)
        .args([module, "-o"])
        .arg(&wasm)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("componentize-py runs");
    assert!(status.success(), "componentize-py failed on {module}");
    std::fs::read(&wasm).unwrap()
}

/// A package of `component` named `name`, signed by `key`, with extra manifest TOML.
pub fn package_of(key: &SigningKey, component: Vec<u8>, name: &str, extra: &str) -> Vec<u8> {
    let manifest = format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\npublisher = \"{}\"\n{extra}",
        key.public_hex()
    );
    key.sign(&manifest, component).unwrap().to_bytes()
}

//! The appliance's local models: which exist (the catalog's models present in the model store,
//! plus operator-registered files), loading them (at start or on first use), and the device
//! they run on.

use cairn_models::catalog::{Catalog, Kind};
use cairn_models::embed::Embedder;
use cairn_models::engine::{ChatModel, Engine, EngineOptions};
use cairn_models::kernels::Pool;
use cairn_models::llama::Backend;
use cairn_models::store::ModelStore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The operator's registrations in `path` (none when it does not exist).
fn read_registry(path: &Path) -> Result<Vec<(Registered, &'static str)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: RegistryFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    file.model
        .into_iter()
        .map(|r| {
            let kind = match r.kind.as_str() {
                "chat" => "chat",
                "embedding" => "embedding",
                other => {
                    return Err(format!(
                        "{}: model {}: unknown kind {other:?} (chat or embedding)",
                        path.display(),
                        r.id
                    ));
                }
            };
            Ok((r, kind))
        })
        .collect()
}

/// When models are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadPolicy {
    /// At start-up (ready means ready to answer).
    Boot,
    /// On first use (fast start, low idle memory).
    Lazy,
}

/// Which device runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA if built in and present, else Metal, else the CPU.
    Auto,
    /// Cairn's CPU kernels.
    Cpu,
    /// An NVIDIA GPU (the `cuda` build).
    Cuda,
    /// An Apple GPU (the `metal` build).
    Metal,
}

/// A model the operator registered from their own file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    /// Identifier clients use.
    pub id: String,
    /// `chat` (GGUF) or `embedding` (a directory with model.safetensors, config.json,
    /// tokenizer.json).
    pub kind: String,
    /// The GGUF file or the embedding model's directory.
    pub path: PathBuf,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    model: Vec<Registered>,
}

/// A model the appliance can serve.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    /// Identifier.
    pub id: String,
    /// `chat` or `embedding`.
    pub kind: &'static str,
    /// File or directory.
    pub path: PathBuf,
    /// Loaded in memory now.
    pub loaded: bool,
    /// Where it comes from (`catalog` or `registered`).
    pub origin: &'static str,
    /// A load under way, or the last one that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadState>,
}

/// A model load under way (or failed).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadState {
    /// Steps done (layers, then embeddings and head).
    pub done: usize,
    /// Steps in all (0 until the file's header is read).
    pub total: usize,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a model is not available.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// No such model.
    #[error("model {0:?} does not exist")]
    Unknown(String),
    /// The model is of the other kind.
    #[error("model {id:?} is a {kind} model")]
    WrongKind {
        /// The model.
        id: String,
        /// Its kind.
        kind: &'static str,
    },
    /// Loading failed.
    #[error("model {id:?} could not be loaded: {why}")]
    Load {
        /// The model.
        id: String,
        /// The error.
        why: String,
    },
    /// A model of that id exists already.
    #[error("a model {0:?} exists already")]
    Exists(String),
    /// The model comes with the image (read-only model partition) and cannot be removed.
    #[error("model {0:?} comes with the image and cannot be removed")]
    Builtin(String),
    /// The operator's registry (`models.toml`) could not be read or written.
    #[error("the model registry: {0}")]
    Registry(String),
}

/// Settings of the inference service.
#[derive(Debug, Clone)]
pub struct InferenceOptions {
    /// The model store (`/models` in the image).
    pub store: Option<PathBuf>,
    /// Operator registrations (`models.toml` on the data partition).
    pub registry: Option<PathBuf>,
    /// Device.
    pub device: DeviceChoice,
    /// CPU threads (0: all cores).
    pub threads: usize,
    /// Load policy.
    pub load: LoadPolicy,
}

/// The held load lock; clears the record of the load when dropped.
struct LoadGuard<'a>(std::sync::MutexGuard<'a, Option<(String, std::time::Instant)>>);

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if let Some((id, since)) = self.0.take() {
            let held = since.elapsed();
            if held > std::time::Duration::from_secs(60) {
                tracing::warn!(
                    "the load of {id} held the load lock for {} s",
                    held.as_secs()
                );
            }
        }
    }
}

/// The service.
pub struct Inference {
    entries: RwLock<BTreeMap<String, ModelEntry>>,
    /// The operator's registry file (`models.toml`), rewritten when models are added or removed.
    registry: Option<PathBuf>,
    /// Serialises changes of the registry file.
    registry_lock: Mutex<()>,
    backend: Backend,
    device_name: String,
    chat: Mutex<BTreeMap<String, Arc<Engine>>>,
    embed: Mutex<BTreeMap<String, Arc<Embedder>>>,
    /// Serialises loads so two first requests do not load one model twice; holds the id of
    /// the model being loaded and since when (for the warning of a load that waits long).
    loading: Mutex<Option<(String, std::time::Instant)>>,
    /// Loads under way and failed ones, by model id.
    loads: Mutex<BTreeMap<String, LoadState>>,
    /// Problems found at start (a broken registry), reported by the system API.
    warnings: Vec<String>,
}

fn pick_backend(choice: DeviceChoice, threads: usize) -> Result<(Backend, String), String> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let cpu = || {
        (
            Backend::Cpu(Arc::new(Pool::new(threads))),
            format!(
                "cpu ({threads} threads, {})",
                cairn_models::kernels::level().name()
            ),
        )
    };
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Cuda => candle_cuda()
            .map(|d| (Backend::Gpu(d), "cuda:0".to_string()))
            .ok_or_else(|| {
                "CUDA requested, but this build has no CUDA support or no GPU is present"
                    .to_string()
            }),
        DeviceChoice::Metal => candle_metal()
            .map(|d| (Backend::Gpu(d), "metal:0".to_string()))
            .ok_or_else(|| {
                "Metal requested, but this build has no Metal support or no GPU is present"
                    .to_string()
            }),
        DeviceChoice::Auto => Ok(candle_cuda()
            .map(|d| (Backend::Gpu(d), "cuda:0".to_string()))
            .or_else(|| candle_metal().map(|d| (Backend::Gpu(d), "metal:0".to_string())))
            .unwrap_or_else(cpu)),
    }
}

fn candle_cuda() -> Option<candle_core::Device> {
    if candle_core::utils::cuda_is_available() {
        candle_core::Device::new_cuda(0).ok()
    } else {
        None
    }
}

fn candle_metal() -> Option<candle_core::Device> {
    if candle_core::utils::metal_is_available() {
        candle_core::Device::new_metal(0).ok()
    } else {
        None
    }
}

impl Inference {
    /// Finds the models and, with `LoadPolicy::Boot`, loads them.
    pub fn new(opts: &InferenceOptions) -> Result<Inference, String> {
        let (backend, device_name) = pick_backend(opts.device, opts.threads)?;
        let mut entries = BTreeMap::new();
        if let Some(dir) = &opts.store {
            let store = ModelStore::new(dir);
            let catalog = Catalog::builtin();
            for m in store.available(&catalog) {
                let path = match m.kind {
                    Kind::Chat => store.file(m, "weights"),
                    Kind::Embedding => store
                        .file(m, "weights")
                        .and_then(|p| p.parent().map(Path::to_path_buf)),
                };
                if let Some(path) = path {
                    entries.insert(
                        m.id.clone(),
                        ModelEntry {
                            id: m.id.clone(),
                            kind: if m.kind == Kind::Chat {
                                "chat"
                            } else {
                                "embedding"
                            },
                            path,
                            loaded: false,
                            origin: "catalog",
                            load: None,
                        },
                    );
                }
            }
        }
        // A broken registry must not take the appliance down: its models are left out and
        // the reason is reported (API and log) until the operator fixes the file.
        let mut warnings = Vec::new();
        if let Some(reg) = &opts.registry {
            match read_registry(reg) {
                Ok(list) => {
                    for (r, kind) in list {
                        entries.insert(
                            r.id.clone(),
                            ModelEntry {
                                id: r.id,
                                kind,
                                path: r.path,
                                loaded: false,
                                origin: "registered",
                                load: None,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::error!("{e}; registered models are unavailable");
                    warnings.push(e);
                }
            }
        }
        let me = Inference {
            entries: RwLock::new(entries),
            registry: opts.registry.clone(),
            registry_lock: Mutex::new(()),
            backend,
            device_name,
            chat: Mutex::new(BTreeMap::new()),
            embed: Mutex::new(BTreeMap::new()),
            loading: Mutex::new(None),
            loads: Mutex::new(BTreeMap::new()),
            warnings,
        };
        if opts.load == LoadPolicy::Boot {
            for (id, e) in &me.entries() {
                let r = match e.kind {
                    "chat" => me.chat_engine(id).map(|_| ()),
                    _ => me.embedder(id).map(|_| ()),
                };
                if let Err(err) = r {
                    tracing::warn!("{err}");
                }
            }
        }
        Ok(me)
    }

    /// Problems found at start that left models out.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Where models run.
    pub fn device(&self) -> &str {
        &self.device_name
    }

    fn entries(&self) -> BTreeMap<String, ModelEntry> {
        self.entries.read().map(|e| e.clone()).unwrap_or_default()
    }

    /// Every model, with whether it is loaded.
    pub fn list(&self) -> Vec<ModelEntry> {
        let chat = self
            .chat
            .lock()
            .map(|c| c.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let embed = self
            .embed
            .lock()
            .map(|c| c.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let loads = self.loads.lock().map(|l| l.clone()).unwrap_or_default();
        self.entries()
            .values()
            .map(|e| ModelEntry {
                loaded: chat.contains(&e.id) || embed.contains(&e.id),
                load: loads.get(&e.id).cloned(),
                ..e.clone()
            })
            .collect()
    }

    /// Live figures of each loaded chat model's engine: queue, active requests and tokens.
    pub fn engine_stats(&self) -> serde_json::Value {
        let engines = self.chat.lock().map(|c| c.clone()).unwrap_or_default();
        let map: serde_json::Map<String, serde_json::Value> = engines
            .iter()
            .map(|(id, e)| {
                let s = e.stats();
                (
                    id.clone(),
                    serde_json::json!({"waiting": s.waiting, "active": s.active,
                                       "generated_tokens": s.generated, "prompt_tokens": s.prompt}),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }

    /// The first chat model (what requests without a known model get in the console).
    pub fn default_chat(&self) -> Option<String> {
        self.entries()
            .values()
            .find(|e| e.kind == "chat")
            .map(|e| e.id.clone())
    }

    fn entry(&self, id: &str, kind: &'static str) -> Result<ModelEntry, InferenceError> {
        let e = self
            .entries
            .read()
            .ok()
            .and_then(|e| e.get(id).cloned())
            .ok_or_else(|| InferenceError::Unknown(id.to_string()))?;
        if e.kind != kind {
            return Err(InferenceError::WrongKind {
                id: id.to_string(),
                kind: e.kind,
            });
        }
        Ok(e)
    }

    /// Records a load's progress (`total` 0: not started yet).
    pub fn set_load(&self, id: &str, done: usize, total: usize) {
        if let Ok(mut l) = self.loads.lock() {
            let started_ms = l
                .get(id)
                .filter(|s| s.error.is_none())
                .map_or_else(now_ms, |s| s.started_ms);
            l.insert(
                id.to_string(),
                LoadState {
                    done,
                    total,
                    started_ms,
                    error: None,
                },
            );
        }
    }

    /// Ends a load: a success clears its state, a failure stays visible with its reason.
    fn finish_load<T>(&self, id: &str, r: Result<T, String>) -> Result<T, InferenceError> {
        let Ok(mut l) = self.loads.lock() else {
            return r.map_err(|why| InferenceError::Load { id: id.into(), why });
        };
        match r {
            Ok(v) => {
                l.remove(id);
                crate::events::emit("model.load", id, "info", format!("{id} loaded"));
                Ok(v)
            }
            Err(why) => {
                if let Some(s) = l.get_mut(id) {
                    s.error = Some(why.clone());
                }
                tracing::warn!("model {id} failed to load: {why}");
                crate::events::emit(
                    "model.load",
                    id,
                    "error",
                    format!("{id} failed to load: {why}"),
                );
                Err(InferenceError::Load { id: id.into(), why })
            }
        }
    }

    /// Loads a model (chat or embedding) if it is not loaded yet; blocking.
    pub fn load(&self, id: &str) -> Result<(), InferenceError> {
        let kind = self
            .entries
            .read()
            .ok()
            .and_then(|e| e.get(id).map(|e| e.kind))
            .ok_or_else(|| InferenceError::Unknown(id.to_string()))?;
        match kind {
            "chat" => self.chat_engine(id).map(|_| ()),
            _ => self.embedder(id).map(|_| ()),
        }
    }

    /// Drops a loaded model from memory (requests running on it finish first); whether it was
    /// loaded.
    pub fn unload(&self, id: &str) -> Result<bool, InferenceError> {
        self.entry_any(id)?;
        Ok(self.drop_loaded(id))
    }

    fn drop_loaded(&self, id: &str) -> bool {
        let chat = self.chat.lock().ok().and_then(|mut c| c.remove(id));
        let embed = self.embed.lock().ok().and_then(|mut c| c.remove(id));
        let was = chat.is_some() || embed.is_some();
        if was {
            crate::events::emit("model.unload", id, "info", format!("{id} unloaded"));
        }
        was
    }

    fn entry_any(&self, id: &str) -> Result<ModelEntry, InferenceError> {
        self.entries
            .read()
            .ok()
            .and_then(|e| e.get(id).cloned())
            .ok_or_else(|| InferenceError::Unknown(id.to_string()))
    }

    /// Rewrites the registry file with `f` applied to its list (atomically: a new file, synced,
    /// renamed over the old one).
    fn edit_registry(
        &self,
        f: impl FnOnce(&mut Vec<Registered>) -> Result<(), InferenceError>,
    ) -> Result<(), InferenceError> {
        let path = self
            .registry
            .as_ref()
            .ok_or_else(|| InferenceError::Registry("this appliance keeps no registry".into()))?;
        let _one = self.registry_lock.lock();
        let mut list: Vec<Registered> = read_registry(path)
            .map_err(InferenceError::Registry)?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        f(&mut list)?;
        let text = toml::to_string(&RegistryFile { model: list })
            .map_err(|e| InferenceError::Registry(e.to_string()))?;
        let tmp = path.with_extension("toml.new");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| InferenceError::Registry(format!("{}: {e}", path.display())))
    }

    /// Adds a model file the operator uploaded (checked by the caller) to the registry and
    /// makes it available at once.
    pub fn register(&self, r: Registered) -> Result<ModelEntry, InferenceError> {
        let kind = match r.kind.as_str() {
            "chat" => "chat",
            "embedding" => "embedding",
            other => return Err(InferenceError::Registry(format!("unknown kind {other:?}"))),
        };
        if self.entry_any(&r.id).is_ok() {
            return Err(InferenceError::Exists(r.id));
        }
        let entry = ModelEntry {
            id: r.id.clone(),
            kind,
            path: r.path.clone(),
            loaded: false,
            origin: "registered",
            load: None,
        };
        self.edit_registry(|list| {
            if list.iter().any(|m| m.id == r.id) {
                return Err(InferenceError::Exists(r.id.clone()));
            }
            list.push(r.clone());
            Ok(())
        })?;
        if let Ok(mut e) = self.entries.write() {
            e.insert(entry.id.clone(), entry.clone());
        }
        crate::events::emit(
            "model.add",
            &entry.id,
            "info",
            format!("{} added", entry.id),
        );
        Ok(entry)
    }

    /// Unloads and unregisters an operator's model; returns it (its file is the caller's to
    /// delete). The image's models are refused.
    pub fn remove(&self, id: &str) -> Result<ModelEntry, InferenceError> {
        let e = self.entry_any(id)?;
        if e.origin != "registered" {
            return Err(InferenceError::Builtin(id.to_string()));
        }
        self.edit_registry(|list| {
            list.retain(|m| m.id != id);
            Ok(())
        })?;
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(id);
        }
        self.drop_loaded(id);
        if let Ok(mut l) = self.loads.lock() {
            l.remove(id);
        }
        crate::events::emit("model.remove", id, "info", format!("{id} removed"));
        Ok(e)
    }

    /// Takes the load lock for `id`; a wait of more than 10 s is logged with the load that
    /// held it (a load queued behind a slow or stuck one shows "loading 0%" in the console).
    fn lock_loading(&self, id: &str) -> Option<LoadGuard<'_>> {
        let asked = std::time::Instant::now();
        let mut g = self.loading.lock().ok()?;
        let waited = asked.elapsed();
        if waited > std::time::Duration::from_secs(10) {
            tracing::warn!(
                "loading {id} waited {} s for the model load before it",
                waited.as_secs()
            );
        }
        *g = Some((id.to_string(), std::time::Instant::now()));
        Some(LoadGuard(g))
    }

    /// The engine of a chat model, loading it on first use.
    pub fn chat_engine(&self, id: &str) -> Result<Arc<Engine>, InferenceError> {
        let e = self.entry(id, "chat")?;
        if let Some(engine) = self.chat.lock().ok().and_then(|c| c.get(id).cloned()) {
            return Ok(engine);
        }
        let _guard = self.lock_loading(id);
        if let Some(engine) = self.chat.lock().ok().and_then(|c| c.get(id).cloned()) {
            return Ok(engine);
        }
        let started = std::time::Instant::now();
        self.set_load(id, 0, 0);
        let loaded =
            ChatModel::load_with_progress(id, &e.path, self.backend.clone(), &mut |done, total| {
                self.set_load(id, done, total)
            });
        let model = self.finish_load(id, loaded.map_err(|err| err.to_string()))?;
        let engine = Arc::new(Engine::start(model, EngineOptions::default()));
        tracing::info!(
            "loaded chat model {id} on {} in {} ms",
            self.device_name,
            started.elapsed().as_millis()
        );
        if let Ok(mut c) = self.chat.lock() {
            c.insert(id.to_string(), engine.clone());
        }
        Ok(engine)
    }

    /// An embedding model, loading it on first use.
    pub fn embedder(&self, id: &str) -> Result<Arc<Embedder>, InferenceError> {
        let e = self.entry(id, "embedding")?;
        if let Some(m) = self.embed.lock().ok().and_then(|c| c.get(id).cloned()) {
            return Ok(m);
        }
        let _guard = self.lock_loading(id);
        if let Some(m) = self.embed.lock().ok().and_then(|c| c.get(id).cloned()) {
            return Ok(m);
        }
        let started = std::time::Instant::now();
        let device = match &self.backend {
            Backend::Gpu(d) => d.clone(),
            Backend::Cpu(_) => candle_core::Device::Cpu,
        };
        self.set_load(id, 0, 1);
        let loaded = Embedder::load(&e.path, &device, 256).map_err(|err| err.to_string());
        let m = Arc::new(self.finish_load(id, loaded)?);
        tracing::info!(
            "loaded embedding model {id} in {} ms",
            started.elapsed().as_millis()
        );
        if let Ok(mut c) = self.embed.lock() {
            c.insert(id.to_string(), m.clone());
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(registry: &Path) -> InferenceOptions {
        InferenceOptions {
            store: None,
            registry: Some(registry.to_path_buf()),
            device: DeviceChoice::Cpu,
            threads: 1,
            load: LoadPolicy::Lazy,
        }
    }

    #[test]
    fn a_broken_registry_is_reported_and_the_service_still_starts() {
        let dir = std::env::temp_dir().join(format!("cairn-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let reg = dir.join("models.toml");
        std::fs::write(
            &reg,
            "[[model]]\nid = \"mine\"\nkind = \"chat\"\npath = \"/data/m.gguf\"\n",
        )
        .unwrap();
        let inf = Inference::new(&opts(&reg)).unwrap();
        assert!(inf.warnings().is_empty());
        assert_eq!(inf.list().len(), 1);
        assert_eq!(inf.list()[0].origin, "registered");
        std::fs::write(
            &reg,
            "[[model]]\nid = \"mine\"\nkind = \"vision\"\npath = \"x\"\n",
        )
        .unwrap();
        let inf = Inference::new(&opts(&reg)).unwrap();
        assert!(inf.list().is_empty());
        assert!(
            inf.warnings()[0].contains("unknown kind \"vision\""),
            "{:?}",
            inf.warnings()
        );
        std::fs::write(&reg, "[[model]\nid = ").unwrap();
        let inf = Inference::new(&opts(&reg)).unwrap();
        assert!(
            inf.warnings()[0].contains("models.toml"),
            "{:?}",
            inf.warnings()
        );
        // A registered file that is not a model fails to load with 503-class error, not a panic.
        std::fs::write(
            &reg,
            format!(
                "[[model]]\nid = \"bad\"\nkind = \"chat\"\npath = {:?}\n",
                reg
            ),
        )
        .unwrap();
        let inf = Inference::new(&opts(&reg)).unwrap();
        assert!(matches!(
            inf.chat_engine("bad"),
            Err(InferenceError::Load { .. })
        ));
        assert!(matches!(
            inf.chat_engine("nope"),
            Err(InferenceError::Unknown(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

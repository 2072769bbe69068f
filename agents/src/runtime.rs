//! The runtime: installs verified packages, keeps instances of running agents, schedules and
//! executes tasks under their limits, delivers messages, takes checkpoints and supervises
//! long-lived service runs.

use crate::db::{
    AgentRecord, AgentState, AuditEntry, Db, DbError, Priority, Restart, RunRecord, RunStatus,
    TrustEntry, Usage, now_ms,
};
use crate::engine::{self, Cache};
use crate::host::{Agent, AgentPre, HostState, MAX_STDIO, Peers, RunCtx};
use crate::manifest::Manifest;
use crate::package::{Package, PackageError};
use crate::services::{BoxFuture, HostError, Services};
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot, watch};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// The WIT world every agent must implement.
pub const WORLD: &str = "cairn:agent/agent@0.1.0";
/// Deepest chain of subtasks and messages.
pub const MAX_DEPTH: usize = 8;

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The package was refused.
    #[error("{0}")]
    Package(#[from] PackageError),
    /// The component does not implement the agent world.
    #[error("component does not match the {WORLD} world: {0}")]
    World(String),
    /// No such agent, run or key.
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// A quota refused the work before it started.
    #[error("{0}")]
    Quota(String),
    /// Storage failed.
    #[error("{0}")]
    Storage(#[from] DbError),
}

/// Runtime configuration.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components and granted agent directories live.
    pub data_dir: PathBuf,
    /// Component instances that may exist at once (idle agents included).
    pub max_instances: u32,
    /// Tasks that may execute at once across all agents.
    pub max_running: u32,
}

impl RuntimeConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> RuntimeConfig {
        RuntimeConfig {
            data_dir,
            max_instances: 1024,
            max_running: 16,
        }
    }
}

/// How to start an agent.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StartOptions {
    /// Restart policy of the service run.
    #[serde(default)]
    pub restart: Restart,
    /// Input of a long-lived service run started with the agent.
    #[serde(default)]
    pub service: Option<String>,
    /// Priority of the agent's runs.
    #[serde(default)]
    pub priority: Priority,
}

/// An installed agent as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentInfo {
    /// Stored record.
    #[serde(flatten)]
    pub record: AgentRecord,
    /// Manifest.
    pub manifest: Manifest,
    /// Runs executing now.
    pub running: usize,
    /// Idle instances kept warm.
    pub idle_instances: usize,
    /// When the last checkpoint was taken.
    pub checkpoint_ms: Option<u64>,
}

struct Instance {
    store: Store<HostState>,
    agent: Agent,
    generation: u64,
}

/// A loaded agent: its compiled component and its live instances.
struct Loaded {
    manifest: Arc<Manifest>,
    pre: AgentPre<HostState>,
    idle: Mutex<Vec<Instance>>,
    slots: Arc<Semaphore>,
    paused: watch::Sender<bool>,
    /// Bumped by kill and stop: older instances are dropped, not reused.
    generation: std::sync::atomic::AtomicU64,
    running: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    files: Option<PathBuf>,
    /// The byte quota of `files`.
    files_quota: Option<Arc<crate::files::FilesQuota>>,
    /// The stored checkpoint, kept in memory so instantiation needs no database read.
    checkpoint: Mutex<Option<Arc<Vec<u8>>>>,
}

struct Waiter {
    priority: Priority,
    seq: std::cmp::Reverse<u64>,
    tx: oneshot::Sender<()>,
}
impl PartialEq for Waiter {
    fn eq(&self, o: &Self) -> bool {
        (self.priority, self.seq) == (o.priority, o.seq)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Waiter {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.priority, self.seq).cmp(&(o.priority, o.seq))
    }
}

/// Global execution slots handed out by priority, then arrival.
struct Scheduler {
    max: usize,
    state: Mutex<(usize, u64, BinaryHeap<Waiter>)>,
}

struct Slot<'a>(&'a Scheduler);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().expect("scheduler lock");
        // Hand the slot to the best live waiter, else free it.
        while let Some(w) = st.2.pop() {
            if w.tx.send(()).is_ok() {
                return;
            }
        }
        st.0 -= 1;
    }
}

impl Scheduler {
    async fn acquire(&self, priority: Priority) -> Slot<'_> {
        let rx = {
            let mut st = self.state.lock().expect("scheduler lock");
            if st.0 < self.max {
                st.0 += 1;
                return Slot(self);
            }
            st.1 += 1;
            let seq = std::cmp::Reverse(st.1);
            let (tx, rx) = oneshot::channel();
            st.2.push(Waiter { priority, seq, tx });
            rx
        };
        // The sender is only dropped after a send, so this cannot fail while we wait.
        let _ = rx.await;
        Slot(self)
    }
}

struct Shared {
    engine: Engine,
    linker: Linker<HostState>,
    db: Db,
    services: Arc<dyn Services>,
    cache: Cache,
    config: RuntimeConfig,
    agents: Mutex<HashMap<String, Arc<Loaded>>>,
    sched: Scheduler,
    /// Runs asked to end, with the reason their record will carry (see [`Runtime::cancel_run`]).
    cancels: Mutex<HashMap<String, String>>,
    /// Workflow runs in progress, for [`Runtime::cancel_workflow`].
    pub(crate) workflows: Mutex<HashMap<String, Arc<crate::workflow::Cancel>>>,
    me: Weak<Shared>,
}

/// The agent runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

/// A status or state as the API spells it (`killed`, `succeeded`, ...).
pub(crate) fn state_name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn new_run_id() -> String {
    let mut r = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
    format!("run-{:012x}-{}", now_ms(), hex::encode(r))
}

fn trap_reason(e: &wasmtime::Error) -> String {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        return match t {
            wasmtime::Trap::OutOfFuel => "out of fuel: the task used its whole fuel budget".into(),
            wasmtime::Trap::StackOverflow => "stack overflow".into(),
            wasmtime::Trap::UnreachableCodeReached => {
                "trap: unreachable (the agent panicked or aborted)".into()
            }
            other => format!("trap: {other}"),
        };
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        // e.g. Python's `sys.exit()` or an uncaught `SystemExit`, Rust's `process::exit`.
        return format!("the agent exited (status {}) instead of returning", exit.0);
    }
    let s = format!("{e:#}");
    // The first is the limiter refusing growth past the manifest's `memory_mb` (with
    // `trap_on_grow_failure`), the others the pool refusing it.
    if s.contains("forcing trap when growing memory")
        || s.contains("forcing a memory growth failure")
        || s.contains("memory minimum size")
    {
        return "memory limit: the agent tried to grow past its memory limit".into();
    }
    s
}

impl Runtime {
    /// Opens the runtime over the appliance's database: loads installed agents, marks runs a
    /// previous process left unfinished as interrupted, and restarts agents that were running.
    pub async fn open(
        db: Arc<redb::Database>,
        services: Arc<dyn Services>,
        config: RuntimeConfig,
    ) -> Result<Runtime, AgentError> {
        let engine = engine::build(config.max_instances, config.max_running)
            .map_err(|e| AgentError::Invalid(format!("wasm engine: {e:#}")))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| AgentError::Invalid(format!("wasi: {e:#}")))?;
        Agent::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| AgentError::Invalid(format!("agent imports: {e:#}")))?;
        crate::files::add_to_linker(&mut linker)
            .map_err(|e| AgentError::Invalid(format!("files quota: {e:#}")))?;
        let db = Db::open(db)?;
        let interrupted = db.recover_runs()? + db.recover_workflow_runs()?;
        if interrupted > 0 {
            tracing::info!(interrupted, "runs interrupted by the last restart");
        }
        let cache = Cache::new(&engine, &config.data_dir.join("agents").join("compiled"));
        let shared = Arc::new_cyclic(|me| Shared {
            engine,
            linker,
            db,
            services,
            cache,
            sched: Scheduler {
                max: config.max_running.max(1) as usize,
                state: Mutex::new((0, 0, BinaryHeap::new())),
            },
            config,
            agents: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            workflows: Mutex::new(HashMap::new()),
            me: me.clone(),
        });
        let rt = Runtime { shared };
        let records = rt.shared.db.agents()?;
        let mut keep = Vec::new();
        for rec in records {
            keep.push(rec.sha256.clone());
            let Some(bytes) = rt.shared.db.package(&rec.name)? else {
                continue;
            };
            let s = rt.shared.clone();
            let loaded = tokio::task::spawn_blocking(move || s.load(&bytes))
                .await
                .map_err(|e| AgentError::Invalid(e.to_string()))?;
            match loaded {
                Ok((loaded, _)) => {
                    let mut rec = rec;
                    // A publisher revoked (or removed) while the appliance was down: the agent
                    // stays installed but stopped, and cannot start until trusted again.
                    if let Err(e) = rt.shared.check_publisher(&rec.publisher)
                        && rec.state != AgentState::Stopped
                    {
                        rec.state = AgentState::Stopped;
                        rec.reason = Some(e.to_string());
                        rt.shared.db.put_agent(&rec)?;
                    }
                    loaded.paused.send_replace(rec.state == AgentState::Paused);
                    rt.shared
                        .agents
                        .lock()
                        .expect("agents lock")
                        .insert(rec.name.clone(), loaded);
                    if rec.state == AgentState::Running && rec.service.is_some() {
                        rt.shared.supervise(rec.name.clone());
                    }
                }
                Err(e) => {
                    tracing::error!(agent = %rec.name, error = %e, "agent could not be loaded")
                }
            }
        }
        rt.shared.cache.prune(&keep);
        Ok(rt)
    }

    /// Adds a publisher key to the trust store (or renames it; a revoked key stays revoked).
    pub fn trust(&self, key: &str, name: &str) -> Result<TrustEntry, AgentError> {
        let key = key.to_ascii_lowercase();
        if key.len() != 64 || hex::decode(&key).is_err() {
            return Err(AgentError::Invalid(
                "key must be an Ed25519 public key, 64 hex digits".into(),
            ));
        }
        if name.is_empty() || name.len() > 128 {
            return Err(AgentError::Invalid("name must be 1 to 128 bytes".into()));
        }
        let entry = match self.shared.db.trust(&key)? {
            Some(mut t) => {
                t.name = name.into();
                t
            }
            None => TrustEntry {
                key: key.clone(),
                name: name.into(),
                added_ms: now_ms(),
                revoked_ms: None,
            },
        };
        self.shared.db.put_trust(&entry)?;
        self.shared
            .db
            .audit(None, None, "trust_add", &format!("{key} ({name})"))?;
        Ok(entry)
    }

    /// Revokes a publisher key: its packages can no longer be installed, installed agents it
    /// signed are killed (their runs end `killed` naming the revocation) and stay stopped.
    pub async fn revoke(&self, key: &str) -> Result<TrustEntry, AgentError> {
        let key = key.to_ascii_lowercase();
        let mut entry = self
            .shared
            .db
            .trust(&key)?
            .ok_or_else(|| AgentError::NotFound(format!("no trusted key {key}")))?;
        entry.revoked_ms.get_or_insert(now_ms());
        self.shared.db.put_trust(&entry)?;
        self.shared.db.audit(None, None, "trust_revoke", &key)?;
        let why = format!("publisher {key} was revoked");
        for rec in self.shared.db.agents()? {
            if rec.publisher.eq_ignore_ascii_case(&key) {
                // An agent that failed to load has nothing running to kill.
                match self.kill_because(&rec.name, &why).await {
                    Ok(_) | Err(AgentError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                self.set_state(&rec.name, |r| {
                    r.state = AgentState::Stopped;
                    r.reason = Some(why.clone());
                })?;
            }
        }
        Ok(entry)
    }

    /// The trust store.
    pub fn trusted(&self) -> Result<Vec<TrustEntry>, AgentError> {
        Ok(self.shared.db.trust_list()?)
    }

    /// Verifies, compiles and installs a package (replacing an older version of the same
    /// agent from the same publisher), then starts it if `start`. See [`Runtime::install_with`].
    pub async fn install(&self, bytes: Vec<u8>, start: bool) -> Result<AgentInfo, AgentError> {
        self.install_with(bytes, start, false).await
    }

    /// Like [`Runtime::install`]; `force` (an administrator's explicit choice) also accepts a
    /// lower version than the installed one (the same version is always a reinstall). An agent
    /// name stays pinned to the publisher that installed it, with or without `force`: another
    /// publisher's package of that name is a conflict until the agent is uninstalled.
    pub async fn install_with(
        &self,
        bytes: Vec<u8>,
        start: bool,
        force: bool,
    ) -> Result<AgentInfo, AgentError> {
        let package = Package::parse(&bytes)?;
        let signer = package.verify_signature()?;
        self.shared.check_publisher(&signer)?;
        let name = &package.manifest.name;
        if let Some(prev) = self.shared.db.agent(name)? {
            if !prev.publisher.eq_ignore_ascii_case(&signer) {
                let who = match self.shared.db.trust(&prev.publisher)? {
                    Some(t) => format!("{} ({})", prev.publisher, t.name),
                    None => prev.publisher.clone(),
                };
                return Err(AgentError::Conflict(format!(
                    "agent {name:?} is installed from publisher {who}; a package signed by \
                     {signer} cannot replace it (its kv store, files and memory belong to the \
                     installed agent). Uninstall {name:?} first to install it from another \
                     publisher"
                )));
            }
            let new = &package.manifest.version;
            // The same version again is a reinstall (a development build, a changed
            // manifest); only a lower one is a downgrade.
            if version_key(new) < version_key(&prev.version) && !force {
                return Err(AgentError::Conflict(format!(
                    "agent {name:?} {} is installed and {new} is older: a downgrade needs \
                     force (administrators only)",
                    prev.version
                )));
            }
        }
        let s = self.shared.clone();
        let (loaded, package) =
            tokio::task::spawn_blocking(move || s.load(&bytes).map(|(l, _)| (l, bytes)))
                .await
                .map_err(|e| AgentError::Invalid(e.to_string()))??;
        let m = &loaded.manifest;
        let previous = self.shared.db.agent(&m.name)?;
        let record = AgentRecord {
            name: m.name.clone(),
            version: m.version.clone(),
            publisher: m.publisher.to_ascii_lowercase(),
            sha256: Package::parse(&package)?.component_sha256(),
            installed_ms: now_ms(),
            state: if start {
                AgentState::Running
            } else {
                AgentState::Stopped
            },
            restart: previous.as_ref().map(|p| p.restart).unwrap_or_default(),
            service: previous.as_ref().and_then(|p| p.service.clone()),
            priority: previous.as_ref().map(|p| p.priority).unwrap_or_default(),
            restarts: 0,
            reason: None,
        };
        self.shared.db.install(&record, &package)?;
        self.shared.db.audit(
            Some(&record.name),
            None,
            "install",
            &format!(
                "{} {} signed by {}{}",
                record.name,
                record.version,
                record.publisher,
                if force { " (forced)" } else { "" }
            ),
        )?;
        if let Some(old) = self
            .shared
            .agents
            .lock()
            .expect("agents lock")
            .insert(record.name.clone(), loaded)
        {
            old.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            old.idle.lock().expect("idle lock").clear();
        }
        if start && record.service.is_some() {
            self.shared.supervise(record.name.clone());
        }
        self.info(&record.name)
    }

    /// Removes an agent, its key-value store and checkpoint (running tasks are killed).
    pub async fn uninstall(&self, name: &str) -> Result<(), AgentError> {
        if self.shared.db.agent(name)?.is_none() {
            return Err(AgentError::NotFound(format!("no agent {name:?}")));
        }
        self.kill(name).await?;
        self.shared.agents.lock().expect("agents lock").remove(name);
        self.shared.db.uninstall(name)?;
        // Its private directory goes with it: a later agent of the same name starts empty.
        let files = self.shared.files_dir(name);
        if files.exists()
            && let Err(e) = std::fs::remove_dir_all(&files)
        {
            tracing::warn!(agent = %name, error = %e, "could not remove the agent's files");
        }
        self.shared.db.audit(Some(name), None, "uninstall", name)?;
        Ok(())
    }

    /// Every installed agent.
    pub fn list(&self) -> Result<Vec<AgentInfo>, AgentError> {
        let mut out = Vec::new();
        for rec in self.shared.db.agents()? {
            out.push(self.info(&rec.name)?);
        }
        Ok(out)
    }

    /// One installed agent.
    pub fn info(&self, name: &str) -> Result<AgentInfo, AgentError> {
        let record = self
            .shared
            .db
            .agent(name)?
            .ok_or_else(|| AgentError::NotFound(format!("no agent {name:?}")))?;
        let loaded = self.shared.loaded(name).ok();
        let manifest = match &loaded {
            Some(l) => (*l.manifest).clone(),
            None => {
                let bytes = self.shared.db.package(name)?.unwrap_or_default();
                Package::parse(&bytes)?.manifest
            }
        };
        Ok(AgentInfo {
            running: loaded
                .as_ref()
                .map(|l| l.running.lock().expect("lock").len())
                .unwrap_or(0),
            idle_instances: loaded
                .as_ref()
                .map(|l| l.idle.lock().expect("lock").len())
                .unwrap_or(0),
            checkpoint_ms: self.shared.db.checkpoint(name)?.map(|(ms, _)| ms),
            record,
            manifest,
        })
    }

    fn set_state(
        &self,
        name: &str,
        f: impl FnOnce(&mut AgentRecord),
    ) -> Result<AgentRecord, AgentError> {
        let mut rec = self
            .shared
            .db
            .agent(name)?
            .ok_or_else(|| AgentError::NotFound(format!("no agent {name:?}")))?;
        f(&mut rec);
        self.shared.db.put_agent(&rec)?;
        Ok(rec)
    }

    /// Starts an agent: it takes tasks; its service run (if any) starts under the supervisor.
    pub fn start(&self, name: &str, opts: StartOptions) -> Result<AgentInfo, AgentError> {
        let loaded = self.shared.loaded(name)?;
        if let Some(rec) = self.shared.db.agent(name)? {
            self.shared.check_publisher(&rec.publisher)?;
        }
        if let Some(s) = &opts.service
            && s.len() > 1 << 20
        {
            return Err(AgentError::Invalid("service input is over 1 MiB".into()));
        }
        let rec = self.set_state(name, |r| {
            r.state = AgentState::Running;
            r.restart = opts.restart;
            r.service = opts.service.clone();
            r.priority = opts.priority;
            r.restarts = 0;
            r.reason = None;
        })?;
        loaded.paused.send_replace(false);
        self.shared
            .db
            .audit(Some(name), None, "start", &format!("{:?}", rec.restart))?;
        if rec.service.is_some() {
            self.shared.supervise(name.to_string());
        }
        self.info(name)
    }

    /// Stops an agent: no new tasks, idle instances are dropped; running tasks finish.
    pub fn stop(&self, name: &str) -> Result<AgentInfo, AgentError> {
        let loaded = self.shared.loaded(name)?;
        self.set_state(name, |r| r.state = AgentState::Stopped)?;
        loaded
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        loaded.idle.lock().expect("idle lock").clear();
        loaded.paused.send_replace(false);
        self.shared.db.audit(Some(name), None, "stop", name)?;
        self.info(name)
    }

    /// Pauses an agent: running tasks are suspended at their next preemption point, new tasks
    /// queue until it is resumed.
    pub fn pause(&self, name: &str) -> Result<AgentInfo, AgentError> {
        self.switch_pause(name, AgentState::Running, AgentState::Paused, "pause")
    }

    /// Resumes a paused agent.
    pub fn resume(&self, name: &str) -> Result<AgentInfo, AgentError> {
        self.switch_pause(name, AgentState::Paused, AgentState::Running, "resume")
    }

    /// Moves an agent between running and paused, refusing any other starting state.
    fn switch_pause(
        &self,
        name: &str,
        from: AgentState,
        to: AgentState,
        event: &str,
    ) -> Result<AgentInfo, AgentError> {
        let loaded = self.shared.loaded(name)?;
        let rec = self
            .shared
            .db
            .agent(name)?
            .ok_or_else(|| AgentError::NotFound(name.into()))?;
        if rec.state != from {
            let want = if from == AgentState::Paused {
                "paused"
            } else {
                "running"
            };
            return Err(AgentError::Conflict(format!(
                "agent {name:?} is {:?}, not {want}",
                rec.state
            )));
        }
        self.set_state(name, |r| r.state = to)?;
        loaded.paused.send_replace(to == AgentState::Paused);
        self.shared.db.audit(Some(name), None, event, name)?;
        self.info(name)
    }

    /// Kills an agent: running tasks are aborted at once (their runs end `killed`), instances
    /// are dropped and the agent is stopped.
    pub async fn kill(&self, name: &str) -> Result<AgentInfo, AgentError> {
        self.kill_because(name, "killed by an operator").await
    }

    /// [`Runtime::kill`], with the reason the aborted runs will carry.
    async fn kill_because(&self, name: &str, reason: &str) -> Result<AgentInfo, AgentError> {
        let loaded = self.shared.loaded(name)?;
        self.set_state(name, |r| r.state = AgentState::Stopped)?;
        loaded
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        loaded.idle.lock().expect("idle lock").clear();
        let handles: Vec<_> = loaded.running.lock().expect("lock").drain().collect();
        {
            let mut cancels = self.shared.cancels.lock().expect("lock");
            for (id, _) in &handles {
                cancels
                    .entry(id.clone())
                    .or_insert_with(|| reason.to_string());
            }
        }
        for (_, h) in &handles {
            h.abort();
        }
        loaded.paused.send_replace(false);
        // Let aborted runs record their end before answering.
        for _ in 0..200 {
            if handles.iter().all(|(id, _)| {
                self.shared
                    .db
                    .run(id)
                    .ok()
                    .flatten()
                    .is_none_or(|r| !matches!(r.status, RunStatus::Queued | RunStatus::Running))
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.shared.db.audit(
            Some(name),
            None,
            "kill",
            &format!("{} runs aborted", handles.len()),
        )?;
        self.info(name)
    }

    /// Stores the agent's snapshot durably; it is restored into every new instance, also
    /// after a restart of the appliance.
    pub async fn checkpoint(&self, name: &str) -> Result<u64, AgentError> {
        let loaded = self.shared.loaded(name)?;
        let _permit = loaded
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AgentError::Conflict("agent is shutting down".into()))?;
        let mut inst = self.shared.instance(name, &loaded).await?;
        inst.store
            .set_fuel(loaded.manifest.limits.fuel_per_task)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        inst.store.data_mut().run = RunCtx {
            id: format!("checkpoint-{name}"),
            max_host_calls: loaded.manifest.limits.host_calls_per_task,
            ..Default::default()
        };
        let wall = Duration::from_millis(loaded.manifest.limits.wall_time_ms);
        let snap = tokio::time::timeout(wall, inst.agent.call_snapshot(&mut inst.store))
            .await
            .map_err(|_| AgentError::Conflict("snapshot ran out of time".into()))?
            .map_err(|e| AgentError::Conflict(format!("snapshot failed: {}", trap_reason(&e))))?;
        let Some(state) = snap else {
            self.shared.put_back(&loaded, inst);
            return Err(AgentError::Conflict(format!(
                "agent {name:?} keeps no checkpoints"
            )));
        };
        if state.len() > 16 << 20 {
            return Err(AgentError::Invalid("snapshot is over 16 MiB".into()));
        }
        let ms = self.shared.db.put_checkpoint(name, &state)?;
        *loaded.checkpoint.lock().expect("checkpoint lock") = Some(Arc::new(state.clone()));
        self.shared.put_back(&loaded, inst);
        self.shared.db.audit(
            Some(name),
            None,
            "checkpoint",
            &format!("{} bytes", state.len()),
        )?;
        Ok(ms)
    }

    /// Runs a task and waits for its end.
    pub async fn run(
        &self,
        agent: &str,
        input: String,
        priority: Option<Priority>,
    ) -> Result<RunRecord, AgentError> {
        self.shared
            .clone()
            .run_task(agent, input, None, Vec::new(), priority)
            .await
    }

    /// Prepares a task: its run id at once, and the future that queues, runs and records it.
    pub(crate) fn start_run(
        &self,
        agent: &str,
        input: String,
    ) -> Result<(String, BoxFuture<'static, RunRecord>), AgentError> {
        self.shared
            .clone()
            .prepare(agent, input, None, Vec::new(), None)
    }

    /// Asks a queued or running run to end now: its task is aborted (the instance goes with
    /// it) and the run ends `killed` with `reason`. Returns at once; see [`Runtime::cancel_run`].
    pub(crate) fn abort_run(&self, id: &str, agent: &str, reason: &str) {
        self.shared
            .cancels
            .lock()
            .expect("lock")
            .insert(id.to_string(), reason.to_string());
        if let Ok(loaded) = self.shared.loaded(agent)
            && let Some(h) = loaded.running.lock().expect("lock").get(id)
        {
            h.abort();
        }
    }

    /// Cancels one queued or running run and waits (up to 2 s) for its end to be recorded.
    /// A run that already ended is a conflict.
    pub async fn cancel_run(&self, id: &str, reason: &str) -> Result<RunRecord, AgentError> {
        let run = self.run_record(id)?;
        if !matches!(run.status, RunStatus::Queued | RunStatus::Running) {
            return Err(AgentError::Conflict(format!(
                "run {id} already ended ({})",
                state_name(run.status)
            )));
        }
        self.abort_run(id, &run.agent, reason);
        for _ in 0..200 {
            let r = self.run_record(id)?;
            if !matches!(r.status, RunStatus::Queued | RunStatus::Running) {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.run_record(id)
    }

    /// Makes a workflow run in progress cancellable by id.
    pub(crate) fn register_workflow(&self, id: &str, c: Arc<crate::workflow::Cancel>) {
        self.shared
            .workflows
            .lock()
            .expect("lock")
            .insert(id.to_string(), c);
    }

    /// Forgets a finished workflow run.
    pub(crate) fn unregister_workflow(&self, id: &str) {
        self.shared.workflows.lock().expect("lock").remove(id);
    }

    /// The cancellation of a workflow run in progress in this process.
    pub(crate) fn workflow_cancel(&self, id: &str) -> Option<Arc<crate::workflow::Cancel>> {
        self.shared.workflows.lock().expect("lock").get(id).cloned()
    }

    /// Queues a task; returns its run id at once.
    pub fn submit(
        &self,
        agent: &str,
        input: String,
        priority: Option<Priority>,
    ) -> Result<String, AgentError> {
        let (id, fut) = self
            .shared
            .clone()
            .prepare(agent, input, None, Vec::new(), priority)?;
        tokio::spawn(fut);
        Ok(id)
    }

    /// Sends a message to a running agent from an operator or workflow.
    pub async fn send(
        &self,
        to: &str,
        from: &str,
        body: String,
    ) -> Result<Option<String>, AgentError> {
        self.shared
            .deliver(from, &[], to, body)
            .await
            .map_err(|e| match e {
                HostError::Unavailable(m) => AgentError::NotFound(m),
                HostError::Invalid(m) => AgentError::Invalid(m),
                HostError::Quota(m) => AgentError::Quota(m),
                other => AgentError::Conflict(other.to_string()),
            })
    }

    /// A run.
    pub fn run_record(&self, id: &str) -> Result<RunRecord, AgentError> {
        self.shared
            .db
            .run(id)?
            .ok_or_else(|| AgentError::NotFound(format!("no run {id:?}")))
    }

    /// Newest runs first.
    pub fn runs(&self, agent: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, AgentError> {
        Ok(self.shared.db.runs(agent, limit)?)
    }

    /// Newest audit entries first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, AgentError> {
        Ok(self.shared.db.audit_log(limit)?)
    }

    /// The runtime's tables (for the workflow engine).
    pub(crate) fn db(&self) -> &Db {
        &self.shared.db
    }

    /// The appliance's services (for the workflow engine's judges).
    pub(crate) fn services(&self) -> &Arc<dyn Services> {
        &self.shared.services
    }

    /// Instantiates an agent `n` times and keeps the instances idle (for benchmarks and
    /// warm-up); returns how many were created.
    pub async fn prewarm(&self, name: &str, n: usize) -> Result<usize, AgentError> {
        let loaded = self.shared.loaded(name)?;
        let mut made = Vec::with_capacity(n);
        for _ in 0..n {
            made.push(self.shared.instance(name, &loaded).await?);
        }
        let count = made.len();
        loaded.idle.lock().expect("idle lock").extend(made);
        Ok(count)
    }

    /// Time to instantiate one fresh instance of an installed agent (for benchmarks).
    pub async fn instantiate_once(&self, name: &str) -> Result<Duration, AgentError> {
        let loaded = self.shared.loaded(name)?;
        let t = std::time::Instant::now();
        let inst = self.shared.instance(name, &loaded).await?;
        let d = t.elapsed();
        drop(inst);
        Ok(d)
    }
}

/// A `MAJOR.MINOR.PATCH` version as numbers (the manifest has checked the form).
fn version_key(v: &str) -> (u64, u64, u64) {
    let mut it = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

impl Shared {
    /// Refuses a publisher that is not (or no longer) in the trust store.
    fn check_publisher(&self, publisher: &str) -> Result<(), AgentError> {
        let key = publisher.to_ascii_lowercase();
        match self.db.trust(&key)? {
            None => Err(PackageError::UnknownPublisher(key).into()),
            Some(t) if t.revoked_ms.is_some() => Err(PackageError::Revoked(key).into()),
            Some(_) => Ok(()),
        }
    }

    /// The agent's private directory (`/data` in the guest when `files` is granted).
    fn files_dir(&self, name: &str) -> PathBuf {
        self.config.data_dir.join("agents").join("files").join(name)
    }

    fn loaded(&self, name: &str) -> Result<Arc<Loaded>, AgentError> {
        self.agents
            .lock()
            .expect("agents lock")
            .get(name)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("no agent {name:?}")))
    }

    /// Parses, compiles (or loads from the cache) and type-checks a package.
    fn load(&self, bytes: &[u8]) -> Result<(Arc<Loaded>, ()), AgentError> {
        let package = Package::parse(bytes)?;
        let sha = package.component_sha256();
        let component = self
            .cache
            .load(&self.engine, &sha, &package.component)
            .map_err(|e| AgentError::World(format!("not a valid WebAssembly component: {e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| AgentError::World(format!("{e:#}")))?;
        let pre = AgentPre::new(pre).map_err(|e| AgentError::World(format!("{e:#}")))?;
        let m = package.manifest;
        let checkpoint = self
            .db
            .checkpoint(&m.name)?
            .map(|(_, state)| Arc::new(state));
        let files = m.capabilities.files.then(|| self.files_dir(&m.name));
        let files_quota = files
            .clone()
            .map(|dir| crate::files::FilesQuota::new(dir, m.limits.files_bytes));
        Ok((
            Arc::new(Loaded {
                slots: Arc::new(Semaphore::new(m.limits.instances as usize)),
                manifest: Arc::new(m),
                pre,
                idle: Mutex::new(Vec::new()),
                paused: watch::channel(false).0,
                generation: std::sync::atomic::AtomicU64::new(0),
                running: Mutex::new(HashMap::new()),
                files,
                files_quota,
                checkpoint: Mutex::new(checkpoint),
            }),
            (),
        ))
    }

    /// An idle instance, or a new one (restored from the checkpoint if there is one).
    async fn instance(&self, name: &str, loaded: &Arc<Loaded>) -> Result<Instance, AgentError> {
        let generation = loaded.generation.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            let Some(inst) = loaded.idle.lock().expect("idle lock").pop() else {
                break;
            };
            if inst.generation == generation {
                return Ok(inst);
            }
        }
        let m = &loaded.manifest;
        let stdio = MemoryOutputPipe::new(MAX_STDIO);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdio.clone())
            .stderr(stdio.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        if let Some(dir) = &loaded.files {
            std::fs::create_dir_all(dir).map_err(|e| AgentError::Invalid(format!("files: {e}")))?;
            wasi.preopened_dir(dir, "/data", FsPerms::ReadWrite)
                .map_err(|e| AgentError::Invalid(format!("files: {e:#}")))?;
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size((m.limits.memory_mb as usize) << 20)
                .trap_on_grow_failure(true)
                .build(),
            manifest: m.clone(),
            services: self.services.clone(),
            peers: self.me.clone() as Weak<dyn Peers>,
            db: self.db.clone(),
            run: RunCtx {
                id: format!("instantiate-{name}"),
                max_host_calls: m.limits.host_calls_per_task,
                ..Default::default()
            },
            stdio,
            stdio_seen: 0,
            files_quota: loaded.files_quota.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(m.limits.fuel_per_task)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        let paused = loaded.paused.subscribe();
        store.epoch_deadline_callback(move |_| {
            if *paused.borrow() {
                let mut rx = paused.clone();
                return Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(async move {
                        while *rx.borrow_and_update() {
                            if rx.changed().await.is_err() {
                                break;
                            }
                        }
                    }),
                ));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        let agent = loaded
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| {
                AgentError::Conflict(format!("instantiation failed: {}", trap_reason(&e)))
            })?;
        let checkpoint = loaded.checkpoint.lock().expect("checkpoint lock").clone();
        if let Some(state) = checkpoint {
            match agent.call_restore(&mut store, &state).await {
                Ok(Ok(())) => {}
                Ok(Err(m)) => {
                    return Err(AgentError::Conflict(format!(
                        "restoring the checkpoint failed: {m}"
                    )));
                }
                Err(e) => {
                    return Err(AgentError::Conflict(format!(
                        "restoring the checkpoint trapped: {}",
                        trap_reason(&e)
                    )));
                }
            }
        }
        Ok(Instance {
            store,
            agent,
            generation,
        })
    }

    fn put_back(&self, loaded: &Loaded, inst: Instance) {
        if inst.generation == loaded.generation.load(std::sync::atomic::Ordering::SeqCst) {
            loaded.idle.lock().expect("idle lock").push(inst);
        }
    }

    /// Checks state and quotas, writes the queued run, and returns the future that executes it.
    fn prepare(
        self: Arc<Self>,
        agent: &str,
        input: String,
        parent: Option<String>,
        ancestry: Vec<String>,
        priority: Option<Priority>,
    ) -> Result<(String, BoxFuture<'static, RunRecord>), AgentError> {
        if input.len() > 4 << 20 {
            return Err(AgentError::Invalid("task input is over 4 MiB".into()));
        }
        let rec = self
            .db
            .agent(agent)?
            .ok_or_else(|| AgentError::NotFound(format!("no agent {agent:?}")))?;
        let loaded = self.loaded(agent)?;
        let mut run = RunRecord {
            id: new_run_id(),
            agent: agent.to_string(),
            version: rec.version.clone(),
            status: RunStatus::Queued,
            input,
            output: None,
            error: None,
            parent,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            usage: Usage::default(),
            logs: Vec::new(),
            logs_dropped: 0,
            spans: Vec::new(),
            spans_dropped: 0,
        };
        let refuse = |run: &mut RunRecord, why: String| -> Result<(), AgentError> {
            run.status = RunStatus::Refused;
            run.error = Some(why);
            run.finished_ms = Some(now_ms());
            self.db.put_run(run, true)?;
            self.services.event(
                "agent.run",
                &run.agent,
                &format!(
                    "run {} refused: {}",
                    run.id,
                    run.error.as_deref().unwrap_or("")
                ),
            );
            Ok(())
        };
        if let Err(e) = self.check_publisher(&rec.publisher) {
            refuse(&mut run, format!("{e}: its agents cannot run"))?;
            return Err(e);
        }
        if matches!(rec.state, AgentState::Stopped | AgentState::Failed) {
            let why = format!(
                "agent {agent:?} is {}; start it first",
                match rec.state {
                    AgentState::Failed => "failed",
                    _ => "stopped",
                }
            );
            refuse(&mut run, why.clone())?;
            return Err(AgentError::Conflict(why));
        }
        let l = &loaded.manifest.limits;
        let hour = now_ms() / 3_600_000;
        let (tokens, _) = self.db.usage_since(agent, hour)?;
        let (_, cost) = self.db.usage_since(agent, hour.saturating_sub(23))?;
        let over = if tokens >= l.tokens_per_hour
            && l.tokens_per_hour > 0
            && loaded.manifest.capabilities.llm
        {
            Some(format!(
                "quota: {tokens} of {} tokens this hour are used",
                l.tokens_per_hour
            ))
        } else if l.cost_per_day_usd > 0.0 && cost >= l.cost_per_day_usd {
            Some(format!(
                "quota: ${cost:.4} of the ${:.4} daily budget is spent",
                l.cost_per_day_usd
            ))
        } else {
            None
        };
        if let Some(why) = over {
            refuse(&mut run, why.clone())?;
            return Err(AgentError::Quota(why));
        }
        self.db.put_run(&run, false)?;
        let id = run.id.clone();
        let priority = priority.unwrap_or(rec.priority);
        let me = self.clone();
        let fut: BoxFuture<'static, RunRecord> = Box::pin(async move {
            let run_id = run.id.clone();
            let exec_me = me.clone();
            let exec_loaded = loaded.clone();
            let mut exec_run = run.clone();
            let handle = tokio::spawn(async move {
                exec_me
                    .execute(&exec_loaded, &mut exec_run, ancestry, priority)
                    .await;
                exec_run
            });
            loaded
                .running
                .lock()
                .expect("lock")
                .insert(run_id.clone(), handle.abort_handle());
            // A cancel that came before the task was registered.
            if me.cancels.lock().expect("lock").contains_key(&run_id) {
                handle.abort();
            }
            let result = handle.await;
            loaded.running.lock().expect("lock").remove(&run_id);
            let reason = me.cancels.lock().expect("lock").remove(&run_id);
            let mut finished = match result {
                Ok(r) => r,
                Err(_) => {
                    // Aborted by kill or cancel: the instance went with the task.
                    let mut r = me.db.run(&run_id).ok().flatten().unwrap_or(run);
                    r.status = RunStatus::Killed;
                    r.error = Some(reason.unwrap_or_else(|| "killed by an operator".into()));
                    r
                }
            };
            finished.finished_ms = Some(now_ms());
            if let Err(e) = me.db.put_run(&finished, true) {
                tracing::error!(run = %finished.id, error = %e, "could not store a finished run");
            }
            let took = finished
                .finished_ms
                .unwrap_or(0)
                .saturating_sub(finished.started_ms.unwrap_or(finished.created_ms));
            let status = state_name(finished.status);
            let mut message = format!("run {} {status} in {took} ms", finished.id);
            if let Some(e) = &finished.error {
                message.push_str(&format!(": {e}"));
            }
            me.services.event("agent.run", &finished.agent, &message);
            finished
        });
        Ok((id, fut))
    }

    fn run_task(
        self: Arc<Self>,
        agent: &str,
        input: String,
        parent: Option<String>,
        ancestry: Vec<String>,
        priority: Option<Priority>,
    ) -> BoxFuture<'static, Result<RunRecord, AgentError>> {
        let prepared = self.prepare(agent, input, parent, ancestry, priority);
        Box::pin(async move {
            let (_, fut) = prepared?;
            Ok(fut.await)
        })
    }

    /// Executes a prepared run: slot, instance, fuel, wall time, result.
    async fn execute(
        &self,
        loaded: &Arc<Loaded>,
        run: &mut RunRecord,
        ancestry: Vec<String>,
        priority: Priority,
    ) {
        let Ok(_permit) = loaded.slots.clone().acquire_owned().await else {
            run.status = RunStatus::Failed;
            run.error = Some("the agent was removed".into());
            return;
        };
        // Subtasks run inside their parent's slot, so a chain cannot deadlock the scheduler.
        let _slot = if ancestry.is_empty() {
            Some(self.sched.acquire(priority).await)
        } else {
            None
        };
        // A paused agent's new tasks wait here.
        let mut paused = loaded.paused.subscribe();
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                break;
            }
        }
        // Credit files the agent deleted or truncated since the last count.
        if let Some(q) = loaded.files_quota.clone() {
            let _ = tokio::task::spawn_blocking(move || q.recount()).await;
        }
        run.status = RunStatus::Running;
        run.started_ms = Some(now_ms());
        let _ = self.db.put_run(run, false);
        self.services
            .event("agent.run", &run.agent, &format!("run {} started", run.id));
        let mut inst = match self.instance(&run.agent, loaded).await {
            Ok(i) => i,
            Err(e) => {
                run.status = RunStatus::Failed;
                run.error = Some(e.to_string());
                return;
            }
        };
        let m = &loaded.manifest;
        let fuel = m.limits.fuel_per_task;
        let _ = inst.store.set_fuel(fuel);
        inst.store.data_mut().run = RunCtx {
            id: run.id.clone(),
            ancestry,
            max_host_calls: m.limits.host_calls_per_task,
            ..Default::default()
        };
        let task = crate::host::cairn::agent::types::Task {
            id: run.id.clone(),
            input: run.input.clone(),
        };
        let wall = Duration::from_millis(m.limits.wall_time_ms);
        let outcome = tokio::time::timeout(wall, inst.agent.call_run(&mut inst.store, &task)).await;
        let used = fuel.saturating_sub(inst.store.get_fuel().unwrap_or(0));
        let keep = match outcome {
            Ok(Ok(Ok(out))) => {
                run.status = RunStatus::Succeeded;
                run.output = Some(out);
                true
            }
            Ok(Ok(Err(reason))) => {
                run.status = RunStatus::Failed;
                run.error = Some(reason);
                true
            }
            Ok(Err(trap)) => {
                run.status = RunStatus::Failed;
                run.error = Some(trap_reason(&trap));
                false
            }
            Err(_) => {
                run.status = RunStatus::Failed;
                run.error = Some(format!(
                    "wall time: the task ran longer than {} ms",
                    m.limits.wall_time_ms
                ));
                false
            }
        };
        let data = inst.store.data_mut();
        data.drain_stdio();
        let ctx = std::mem::take(&mut data.run);
        run.usage = Usage {
            fuel: used,
            ..ctx.usage
        };
        run.logs = ctx.logs;
        run.logs_dropped = ctx.logs_dropped;
        run.spans = ctx.spans;
        run.spans_dropped = ctx.spans_dropped;
        if keep {
            self.put_back(loaded, inst);
        }
    }

    /// Delivers a message to `to`'s handler.
    async fn deliver(
        &self,
        from: &str,
        ancestry: &[String],
        to: &str,
        body: String,
    ) -> Result<Option<String>, HostError> {
        if ancestry.len() >= MAX_DEPTH || ancestry.iter().any(|a| a == to) {
            return Err(HostError::Invalid(format!(
                "message to {to:?} would form a cycle or go deeper than {MAX_DEPTH}"
            )));
        }
        if body.len() > 1 << 20 {
            return Err(HostError::Invalid("message is over 1 MiB".into()));
        }
        let rec = self
            .db
            .agent(to)
            .map_err(|e| HostError::Failed(e.to_string()))?
            .ok_or_else(|| HostError::Unavailable(format!("no agent {to:?}")))?;
        if rec.state != AgentState::Running {
            return Err(HostError::Unavailable(format!(
                "agent {to:?} is not running"
            )));
        }
        self.check_publisher(&rec.publisher)
            .map_err(|e| HostError::Unavailable(format!("agent {to:?}: {e}")))?;
        let loaded = self
            .loaded(to)
            .map_err(|e| HostError::Unavailable(e.to_string()))?;
        let _permit = loaded
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HostError::Unavailable(format!("agent {to:?} was removed")))?;
        let mut inst = self
            .instance(to, &loaded)
            .await
            .map_err(|e| HostError::Failed(e.to_string()))?;
        let m = &loaded.manifest;
        let _ = inst.store.set_fuel(m.limits.fuel_per_task);
        inst.store.data_mut().run = RunCtx {
            id: format!("message-from-{from}"),
            ancestry: ancestry.to_vec(),
            max_host_calls: m.limits.host_calls_per_task,
            ..Default::default()
        };
        let wall = Duration::from_millis(m.limits.wall_time_ms);
        match tokio::time::timeout(
            wall,
            inst.agent.call_on_message(&mut inst.store, from, &body),
        )
        .await
        {
            Ok(Ok(Ok(reply))) => {
                self.put_back(&loaded, inst);
                Ok(reply)
            }
            Ok(Ok(Err(reason))) => {
                self.put_back(&loaded, inst);
                Err(HostError::Failed(format!(
                    "{to} refused the message: {reason}"
                )))
            }
            Ok(Err(trap)) => Err(HostError::Failed(format!(
                "{to} trapped handling the message: {}",
                trap_reason(&trap)
            ))),
            Err(_) => Err(HostError::Failed(format!(
                "{to} did not answer within its wall time"
            ))),
        }
    }

    /// Keeps an agent's service run going under its restart policy.
    fn supervise(&self, name: String) {
        let Some(me) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Ok(Some(rec)) = me.db.agent(&name) else {
                    return;
                };
                let (AgentState::Running | AgentState::Paused) = rec.state else {
                    return;
                };
                let Some(input) = rec.service.clone() else {
                    return;
                };
                let started = std::time::Instant::now();
                let outcome = me
                    .clone()
                    .run_task(&name, input, None, Vec::new(), None)
                    .await;
                let failed = !matches!(&outcome, Ok(r) if r.status == RunStatus::Succeeded);
                let Ok(Some(mut rec)) = me.db.agent(&name) else {
                    return;
                };
                if !matches!(rec.state, AgentState::Running | AgentState::Paused) {
                    return;
                }
                if matches!(&outcome, Ok(r) if r.status == RunStatus::Killed) {
                    return;
                }
                let restart = match rec.restart {
                    Restart::Never => false,
                    Restart::OnFailure => failed,
                    Restart::Always => true,
                };
                if !restart {
                    if failed && rec.restart == Restart::Never {
                        rec.state = AgentState::Failed;
                        rec.reason = Some(match &outcome {
                            Ok(r) => r.error.clone().unwrap_or_default(),
                            Err(e) => e.to_string(),
                        });
                        let _ = me.db.put_agent(&rec);
                    }
                    return;
                }
                if started.elapsed() > Duration::from_secs(30) || !failed {
                    backoff = Duration::from_millis(100);
                }
                rec.restarts += 1;
                let _ = me.db.put_agent(&rec);
                let _ = me.db.audit(
                    Some(&name),
                    None,
                    "restart",
                    &format!("restart {} after {:?}", rec.restarts, backoff),
                );
                // Jitter keeps many failing agents from restarting in lockstep.
                let jitter = Duration::from_millis(u64::from(now_ms() as u32 % 50));
                tokio::time::sleep(backoff + jitter).await;
                if failed {
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        });
    }
}

impl Peers for Shared {
    fn send<'a>(
        &'a self,
        from: &'a str,
        ancestry: &'a [String],
        to: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<Option<String>, HostError>> {
        Box::pin(self.deliver(from, ancestry, to, body))
    }

    fn spawn<'a>(
        &'a self,
        parent: &'a str,
        ancestry: &'a [String],
        agent: &'a str,
        input: String,
    ) -> BoxFuture<'a, Result<String, HostError>> {
        Box::pin(async move {
            if ancestry.len() >= MAX_DEPTH || ancestry.iter().any(|a| a == agent) {
                return Err(HostError::Invalid(format!(
                    "a subtask on {agent:?} would form a cycle or go deeper than {MAX_DEPTH}"
                )));
            }
            let me = self
                .me
                .upgrade()
                .ok_or_else(|| HostError::Unavailable("runtime stopped".into()))?;
            let run = me
                .run_task(
                    agent,
                    input,
                    Some(parent.to_string()),
                    ancestry.to_vec(),
                    None,
                )
                .await
                .map_err(|e| match e {
                    AgentError::NotFound(m) | AgentError::Conflict(m) => HostError::Unavailable(m),
                    AgentError::Quota(m) => HostError::Quota(m),
                    other => HostError::Failed(other.to_string()),
                })?;
            match run.status {
                RunStatus::Succeeded => Ok(run.output.unwrap_or_default()),
                _ => Err(HostError::Failed(format!(
                    "subtask {} on {agent} ended {:?}: {}",
                    run.id,
                    run.status,
                    run.error.unwrap_or_default()
                ))),
            }
        })
    }
}

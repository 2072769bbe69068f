//! The runtime's tables in the appliance's redb file (all named `agent_*`, owned here):
//! trusted publishers, installed packages and their desired state, runs, private key-value
//! stores, checkpoints, usage and the audit log. Every write is one durable transaction.

use crate::workflow::{StoredWorkflow, WorkflowRun, WorkflowStatus};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Publisher key → trust entry (JSON).
pub const TRUST: TableDefinition<&str, &str> = TableDefinition::new("agent_trust");
/// Agent name → its signed package.
pub const PACKAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("agent_packages");
/// Agent name → installed agent (JSON: version, desired state).
pub const AGENTS: TableDefinition<&str, &str> = TableDefinition::new("agent_agents");
/// Run id → run (JSON).
pub const RUNS: TableDefinition<&str, &str> = TableDefinition::new("agent_runs");
/// (agent, key) → value of the agent's key-value store.
pub const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("agent_kv");
/// Agent → bytes (keys plus values) its key-value store holds.
pub const KV_BYTES: TableDefinition<&str, u64> = TableDefinition::new("agent_kv_bytes");
/// Agent name → its last checkpoint.
pub const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agent_checkpoints");
/// (agent, hour) → (calls, cost).
pub const USAGE: TableDefinition<(&str, u64), (u64, f64)> = TableDefinition::new("agent_usage");
/// Sequence → audit entry (JSON).
pub const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("agent_audit");
/// Workflow run id → run (JSON).
pub const WORKFLOW_RUNS: TableDefinition<&str, &str> = TableDefinition::new("agent_workflow_runs");
/// Workflow name → stored definition (JSON).
pub const WORKFLOWS: TableDefinition<&str, &str> = TableDefinition::new("agent_workflows");

/// Bytes of keys and values an agent's store holds, counted from the store itself (for stores
/// written before the running total was kept).
fn kv_usage<T: ReadableTable<(&'static str, &'static str), &'static [u8]>>(
    t: &T,
    agent: &str,
) -> Result<u64, DbError> {
    let mut total = 0u64;
    for item in t.range((agent, "")..(agent, "\u{10FFFF}")).map_err(e)? {
        let (k, v) = item.map_err(e)?;
        total += (k.value().1.len() + v.value().len()) as u64;
    }
    Ok(total)
}

/// Most runs kept; the oldest are dropped beyond this.
pub const MAX_RUNS: usize = 20_000;
/// Largest value in an agent's key-value store.
pub const MAX_KV_VALUE: usize = 1 << 20;
/// Most keys in one agent's key-value store.
pub const MAX_KV_KEYS: usize = 10_000;

/// A trusted publisher key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrustEntry {
    /// Ed25519 public key, hex.
    pub key: String,
    /// A name for people.
    pub name: String,
    /// When it was added (ms since the epoch).
    pub added_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// What the supervisor does when a service run ends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Never restart.
    #[default]
    Never,
    /// Restart after a failure, with exponential backoff.
    OnFailure,
    /// Restart whenever the run ends.
    Always,
}

/// Desired state of an installed agent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    /// Installed, takes no tasks.
    Stopped,
    /// Takes tasks.
    Running,
    /// Running tasks are suspended; new ones queue.
    Paused,
    /// Stopped by the supervisor after failures.
    Failed,
}

/// Scheduling priority.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Interactive work.
    High,
}

/// An installed agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentRecord {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Publisher key.
    pub publisher: String,
    /// Component SHA-256.
    pub sha256: String,
    /// Installed at (ms).
    pub installed_ms: u64,
    /// Desired state.
    pub state: AgentState,
    /// Restart policy for its service run.
    #[serde(default)]
    pub restart: Restart,
    /// Input of the long-lived service run, if it has one.
    #[serde(default)]
    pub service: Option<String>,
    /// Scheduling priority of its runs.
    #[serde(default)]
    pub priority: Priority,
    /// Restarts done by the supervisor since the last start.
    #[serde(default)]
    pub restarts: u32,
    /// Why the supervisor gave up, for `failed`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Status of a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Waiting for a slot.
    Queued,
    /// Executing.
    Running,
    /// Returned a result.
    Succeeded,
    /// Returned an error, trapped, or ran out of fuel, time or memory.
    Failed,
    /// Killed by an operator.
    Killed,
    /// Refused before it started (quota, state).
    Refused,
    /// Interrupted by a restart of the appliance.
    Interrupted,
}

/// Resources a run used.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// Fuel consumed.
    pub fuel: u64,
    /// Host calls made.
    pub host_calls: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cost, US dollars.
    pub cost_usd: f64,
    /// Models that answered the run's chats, in first-use order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

/// One log line of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    /// Time (ms).
    pub ms: u64,
    /// Level.
    pub level: String,
    /// Text.
    pub message: String,
}

/// One timed host call of a run (the run's trace).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Span {
    /// The import called (`llm.chat`, `memory.recall`, `http.fetch`, ...).
    pub name: String,
    /// What it was about (model, namespace, URL, agent).
    pub detail: String,
    /// Start (ms since the epoch).
    pub start_ms: u64,
    /// End (ms since the epoch).
    pub end_ms: u64,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A run: one task on one agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// Run id (time-ordered).
    pub id: String,
    /// Agent name.
    pub agent: String,
    /// Agent version.
    pub version: String,
    /// Status.
    pub status: RunStatus,
    /// Input.
    pub input: String,
    /// Output, for `succeeded`.
    pub output: Option<String>,
    /// Why it failed or was refused.
    pub error: Option<String>,
    /// Parent run, for subtasks.
    pub parent: Option<String>,
    /// Created (ms).
    pub created_ms: u64,
    /// Started (ms).
    pub started_ms: Option<u64>,
    /// Finished (ms).
    pub finished_ms: Option<u64>,
    /// Usage.
    pub usage: Usage,
    /// Log lines (capped).
    pub logs: Vec<LogLine>,
    /// Log lines dropped over the cap.
    pub logs_dropped: u64,
    /// Host calls, timed (capped like the logs).
    #[serde(default)]
    pub spans: Vec<Span>,
    /// Spans dropped over the cap.
    #[serde(default)]
    pub spans_dropped: u64,
}

/// One audit entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Sequence number.
    pub seq: u64,
    /// Time (ms).
    pub ms: u64,
    /// Agent, if any.
    pub agent: Option<String>,
    /// Run, if any.
    pub run: Option<String>,
    /// What happened (`capability_denied`, `install`, `trust`, ...).
    pub event: String,
    /// Details.
    pub detail: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A storage failure of the agents' tables, with its typed cause.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database failed.
    #[error("agent store: {0}")]
    Database(#[source] Box<redb::Error>),
    /// A stored row could not be encoded or decoded.
    #[error("agent store: a stored row: {0}")]
    Encoding(#[source] serde_json::Error),
}

/// The causes a [`DbError`] is made from.
trait Cause {
    fn into_db(self) -> DbError;
}

impl Cause for serde_json::Error {
    fn into_db(self) -> DbError {
        DbError::Encoding(self)
    }
}

macro_rules! redb_causes {
    ($($t:ty),*) => {$(
        impl Cause for $t {
            fn into_db(self) -> DbError {
                DbError::Database(Box::new(self.into()))
            }
        }
    )*};
}
redb_causes!(
    redb::Error,
    redb::DatabaseError,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn e<E: Cause>(x: E) -> DbError {
    x.into_db()
}

/// Typed access to the runtime's tables.
#[derive(Clone)]
pub struct Db {
    db: Arc<Database>,
}

impl Db {
    /// Opens the tables (creating them) in `db`.
    pub fn open(db: Arc<Database>) -> Result<Db, DbError> {
        let w = db.begin_write().map_err(e)?;
        {
            w.open_table(TRUST).map_err(e)?;
            w.open_table(PACKAGES).map_err(e)?;
            w.open_table(AGENTS).map_err(e)?;
            w.open_table(RUNS).map_err(e)?;
            w.open_table(KV).map_err(e)?;
            w.open_table(KV_BYTES).map_err(e)?;
            w.open_table(CHECKPOINTS).map_err(e)?;
            w.open_table(USAGE).map_err(e)?;
            w.open_table(AUDIT).map_err(e)?;
            w.open_table(WORKFLOW_RUNS).map_err(e)?;
            w.open_table(WORKFLOWS).map_err(e)?;
        }
        w.commit().map_err(e)?;
        Ok(Db { db })
    }

    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
    ) -> Result<Option<T>, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(table).map_err(e)?;
        match t.get(key).map_err(e)? {
            Some(v) => Ok(Some(serde_json::from_str(v.value()).map_err(e)?)),
            None => Ok(None),
        }
    }

    fn list_json<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &str>,
    ) -> Result<Vec<T>, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(table).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (_, v) = item.map_err(e)?;
            out.push(serde_json::from_str(v.value()).map_err(e)?);
        }
        Ok(out)
    }

    fn put_json<T: Serialize>(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), DbError> {
        let json = serde_json::to_string(value).map_err(e)?;
        let mut w = self.db.begin_write().map_err(e)?;
        if !durable {
            w.set_durability(Durability::None).map_err(e)?;
        }
        w.open_table(table)
            .map_err(e)?
            .insert(key, json.as_str())
            .map_err(e)?;
        w.commit().map_err(e)
    }

    /// A trusted key.
    pub fn trust(&self, key: &str) -> Result<Option<TrustEntry>, DbError> {
        self.get_json(TRUST, key)
    }
    /// Every trusted (or revoked) key.
    pub fn trust_list(&self) -> Result<Vec<TrustEntry>, DbError> {
        self.list_json(TRUST)
    }
    /// Adds or updates a key.
    pub fn put_trust(&self, t: &TrustEntry) -> Result<(), DbError> {
        self.put_json(TRUST, &t.key, t, true)
    }

    /// An installed agent.
    pub fn agent(&self, name: &str) -> Result<Option<AgentRecord>, DbError> {
        self.get_json(AGENTS, name)
    }
    /// Every installed agent.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, DbError> {
        self.list_json(AGENTS)
    }
    /// Updates an agent's record.
    pub fn put_agent(&self, a: &AgentRecord) -> Result<(), DbError> {
        self.put_json(AGENTS, &a.name, a, true)
    }
    /// Installs (or replaces) a package and its record in one transaction.
    pub fn install(&self, a: &AgentRecord, package: &[u8]) -> Result<(), DbError> {
        let json = serde_json::to_string(a).map_err(e)?;
        let w = self.db.begin_write().map_err(e)?;
        w.open_table(PACKAGES)
            .map_err(e)?
            .insert(a.name.as_str(), package)
            .map_err(e)?;
        w.open_table(AGENTS)
            .map_err(e)?
            .insert(a.name.as_str(), json.as_str())
            .map_err(e)?;
        w.commit().map_err(e)
    }
    /// An installed package's bytes.
    pub fn package(&self, name: &str) -> Result<Option<Vec<u8>>, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(PACKAGES).map_err(e)?;
        Ok(t.get(name).map_err(e)?.map(|v| v.value().to_vec()))
    }
    /// Removes an agent with its package, key-value store and checkpoint.
    pub fn uninstall(&self, name: &str) -> Result<bool, DbError> {
        let w = self.db.begin_write().map_err(e)?;
        let existed = w
            .open_table(AGENTS)
            .map_err(e)?
            .remove(name)
            .map_err(e)?
            .is_some();
        w.open_table(PACKAGES).map_err(e)?.remove(name).map_err(e)?;
        w.open_table(CHECKPOINTS)
            .map_err(e)?
            .remove(name)
            .map_err(e)?;
        {
            let mut kv = w.open_table(KV).map_err(e)?;
            kv.retain_in((name, "")..(name, "\u{10FFFF}"), |_, _| false)
                .map_err(e)?;
        }
        w.open_table(KV_BYTES).map_err(e)?.remove(name).map_err(e)?;
        w.commit().map_err(e)?;
        Ok(existed)
    }

    /// A run.
    pub fn run(&self, id: &str) -> Result<Option<RunRecord>, DbError> {
        self.get_json(RUNS, id)
    }
    /// Stores a run; `durable` for final states.
    pub fn put_run(&self, run: &RunRecord, durable: bool) -> Result<(), DbError> {
        self.put_json(RUNS, &run.id, run, durable)?;
        Ok(())
    }
    /// Newest runs first, optionally of one agent.
    pub fn runs(&self, agent: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(RUNS).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)?.rev() {
            let (_, v) = item.map_err(e)?;
            let run: RunRecord = serde_json::from_str(v.value()).map_err(e)?;
            if agent.is_none_or(|a| a == run.agent) {
                out.push(run);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
    /// Marks runs left queued or running by a previous process as interrupted, and drops the
    /// oldest runs beyond [`MAX_RUNS`].
    pub fn recover_runs(&self) -> Result<usize, DbError> {
        self.recover(
            RUNS,
            |r: &RunRecord| matches!(r.status, RunStatus::Queued | RunStatus::Running),
            |r: &mut RunRecord| {
                r.status = RunStatus::Interrupted;
                r.error = Some("the appliance restarted while this run was in progress".into());
                r.finished_ms = Some(now_ms());
            },
        )
    }

    /// One transaction over a table of JSON run records: rewrites the `stale` ones with
    /// `interrupt`, then drops the oldest beyond [`MAX_RUNS`] (keys are time-ordered).
    fn recover<T: Serialize + for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &str>,
        stale: impl Fn(&T) -> bool,
        interrupt: impl Fn(&mut T),
    ) -> Result<usize, DbError> {
        let w = self.db.begin_write().map_err(e)?;
        let mut fixed = 0;
        {
            let mut t = w.open_table(table).map_err(e)?;
            let mut found = Vec::new();
            for item in t.iter().map_err(e)? {
                let (k, v) = item.map_err(e)?;
                let run: T = serde_json::from_str(v.value()).map_err(e)?;
                if stale(&run) {
                    found.push((k.value().to_string(), run));
                }
            }
            for (k, mut run) in found {
                interrupt(&mut run);
                let json = serde_json::to_string(&run).map_err(e)?;
                t.insert(k.as_str(), json.as_str()).map_err(e)?;
                fixed += 1;
            }
            let len = t.len().map_err(e)? as usize;
            if len > MAX_RUNS {
                let mut drop = len - MAX_RUNS;
                t.retain(|_, _| {
                    if drop > 0 {
                        drop -= 1;
                        false
                    } else {
                        true
                    }
                })
                .map_err(e)?;
            }
        }
        w.commit().map_err(e)?;
        Ok(fixed)
    }

    /// A workflow run.
    pub fn workflow_run(&self, id: &str) -> Result<Option<WorkflowRun>, DbError> {
        self.get_json(WORKFLOW_RUNS, id)
    }
    /// A stored workflow definition.
    pub fn stored_workflow(&self, name: &str) -> Result<Option<StoredWorkflow>, DbError> {
        self.get_json(WORKFLOWS, name)
    }
    /// Every stored workflow definition, by name.
    pub fn stored_workflows(&self) -> Result<Vec<StoredWorkflow>, DbError> {
        self.list_json(WORKFLOWS)
    }
    /// How many workflow definitions are stored.
    pub fn stored_workflow_count(&self) -> Result<usize, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        Ok(r.open_table(WORKFLOWS).map_err(e)?.len().map_err(e)? as usize)
    }
    /// Stores a workflow definition durably.
    pub fn put_stored_workflow(&self, wf: &StoredWorkflow) -> Result<(), DbError> {
        self.put_json(WORKFLOWS, &wf.name, wf, true)
    }
    /// Deletes a stored workflow definition; whether it existed.
    pub fn delete_stored_workflow(&self, name: &str) -> Result<bool, DbError> {
        let w = self.db.begin_write().map_err(e)?;
        let existed = w
            .open_table(WORKFLOWS)
            .map_err(e)?
            .remove(name)
            .map_err(e)?
            .is_some();
        w.commit().map_err(e)?;
        Ok(existed)
    }
    /// Stores a workflow run; `durable` for final states.
    pub fn put_workflow_run(&self, run: &WorkflowRun, durable: bool) -> Result<(), DbError> {
        self.put_json(WORKFLOW_RUNS, &run.id, run, durable)
    }
    /// Newest workflow runs first, optionally of one workflow.
    pub fn workflow_runs(
        &self,
        workflow: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkflowRun>, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(WORKFLOW_RUNS).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)?.rev() {
            let (_, v) = item.map_err(e)?;
            let run: WorkflowRun = serde_json::from_str(v.value()).map_err(e)?;
            if workflow.is_none_or(|w| w == run.workflow) {
                out.push(run);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
    /// Marks workflow runs a previous process left running as interrupted, and drops the
    /// oldest beyond [`MAX_RUNS`].
    pub fn recover_workflow_runs(&self) -> Result<usize, DbError> {
        self.recover(
            WORKFLOW_RUNS,
            |r: &WorkflowRun| r.status == WorkflowStatus::Running,
            |r: &mut WorkflowRun| {
                r.status = WorkflowStatus::Interrupted;
                r.error = Some("the appliance restarted while this workflow was running".into());
                r.finished_ms = Some(now_ms());
            },
        )
    }

    /// A value in an agent's key-value store.
    pub fn kv_get(&self, agent: &str, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(KV).map_err(e)?;
        Ok(t.get((agent, key)).map_err(e)?.map(|v| v.value().to_vec()))
    }
    /// Bytes (keys plus values) an agent's key-value store holds.
    pub fn kv_bytes(&self, agent: &str) -> Result<u64, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(KV_BYTES).map_err(e)?;
        if let Some(v) = t.get(agent).map_err(e)? {
            return Ok(v.value());
        }
        let kv = r.open_table(KV).map_err(e)?;
        kv_usage(&kv, agent)
    }

    /// Sets a value; refuses (storing nothing) beyond [`MAX_KV_KEYS`] keys or when the store
    /// would hold more than `max_bytes` bytes of keys and values.
    pub fn kv_set(
        &self,
        agent: &str,
        key: &str,
        value: &[u8],
        max_bytes: u64,
    ) -> Result<Result<(), String>, DbError> {
        let w = self.db.begin_write().map_err(e)?;
        {
            let mut t = w.open_table(KV).map_err(e)?;
            let mut sizes = w.open_table(KV_BYTES).map_err(e)?;
            let stored = sizes.get(agent).map_err(e)?.map(|v| v.value());
            let used = match stored {
                Some(u) => u,
                None => kv_usage(&t, agent)?,
            };
            let old = t.get((agent, key)).map_err(e)?.map(|v| v.value().len());
            if old.is_none() {
                let count = t
                    .range((agent, "")..(agent, "\u{10FFFF}"))
                    .map_err(e)?
                    .take(MAX_KV_KEYS)
                    .count();
                if count >= MAX_KV_KEYS {
                    return Ok(Err(format!(
                        "the key-value store holds {MAX_KV_KEYS} keys already"
                    )));
                }
            }
            let freed = old.map_or(0, |o| (key.len() + o) as u64);
            let after = used.saturating_sub(freed) + (key.len() + value.len()) as u64;
            if after > max_bytes && after > used {
                return Ok(Err(format!(
                    "the key-value store would hold {after} bytes, over its {max_bytes}-byte \
                     quota (limits.kv_bytes); nothing was stored"
                )));
            }
            t.insert((agent, key), value).map_err(e)?;
            sizes.insert(agent, after).map_err(e)?;
        }
        w.commit().map_err(e)?;
        Ok(Ok(()))
    }
    /// Deletes a key; true if it existed.
    pub fn kv_delete(&self, agent: &str, key: &str) -> Result<bool, DbError> {
        let w = self.db.begin_write().map_err(e)?;
        let existed = {
            let mut t = w.open_table(KV).map_err(e)?;
            let mut sizes = w.open_table(KV_BYTES).map_err(e)?;
            let stored = sizes.get(agent).map_err(e)?.map(|v| v.value());
            let used = match stored {
                Some(u) => u,
                None => kv_usage(&t, agent)?,
            };
            let old = t.remove((agent, key)).map_err(e)?.map(|v| v.value().len());
            if let Some(o) = old {
                sizes
                    .insert(agent, used.saturating_sub((key.len() + o) as u64))
                    .map_err(e)?;
            }
            old.is_some()
        };
        w.commit().map_err(e)?;
        Ok(existed)
    }
    /// Keys with a prefix (at most 1000).
    pub fn kv_keys(&self, agent: &str, prefix: &str) -> Result<Vec<String>, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(KV).map_err(e)?;
        let mut out = Vec::new();
        for item in t.range((agent, prefix)..(agent, "\u{10FFFF}")).map_err(e)? {
            let (k, _) = item.map_err(e)?;
            let key = k.value().1;
            if !key.starts_with(prefix) || out.len() >= 1000 {
                break;
            }
            out.push(key.to_string());
        }
        Ok(out)
    }

    /// An agent's checkpoint: (taken at ms, state).
    pub fn checkpoint(&self, agent: &str) -> Result<Option<(u64, Vec<u8>)>, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(CHECKPOINTS).map_err(e)?;
        Ok(t.get(agent).map_err(e)?.and_then(|v| {
            let b = v.value();
            (b.len() >= 8).then(|| {
                let ms = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                (ms, b[8..].to_vec())
            })
        }))
    }
    /// Stores a checkpoint durably.
    pub fn put_checkpoint(&self, agent: &str, state: &[u8]) -> Result<u64, DbError> {
        let ms = now_ms();
        let mut b = ms.to_le_bytes().to_vec();
        b.extend_from_slice(state);
        let w = self.db.begin_write().map_err(e)?;
        w.open_table(CHECKPOINTS)
            .map_err(e)?
            .insert(agent, b.as_slice())
            .map_err(e)?;
        w.commit().map_err(e)?;
        Ok(ms)
    }

    /// Tokens and cost an agent used since `since_hour` (hours since the epoch).
    pub fn usage_since(&self, agent: &str, since_hour: u64) -> Result<(u64, f64), DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(USAGE).map_err(e)?;
        let mut tokens = 0;
        let mut cost = 0.0;
        for item in t
            .range((agent, since_hour)..=(agent, u64::MAX))
            .map_err(e)?
        {
            let (_, v) = item.map_err(e)?;
            let (tk, c) = v.value();
            tokens += tk;
            cost += c;
        }
        Ok((tokens, cost))
    }
    /// Adds usage to the current hour.
    pub fn add_usage(&self, agent: &str, tokens: u64, cost: f64) -> Result<(), DbError> {
        let hour = now_ms() / 3_600_000;
        let w = self.db.begin_write().map_err(e)?;
        {
            let mut t = w.open_table(USAGE).map_err(e)?;
            let (tk, c) = t
                .get((agent, hour))
                .map_err(e)?
                .map(|v| v.value())
                .unwrap_or((0, 0.0));
            t.insert((agent, hour), (tk + tokens, c + cost))
                .map_err(e)?;
        }
        w.commit().map_err(e)
    }

    /// Appends an audit entry.
    pub fn audit(
        &self,
        agent: Option<&str>,
        run: Option<&str>,
        event: &str,
        detail: &str,
    ) -> Result<(), DbError> {
        let w = self.db.begin_write().map_err(e)?;
        {
            let mut t = w.open_table(AUDIT).map_err(e)?;
            let seq = t
                .last()
                .map_err(e)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            let entry = AuditEntry {
                seq,
                ms: now_ms(),
                agent: agent.map(str::to_string),
                run: run.map(str::to_string),
                event: event.to_string(),
                detail: detail.to_string(),
            };
            let json = serde_json::to_string(&entry).map_err(e)?;
            t.insert(seq, json.as_str()).map_err(e)?;
        }
        w.commit().map_err(e)
    }
    /// Newest audit entries first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, DbError> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(AUDIT).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)?.rev().take(limit) {
            let (_, v) = item.map_err(e)?;
            out.push(serde_json::from_str(v.value()).map_err(e)?);
        }
        Ok(out)
    }
}

//! The router's redb tables (all `router_*`, written only by this module): providers with
//! their sealed keys, settings, usage per day / caller / provider / model, tokens per hour and
//! caller (budgets), and learned judge scores. Tables are created by their first write, so no
//! schema migration is needed; reads of a table that does not exist yet see it empty.
//!
//! Usage is written behind the call: [`Ledger::record`] queues the call's figures and a writer
//! thread commits everything queued in one durable transaction (group commit), so a routed
//! call never waits for an fsync. Reads (budgets, reports) see committed and queued figures
//! exactly once: each commit also stores the sequence number of the last row it holds, and a
//! reader counts only the queued rows after the number its read transaction sees. A power cut
//! can lose the figures of calls that ended in the last commit interval (a few milliseconds).

use super::config::{ProviderConfig, RouterSettings};
use crate::store::StoreError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Provider name → stored provider (JSON).
pub(crate) const PROVIDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("router_providers");
/// `"settings"` → router settings (JSON).
pub(crate) const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("router_settings");
/// (UTC day number, caller, provider, model) → usage row (JSON).
pub(crate) const USAGE: TableDefinition<(u32, &str, &str, &str), &[u8]> =
    TableDefinition::new("router_usage");
/// (UTC hour number, caller) → tokens.
pub(crate) const HOURLY: TableDefinition<(u64, &str), u64> = TableDefinition::new("router_hourly");
/// (model, task kind) → score (JSON: n, sum).
pub(crate) const SCORES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("router_scores");
/// `"epoch"` and `"seq"`: which writer process and which queued row the last usage commit
/// reached (see the module documentation).
pub(crate) const USAGE_SEQ: TableDefinition<&str, u64> = TableDefinition::new("router_usage_seq");

/// A provider as stored: its configuration and its sealed key (hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredProvider {
    /// Configuration.
    pub config: ProviderConfig,
    /// `KeyBox::seal` output, hex; never the key itself.
    #[serde(default)]
    pub sealed_key: Option<String>,
}

/// Accumulated usage of one (day, caller, provider, model).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Successful calls.
    pub calls: u64,
    /// Failed attempts charged to this target.
    #[serde(default)]
    pub failures: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// US dollars.
    pub cost_usd: f64,
}

/// A stored usage row with its key: (UTC day number, caller, provider, model, figures).
pub type UsageRecord = (u32, String, String, String, UsageRow);

/// One usage line of a report.
#[derive(Debug, Clone, Serialize)]
pub struct UsageLine {
    /// UTC date, `YYYY-MM-DD`.
    pub day: String,
    /// `api` or `agent:NAME`.
    pub caller: String,
    /// `local` or the provider's name.
    pub provider: String,
    /// The model.
    pub model: String,
    /// The figures.
    #[serde(flatten)]
    pub usage: UsageRow,
}

/// A learned score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Judgements recorded.
    pub n: u64,
    /// Their sum.
    pub sum: f64,
}

/// Access to the tables; without a database (degraded mode) reads are empty and writes fail.
#[derive(Clone)]
pub struct Ledger {
    db: Option<(Arc<Database>, PathBuf)>,
    queue: Arc<UsageQueue>,
    /// Dropped with the last clone: commits what is queued and stops the writer.
    _writer: Arc<WriterGuard>,
}

/// Stops the usage writer when the last [`Ledger`] clone goes, after its final commit, so the
/// database is closed when the ledger is.
struct WriterGuard(Arc<UsageQueue>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let handle = {
            let mut st = self.0.lock();
            st.closed = true;
            st.thread.take()
        };
        self.0.changed.notify_all();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// One call's figures, queued for the usage writer.
#[derive(Debug, Clone)]
struct Queued {
    seq: u64,
    day: u32,
    hour: u64,
    caller: String,
    provider: String,
    model: String,
    add: UsageRow,
}

/// Usage figures between their call and their commit, shared with the writer thread.
struct UsageQueue {
    /// This process's writer, told apart from earlier processes' commits.
    epoch: u64,
    state: Mutex<QueueState>,
    /// Signalled when rows arrive and when a commit drained some.
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    rows: Vec<Queued>,
    next_seq: u64,
    /// The writer thread, once the first row started it.
    thread: Option<std::thread::JoinHandle<()>>,
    /// Every ledger is gone: the writer stops once the queue is empty.
    closed: bool,
}

/// A number that tells this process's usage commits from an earlier process's.
fn process_epoch() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return nanos ^ u64::from(std::process::id()) << 32 | 1;
    }
    u64::from_le_bytes(b) | 1
}

impl UsageQueue {
    fn new() -> UsageQueue {
        UsageQueue {
            epoch: process_epoch(),
            state: Mutex::new(QueueState {
                next_seq: 1,
                ..QueueState::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer thread: commits whatever is queued, one transaction per round, until every
/// `Ledger` is gone and the queue is empty.
fn usage_writer(queue: Arc<UsageQueue>, db: Arc<Database>, path: PathBuf) {
    loop {
        let batch: Vec<Queued> = {
            let mut st = queue.lock();
            while st.rows.is_empty() {
                if st.closed {
                    return;
                }
                st = queue.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.rows.clone()
        };
        if let Err(e) = commit_usage(&db, &path, queue.epoch, &batch) {
            tracing::warn!("router: usage of {} call(s) not recorded: {e}", batch.len());
        }
        let mut st = queue.lock();
        st.rows.drain(..batch.len());
        queue.changed.notify_all();
    }
}

fn commit_usage(
    db: &Database,
    path: &std::path::Path,
    epoch: u64,
    batch: &[Queued],
) -> Result<(), StoreError> {
    crate::store::ensure_space(path, 16 * 1024 * batch.len() as u64)?;
    let txn = db.begin_write()?;
    {
        let mut t = txn.open_table(USAGE)?;
        let mut h = txn.open_table(HOURLY)?;
        for q in batch {
            let key = (
                q.day,
                q.caller.as_str(),
                q.provider.as_str(),
                q.model.as_str(),
            );
            let mut row: UsageRow = match t.get(key)? {
                Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
                None => UsageRow::default(),
            };
            row.add(&q.add);
            let v = serde_json::to_vec(&row)?;
            t.insert(key, v.as_slice())?;
            let tokens = q.add.prompt_tokens + q.add.completion_tokens;
            if tokens > 0 {
                let cur = h
                    .get((q.hour, q.caller.as_str()))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                h.insert((q.hour, q.caller.as_str()), cur + tokens)?;
            }
        }
        let mut s = txn.open_table(USAGE_SEQ)?;
        s.insert("epoch", epoch)?;
        s.insert("seq", batch.last().map_or(0, |q| q.seq))?;
    }
    txn.commit()?;
    Ok(())
}

impl UsageRow {
    fn add(&mut self, add: &UsageRow) {
        self.calls += add.calls;
        self.failures += add.failures;
        self.prompt_tokens += add.prompt_tokens;
        self.completion_tokens += add.completion_tokens;
        self.cost_usd += add.cost_usd;
    }
}

/// The UTC date of a day number.
pub fn day_string(day: u32) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::from(day) * 86_400)
        .map(|t| {
            let d = t.date();
            format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
        })
        .unwrap_or_else(|_| day.to_string())
}

impl Ledger {
    /// Over `db` (stored at `path`, for the free-space check), or none.
    pub fn new(db: Option<(Arc<Database>, PathBuf)>) -> Ledger {
        let queue = Arc::new(UsageQueue::new());
        Ledger {
            db,
            _writer: Arc::new(WriterGuard(queue.clone())),
            queue,
        }
    }

    /// The queued rows a read transaction does not hold yet. Called with the queue snapshot
    /// taken *before* `txn` began: every row drained before then was committed before then.
    fn unseen(&self, txn: &redb::ReadTransaction, queued: Vec<Queued>) -> Vec<Queued> {
        let seen = match txn.open_table(USAGE_SEQ) {
            Ok(t) => {
                let get = |k: &str| t.get(k).ok().flatten().map(|v| v.value());
                if get("epoch") == Some(self.queue.epoch) {
                    get("seq").unwrap_or(0)
                } else {
                    0
                }
            }
            Err(_) => 0,
        };
        queued.into_iter().filter(|q| q.seq > seen).collect()
    }

    /// Waits until every queued usage row is committed (or its commit failed), at most `max`.
    pub fn flush(&self, max: Duration) {
        let deadline = std::time::Instant::now() + max;
        let mut st = self.queue.lock();
        while !st.rows.is_empty() {
            let now = std::time::Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .queue
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Whether writes can persist.
    pub fn persistent(&self) -> bool {
        self.db.is_some()
    }

    fn write<R>(
        &self,
        need: u64,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let Some((db, path)) = &self.db else {
            return Err(StoreError::Unavailable(
                "the data partition is unavailable (degraded mode)".into(),
            ));
        };
        crate::store::ensure_space(path, need)?;
        let txn = db.begin_write()?;
        let r = f(&txn)?;
        txn.commit()?;
        Ok(r)
    }

    /// Runs `f` on a read transaction; `Ok(default)` when there is no database.
    fn read<R: Default>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match &self.db {
            None => Ok(R::default()),
            Some((db, _)) => f(&db.begin_read()?),
        }
    }

    /// Every stored provider.
    pub fn providers(&self) -> Result<Vec<StoredProvider>, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(PROVIDERS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                match serde_json::from_slice(v.value()) {
                    Ok(p) => out.push(p),
                    Err(e) => tracing::error!("router provider {:?} unreadable: {e}", k.value()),
                }
            }
            Ok(out)
        })
    }

    /// Writes (creates or replaces) a provider.
    pub fn put_provider(&self, p: &StoredProvider) -> Result<(), StoreError> {
        let v = serde_json::to_vec(p)?;
        self.write(4 * v.len() as u64 + 4096, |txn| {
            txn.open_table(PROVIDERS)?
                .insert(p.config.name.as_str(), v.as_slice())?;
            Ok(())
        })
    }

    /// Deletes a provider; whether it existed.
    pub fn delete_provider(&self, name: &str) -> Result<bool, StoreError> {
        self.write(4096, |txn| {
            Ok(txn.open_table(PROVIDERS)?.remove(name)?.is_some())
        })
    }

    /// The stored settings (defaults when none).
    pub fn settings(&self) -> Result<RouterSettings, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(SETTINGS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
                Err(e) => return Err(e.into()),
            };
            Ok(match t.get("settings")? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => RouterSettings::default(),
            })
        })
    }

    /// Stores the settings.
    pub fn put_settings(&self, s: &RouterSettings) -> Result<(), StoreError> {
        let v = serde_json::to_vec(s)?;
        self.write(4 * v.len() as u64 + 4096, |txn| {
            txn.open_table(SETTINGS)?.insert("settings", v.as_slice())?;
            Ok(())
        })
    }

    /// Queues a call's figures for the day's row and the hour's token count; the writer
    /// thread commits them durably with the next group commit. Reads see them at once.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        day: u32,
        hour: u64,
        caller: &str,
        provider: &str,
        model: &str,
        add: &UsageRow,
    ) -> Result<(), StoreError> {
        let Some((db, path)) = &self.db else {
            return Err(StoreError::Unavailable(
                "the data partition is unavailable (degraded mode)".into(),
            ));
        };
        let mut st = self.queue.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.rows.push(Queued {
            seq,
            day,
            hour,
            caller: caller.to_string(),
            provider: provider.to_string(),
            model: model.to_string(),
            add: add.clone(),
        });
        if st.thread.is_none() {
            let (queue, db, path) = (self.queue.clone(), db.clone(), path.clone());
            match std::thread::Builder::new()
                .name("usage-writer".into())
                .spawn(move || usage_writer(queue, db, path))
            {
                Ok(h) => st.thread = Some(h),
                Err(e) => {
                    st.rows.pop();
                    return Err(StoreError::Thread {
                        what: "usage writer",
                        source: e,
                    });
                }
            }
        }
        self.queue.changed.notify_all();
        Ok(())
    }

    /// Runs `f` on a read transaction and the queued usage rows it does not hold yet;
    /// `Ok(default)` when there is no database.
    fn read_usage<R: Default>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction, Vec<Queued>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let Some((db, _)) = &self.db else {
            return Ok(R::default());
        };
        // The snapshot comes first: see `unseen`.
        let queued = self.queue.lock().rows.clone();
        let txn = db.begin_read()?;
        let unseen = self.unseen(&txn, queued);
        f(&txn, unseen)
    }

    /// Tokens used in `hour` by `caller` (every caller when `None`), queued calls included.
    pub fn tokens_in_hour(&self, hour: u64, caller: Option<&str>) -> Result<u64, StoreError> {
        self.read_usage(|txn, unseen| {
            let mine = |c: &str| caller.is_none_or(|x| x == c);
            let mut sum: u64 = unseen
                .iter()
                .filter(|q| q.hour == hour && mine(&q.caller))
                .map(|q| q.add.prompt_tokens + q.add.completion_tokens)
                .sum();
            let t = match txn.open_table(HOURLY) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(sum),
                Err(e) => return Err(e.into()),
            };
            for row in t.range((hour, "")..(hour + 1, ""))? {
                let (k, v) = row?;
                if mine(k.value().1) {
                    sum += v.value();
                }
            }
            Ok(sum)
        })
    }

    /// Usage rows of days `from..=to`, optionally of one caller, queued calls included.
    pub fn usage(
        &self,
        from: u32,
        to: u32,
        caller: Option<&str>,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        self.read_usage(|txn, unseen| {
            let mut rows: BTreeMap<(u32, String, String, String), UsageRow> = BTreeMap::new();
            match txn.open_table(USAGE) {
                Ok(t) => {
                    for row in t.range((from, "", "", "")..(to.saturating_add(1), "", "", ""))? {
                        let (k, v) = row?;
                        let (day, c, p, m) = k.value();
                        if caller.is_some_and(|x| x != c) {
                            continue;
                        }
                        let r: UsageRow = serde_json::from_slice(v.value()).unwrap_or_default();
                        rows.insert((day, c.to_string(), p.to_string(), m.to_string()), r);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
            for q in unseen {
                if (from..=to).contains(&q.day) && caller.is_none_or(|x| x == q.caller) {
                    rows.entry((q.day, q.caller, q.provider, q.model))
                        .or_default()
                        .add(&q.add);
                }
            }
            Ok(rows
                .into_iter()
                .map(|((d, c, p, m), r)| (d, c, p, m, r))
                .collect())
        })
    }

    /// Every learned score.
    pub fn scores(&self) -> Result<Vec<(String, String, Score)>, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(SCORES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                let (m, kind) = k.value();
                let s: Score = serde_json::from_slice(v.value()).unwrap_or_default();
                out.push((m.to_string(), kind.to_string(), s));
            }
            Ok(out)
        })
    }

    /// Stores one learned score.
    pub fn put_score(&self, model: &str, kind: &str, s: &Score) -> Result<(), StoreError> {
        let v = serde_json::to_vec(s)?;
        self.write(16 << 10, |txn| {
            txn.open_table(SCORES)?
                .insert((model, kind), v.as_slice())?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_hourly_tokens_accumulate_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::store::Store::open(dir.path()).unwrap();
            let l = Ledger::new(Some((store.database(), store.path().to_path_buf())));
            assert_eq!(l.tokens_in_hour(5, None).unwrap(), 0);
            let row = UsageRow {
                calls: 1,
                failures: 0,
                prompt_tokens: 10,
                completion_tokens: 5,
                cost_usd: 0.25,
            };
            l.record(3, 5, "api", "cloud", "m", &row).unwrap();
            l.record(3, 5, "api", "cloud", "m", &row).unwrap();
            l.record(3, 5, "agent:bob", "local", "x", &row).unwrap();
            l.record(4, 6, "api", "cloud", "m", &row).unwrap();
        }
        let store = crate::store::Store::open(dir.path()).unwrap();
        let l = Ledger::new(Some((store.database(), store.path().to_path_buf())));
        assert_eq!(l.tokens_in_hour(5, None).unwrap(), 45);
        assert_eq!(l.tokens_in_hour(5, Some("agent:bob")).unwrap(), 15);
        assert_eq!(l.tokens_in_hour(6, Some("api")).unwrap(), 15);
        let day3 = l.usage(3, 3, None).unwrap();
        assert_eq!(day3.len(), 2);
        let api = day3.iter().find(|r| r.1 == "api").unwrap();
        assert_eq!(api.4.calls, 2);
        assert!((api.4.cost_usd - 0.5).abs() < 1e-12);
        assert_eq!(l.usage(3, 4, Some("api")).unwrap().len(), 2);
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(20_000), "2024-10-04");
    }

    #[test]
    fn queued_usage_is_read_exactly_once_while_the_writer_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let l = Ledger::new(Some((store.database(), store.path().to_path_buf())));
        let row = UsageRow {
            calls: 1,
            prompt_tokens: 2,
            completion_tokens: 1,
            ..UsageRow::default()
        };
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (l, row, done) = (l.clone(), row.clone(), done.clone());
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        l.record(7, 70, "api", "local", "m", &row).unwrap();
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        // Readers racing the group commits see every recorded call once: not lost (at least
        // what was recorded before the read) and not twice (at most what was recorded by its
        // end, plus one call per writer thread caught between queueing and counting).
        let now = || done.load(std::sync::atomic::Ordering::SeqCst);
        while writers.iter().any(|w| !w.is_finished()) {
            let before = now();
            let tokens = l.tokens_in_hour(70, None).unwrap();
            let calls: u64 = l.usage(7, 7, None).unwrap().iter().map(|r| r.4.calls).sum();
            let after = now() + 2;
            assert!(
                (3 * before..=3 * after).contains(&tokens),
                "{before} {tokens} {after}"
            );
            assert!(
                (before..=after).contains(&calls),
                "{before} {calls} {after}"
            );
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(l.tokens_in_hour(70, Some("api")).unwrap(), 1800);
        assert_eq!(l.usage(7, 7, None).unwrap()[0].4.calls, 600);
        // Dropping the last ledger commits the queue and closes the database for a reopen.
        drop(l);
        drop(store);
        let store = crate::store::Store::open(dir.path()).unwrap();
        let l = Ledger::new(Some((store.database(), store.path().to_path_buf())));
        assert_eq!(l.usage(7, 7, None).unwrap()[0].4.calls, 600);
        assert_eq!(l.tokens_in_hour(70, None).unwrap(), 1800);
    }

    #[test]
    fn a_committed_row_still_in_the_queue_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let (db, path) = (store.database(), store.path().to_path_buf());
        let l = Ledger::new(Some((db.clone(), path.clone())));
        let q = |seq| Queued {
            seq,
            day: 1,
            hour: 10,
            caller: "api".into(),
            provider: "local".into(),
            model: "m".into(),
            add: UsageRow {
                calls: 1,
                prompt_tokens: 2,
                completion_tokens: 1,
                ..UsageRow::default()
            },
        };
        // The writer's state between its commit of rows 1 and 2 and draining them.
        l.queue.lock().rows = vec![q(1), q(2), q(3)];
        commit_usage(&db, &path, l.queue.epoch, &[q(1), q(2)]).unwrap();
        assert_eq!(l.tokens_in_hour(10, None).unwrap(), 9);
        assert_eq!(l.usage(1, 1, None).unwrap()[0].4.calls, 3);
        // A commit stamped by another process says nothing about this one's queue.
        commit_usage(&db, &path, l.queue.epoch ^ 2, &[q(3)]).unwrap();
        assert_eq!(l.tokens_in_hour(10, None).unwrap(), 18);
        l.queue.lock().rows.clear();
    }
}

//! Agent memory on redb: four tiers (working, episodic, semantic, procedural) in namespaces,
//! hybrid retrieval (BM25 + HNSW, fused by reciprocal rank), consolidation and forgetting.
//! The written promises are in `docs/memory.md`; the tests here and in `tests/tests/memory.rs`
//! enforce them.
//!
//! Durability: every write is one redb transaction, durable before the call returns: committed
//! with `Durability::Immediate`, or, for a single remember, committed unsynced after its
//! decisions were synced to the write-ahead journal (`journal.rs`); the record, its postings,
//! its vector and the bookkeeping tables change together or not at all. The HNSW graph is an
//! acceleration structure over the stored vectors: a write adds its vector to the graph
//! unlinked (searched exactly until linked), the indexer thread links it off the write path,
//! and the graph is persisted in checkpoints (every [`CHECKPOINT_EVERY`] graph changes, with
//! the periodic flush, and whenever an already indexed vector changes); records the last
//! checkpoint lacks are added again, unlinked, when memory opens. Access statistics (accessed
//! time, access count) are the exception: they are buffered and written with the next write or
//! by the periodic flush, since losing a few counts in a power cut loses nothing acknowledged.

mod consolidate;
mod disk;
mod error;
mod hnsw;
mod index;
mod indexer;
mod journal;
mod jsonl;
mod pending;
mod postings;
mod recall;
mod record;
mod tables;
mod text;
mod vector;

pub use consolidate::{ConsolidationReport, Summarizer};
pub use disk::{RESERVE_BYTES, ensure_space, free_bytes};
pub use error::{MemoryError, StorageError, StorageKind};
pub use jsonl::ImportReport;
pub use recall::{Hit, Mode, Query, Recall};
pub use record::{InputError, NewRecord, Provenance, Record, RecordUpdate, Tier};

use error::{decode_error, poisoned};
use hnsw::Hnsw;
use redb::{
    Database, ReadableDatabase, ReadableMultimapTable, ReadableTable, ReadableTableMetadata,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use vector::QVec;

/// Semantic records at least this similar to an existing one are merged into it.
pub const DEDUP_SIMILARITY: f32 = 0.95;
/// Default record quota of a namespace.
pub const DEFAULT_QUOTA: u64 = 100_000;
/// Graph changes (vectors linked or removed) after which the next write also checkpoints the
/// graph; bounds the vectors the indexer links again after a power cut (in the background:
/// memory opens at once). Larger windows write each busy node fewer times.
pub const CHECKPOINT_EVERY: usize = 16384;
/// Records with unmerged keyword postings after which the next write merges them into a new
/// segment (`postings.rs`). Searches read unmerged postings from memory (`pending`), so this
/// bounds that view's size, the texts read again when memory opens, and how many level-0
/// segments a namespace gathers.
pub const MERGE_POSTINGS_EVERY: usize = 8192;
/// `META` key: every record with a smaller id has its current graph node in `GRAPH` (records
/// from this id on that `GRAPH` lacks are added from their vectors when the graph is loaded).
const GRAPH_THROUGH: &str = "graph_through";
/// `mem_meta` key: the sequence number of the last journal entry a commit included.
const JOURNAL_SEQ: &str = "journal_seq";

/// Counts a running write transaction for as long as it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(count: &'a AtomicUsize) -> Busy<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Busy(count)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a checkpoint took from the graphs: put back if its transaction fails.
#[derive(Default)]
struct Checkpoint {
    /// Dirty node ids per namespace.
    dirty: Vec<(String, Vec<u64>)>,
    /// The graph change count.
    changes: usize,
}

/// An embedder's or summarizer's own error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Computes embeddings for memory (the appliance passes its local embedding model).
pub trait Embed: Send + Sync {
    /// The model's id.
    fn model(&self) -> String;
    /// Vector length.
    fn dims(&self) -> usize;
    /// One vector per text.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BoxError>;
}

/// Which namespaces a caller may read and write. Patterns are a namespace, `kind:*`, or `*`.
#[derive(Debug, Clone, Default)]
pub struct Access {
    read: Vec<String>,
    write: Vec<String>,
}

fn matches(patterns: &[String], ns: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == ns
            || p.strip_suffix('*')
                .is_some_and(|prefix| prefix.ends_with(':') && ns.starts_with(prefix))
    })
}

impl Access {
    /// The operator: every namespace.
    pub fn admin() -> Access {
        Access {
            read: vec!["*".into()],
            write: vec!["*".into()],
        }
    }

    /// An agent: its own `agent:NAME` namespace read-write, plus the granted namespaces.
    pub fn agent(name: &str, read: &[String], write: &[String]) -> Access {
        let own = format!("agent:{name}");
        let mut a = Access {
            read: read.to_vec(),
            write: write.to_vec(),
        };
        a.read.push(own.clone());
        a.write.push(own);
        a.read.extend(a.write.clone());
        a
    }

    /// A user: `user:NAME` read-write and `shared` read-write.
    pub fn user(name: &str) -> Access {
        let v = vec![format!("user:{name}"), "shared".into(), "shared:*".into()];
        Access {
            read: v.clone(),
            write: v,
        }
    }

    /// Whether `ns` may be read.
    pub fn can_read(&self, ns: &str) -> bool {
        matches(&self.read, ns)
    }

    /// Whether `ns` may be written.
    pub fn can_write(&self, ns: &str) -> bool {
        matches(&self.write, ns)
    }
}

/// A namespace's settings and counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamespaceInfo {
    /// Most records kept; consolidation evicts unpinned records beyond it.
    pub quota: u64,
    /// Records now.
    pub records: u64,
    /// Sum of keyword document lengths (for BM25's average).
    pub terms: u64,
}

impl Default for NamespaceInfo {
    fn default() -> Self {
        NamespaceInfo {
            quota: DEFAULT_QUOTA,
            records: 0,
            terms: 0,
        }
    }
}

/// What a write answered.
#[derive(Debug, Clone, Serialize)]
pub struct Remembered {
    /// The stored record (the existing one when deduplicated).
    pub record: Record,
    /// The write was a duplicate of this existing semantic record and was merged into it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deduplicated: Option<u64>,
    /// Records evicted to make room (working memory beyond its per-session bound).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<u64>,
    /// Whether the record has an embedding (false: keyword retrieval only).
    pub embedded: bool,
}

/// A page of records.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// Records in id order.
    pub records: Vec<Record>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The memory subsystem over the appliance's database.
pub struct Memory {
    db: Arc<Database>,
    /// The database file (for the free-space check before writes).
    path: std::path::PathBuf,
    /// The vector graphs of every namespace and the vectors not handed to them yet.
    index: Arc<index::VectorIndex>,
    /// Graph changes since the last checkpoint (the indexer's links included).
    graph_changes: Arc<AtomicUsize>,
    /// Links new vectors into the graphs in the background (set once the graphs are loaded).
    indexer: Option<indexer::Indexer>,
    /// The next write must checkpoint the graph (an already persisted node's vector changed).
    checkpoint_now: AtomicBool,
    /// The unmerged postings (`POSTINGS_NEW`) by term, for searches.
    pending: pending::Pending,
    /// The running write's changes to `pending`, applied once it commits.
    staged: Mutex<Vec<pending::Change>>,
    /// The next write must merge `POSTINGS_NEW` (the flush).
    merge_now: AtomicBool,
    writer: Mutex<()>,
    /// The write-ahead journal of single remembers (`None`: it could not be opened, and
    /// every write commits durably).
    journal: Mutex<Option<journal::Journal>>,
    embedder: Option<Arc<dyn Embed>>,
    access_log: Mutex<HashMap<u64, (u64, u64)>>,
    /// `META["dims"]` once a committed vector has set it (0 until then).
    dims_committed: AtomicUsize,
    /// After a failed merge of the keyword postings: not before this instant again.
    merge_retry: Mutex<Option<std::time::Instant>>,
    /// Write transactions running (the indexer waits while there is one).
    writing: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("embedder", &self.embedder.as_ref().map(|e| e.model()))
            .finish_non_exhaustive()
    }
}

pub(crate) fn decode_record(b: &[u8]) -> Result<Record, MemoryError> {
    serde_json::from_slice(b).map_err(|e| decode_error("memory record", e))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn dedup_key(text: &str) -> [u8; 32] {
    sha2::Sha256::digest(text::normalized(text).as_bytes()).into()
}

/// The record `new` becomes as record `id` of namespace `ns` at `now`.
fn new_record(id: u64, tier: Tier, ns: &str, new: &NewRecord, embedded: bool, now: u64) -> Record {
    Record {
        id,
        tier,
        namespace: ns.to_string(),
        text: new.text.clone(),
        metadata: match &new.metadata {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => Default::default(),
        },
        created_ms: now,
        accessed_ms: now,
        access_count: 0,
        importance: new.importance.unwrap_or(0.5),
        pinned: new.pinned,
        provenance: new.provenance.clone().unwrap_or_default(),
        session: new.session.clone(),
        occurred_ms: (tier == Tier::Episodic).then(|| new.occurred_ms.unwrap_or(now)),
        source: new.source.clone(),
        key: new.key.clone(),
        version: None,
        superseded_by: None,
        consolidated_into: None,
        embedded,
        decayed_ms: now,
    }
}

/// Reads a namespace's info inside a write transaction.
fn ns_info(txn: &WriteTransaction, ns: &str) -> Result<NamespaceInfo, MemoryError> {
    let t = txn.open_table(tables::NAMESPACES)?;
    let v = t.get(ns)?;
    match v {
        Some(v) => serde_json::from_slice(v.value())
            .map_err(|e| decode_error(format!("namespace {ns:?}"), e)),
        None => Err(MemoryError::UnknownNamespace(ns.to_string())),
    }
}

fn put_ns_info(txn: &WriteTransaction, ns: &str, info: &NamespaceInfo) -> Result<(), MemoryError> {
    txn.open_table(tables::NAMESPACES)?
        .insert(ns, encode(info).as_slice())?;
    Ok(())
}

impl Memory {
    /// Opens memory over a database shared with its owner (`path` is its file; its memory
    /// tables exist from [`migrate`]), replays the journal and loads the vector graphs.
    /// `embedder` is the embedding model, if any.
    pub fn open_database(
        db: Arc<Database>,
        path: &std::path::Path,
        embedder: Option<Arc<dyn Embed>>,
    ) -> Result<Memory, MemoryError> {
        let mut m = Memory {
            db,
            path: path.to_path_buf(),
            index: Arc::new(index::VectorIndex::default()),
            graph_changes: Arc::new(AtomicUsize::new(0)),
            indexer: None,
            checkpoint_now: AtomicBool::new(false),
            pending: pending::Pending::default(),
            staged: Mutex::new(Vec::new()),
            merge_now: AtomicBool::new(false),
            writer: Mutex::new(()),
            journal: Mutex::new(None),
            embedder,
            access_log: Mutex::new(HashMap::new()),
            dims_committed: AtomicUsize::new(0),
            merge_retry: Mutex::new(None),
            writing: Arc::new(AtomicUsize::new(0)),
        };
        // A store from before graph checkpoints persisted every node with its record: all
        // of it is checkpointed.
        let marked = {
            let txn = m.db.begin_read()?;
            txn.open_table(tables::META)?.get(GRAPH_THROUGH)?.is_some()
        };
        if !marked {
            let txn = m.db.begin_write()?;
            {
                let mut meta = txn.open_table(tables::META)?;
                let next = meta.get("next_id")?.map_or(1, |v| v.value());
                meta.insert(GRAPH_THROUGH, next)?;
                drop(meta);
                txn.open_table(tables::POSTINGS_NEW)?;
            }
            txn.commit()?;
        }
        m.pending = pending::Pending::load(&m.db.begin_read()?)?;
        let (graphs, added) = m.load_graphs(None)?;
        if added > 0 {
            tracing::info!(
                "memory: {added} vectors written after the last graph checkpoint are being linked"
            );
        }
        m.index.set_all(graphs).map_err(|_| poisoned())?;
        m.indexer = Some(
            indexer::Indexer::start(m.index.clone(), m.graph_changes.clone(), m.writing.clone())
                .map_err(StorageError::Indexer)?,
        );
        m.open_journal()?;
        Ok(m)
    }

    /// Opens the journal next to the database and applies the acknowledged writes that the
    /// last durable commit lacks (one durable transaction), so they are there before any
    /// read. A journal that cannot be opened leaves memory committing every write durably.
    fn open_journal(&self) -> Result<(), MemoryError> {
        let path = self.path.with_extension("journal");
        let (mut j, entries) = match journal::Journal::open(&path) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(
                    "memory: journal {}: {e}; every write commits durably",
                    path.display()
                );
                return Ok(());
            }
        };
        let committed = {
            let txn = self.db.begin_read()?;
            txn.open_table(tables::META)?
                .get(JOURNAL_SEQ)?
                .map_or(0, |v| v.value())
        };
        j.follow(committed);
        let todo: Vec<journal::Entry> = entries
            .into_iter()
            .filter(|(seq, _)| *seq > committed)
            .map(|(_, e)| e)
            .collect();
        if !todo.is_empty() {
            let last = j.next_seq() - 1;
            let mut touched: Vec<String> = Vec::new();
            for e in &todo {
                if let journal::Entry::Insert { record, .. } = e {
                    touched.push(record.namespace.clone());
                }
            }
            touched.sort();
            touched.dedup();
            let touched: Vec<&str> = touched.iter().map(String::as_str).collect();
            self.write(&touched, |txn| {
                for e in &todo {
                    self.apply(txn, e)?;
                }
                txn.open_table(tables::META)?.insert(JOURNAL_SEQ, last)?;
                Ok(())
            })?;
            tracing::info!(
                "memory: {} acknowledged writes applied again from {}",
                todo.len(),
                path.display()
            );
        }
        j.restart();
        *self.journal.lock().map_err(|_| poisoned())? = Some(j);
        Ok(())
    }

    /// The embedding model's id, if memory has one.
    pub fn embedding_model(&self) -> Option<String> {
        self.embedder.as_ref().map(|e| e.model())
    }

    /// Vector dimensions of the index (0 before the first vector and without a model).
    pub fn dims(&self) -> Result<usize, MemoryError> {
        if let Some(e) = &self.embedder {
            return Ok(e.dims());
        }
        // Set by the first committed vector and never changed after: read once.
        let known = self.dims_committed.load(Ordering::Relaxed);
        if known != 0 {
            return Ok(known);
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(tables::META)?;
        let dims = t.get("dims")?.map_or(0, |v| v.value()) as usize;
        self.dims_committed.store(dims, Ordering::Relaxed);
        Ok(dims)
    }

    /// Loads the graphs of every namespace (or of one) from the last commit: the checkpointed
    /// nodes, then the records the checkpoint lacks, added unlinked from their vectors (the
    /// indexer links them). Also returns how many were added.
    #[allow(clippy::type_complexity)]
    fn load_graphs(
        &self,
        only: Option<&str>,
    ) -> Result<(HashMap<String, Hnsw>, usize), MemoryError> {
        let txn = self.db.begin_read()?;
        let dims = txn
            .open_table(tables::META)?
            .get("dims")?
            .map_or(0, |v| v.value()) as usize;
        let graph = txn.open_table(tables::GRAPH)?;
        let vectors = txn.open_table(tables::VECTORS)?;
        let mut out: HashMap<String, Hnsw> = HashMap::new();
        let mut pending: HashMap<String, Vec<hnsw::PendingLinks>> = HashMap::new();
        let mut orphans = Vec::new();
        let rows = match only {
            Some(ns) => graph.range((ns, 0u64)..=(ns, u64::MAX))?,
            None => graph.range::<(&str, u64)>(..)?,
        };
        for row in rows {
            let (k, v) = row?;
            let (ns, id) = k.value();
            let Some((tag, links)) = tables::decode_node(v.value()) else {
                tracing::warn!("memory: graph node {id} in {ns} is malformed; skipped");
                continue;
            };
            let Some(vec) = vectors.get(id)?.and_then(|b| QVec::from_bytes(b.value())) else {
                // Deleted (or re-embedded without a vector) after the checkpoint: the next
                // checkpoint removes the node.
                orphans.push((ns.to_string(), id));
                continue;
            };
            let g = out.entry(ns.to_string()).or_insert_with(|| Hnsw::new(dims));
            g.load_node(
                id,
                &vec,
                tag,
                links,
                pending.entry(ns.to_string()).or_default(),
            );
        }
        for (ns, p) in pending {
            if let Some(g) = out.get_mut(&ns) {
                g.finish_load(p);
            }
        }
        // The tail: records written after the last checkpoint.
        let through = txn
            .open_table(tables::META)?
            .get(GRAPH_THROUGH)?
            .map_or(u64::MAX, |v| v.value());
        let names: Vec<String> = match only {
            Some(ns) => vec![ns.to_string()],
            None => {
                let t = txn.open_table(tables::NAMESPACES)?;
                let mut v = Vec::new();
                for row in t.iter()? {
                    v.push(row?.0.value().to_string());
                }
                v
            }
        };
        let by_ns = txn.open_table(tables::BY_NAMESPACE)?;
        let mut added = 0;
        for ns in &names {
            for row in by_ns.range((ns.as_str(), through)..=(ns.as_str(), u64::MAX))? {
                let (k, tier) = row?;
                let id = k.value().1;
                if out.get(ns).is_some_and(|g| g.contains(id)) {
                    continue;
                }
                let Some(vec) = vectors.get(id)?.and_then(|b| QVec::from_bytes(b.value())) else {
                    continue;
                };
                let g = out.entry(ns.clone()).or_insert_with(|| Hnsw::new(dims));
                if let Err(e) = g.add(id, &vec, tier.value()) {
                    tracing::warn!("memory: re-indexing record {id} in {ns}: {e}");
                }
                added += 1;
            }
        }
        for (ns, id) in orphans {
            if let Some(g) = out.get_mut(&ns) {
                g.mark_dirty(id);
            }
        }
        Ok((out, added))
    }

    /// After a failed commit: replaces the in-memory graph of `ns` with the committed one.
    fn restore_graph(&self, ns: &str) {
        match self.load_graphs(Some(ns)) {
            Ok((mut loaded, _)) => {
                if self.index.replace(ns, loaded.remove(ns)).is_err() {
                    tracing::error!("memory: the vector index of {ns} is poisoned");
                }
                self.wake_indexer();
            }
            Err(e) => tracing::error!("memory: reloading the graph of {ns}: {e}"),
        }
    }

    /// Checkpoints every graph into `txn`: writes the nodes changed since the last
    /// checkpoint and moves `GRAPH_THROUGH` to the lowest record id not linked yet (or the
    /// next record id), so that every committed record is either in `GRAPH` or added again on
    /// load. Dirty marks, links and the bound are taken together under the graphs' write lock
    /// (the indexer links concurrently); they are returned so that a failed commit can put
    /// them back ([`Memory::uncheckpoint`]).
    fn checkpoint(&self, txn: &WriteTransaction) -> Result<Checkpoint, MemoryError> {
        // (namespace, id) → the node's row, or None to remove it.
        type Row = ((String, u64), Option<Vec<u8>>);
        let mut rows: Vec<Row> = Vec::new();
        let mut taken = Checkpoint::default();
        let through = {
            let mut graphs = self.index.graphs_mut().map_err(|_| poisoned())?;
            taken.changes = self.graph_changes.swap(0, Ordering::Relaxed);
            let mut through = u64::MAX;
            for (ns, g) in graphs.iter_mut() {
                let dirty = g.take_dirty();
                for &id in &dirty {
                    let row = g
                        .links_of(id)
                        .map(|(tag, links)| tables::encode_node(tag, &links));
                    rows.push(((ns.clone(), id), row));
                }
                taken.dirty.push((ns.clone(), dirty));
                if let Some(id) = g.min_unlinked() {
                    through = through.min(id);
                }
            }
            through
        };
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut t = txn.open_table(tables::GRAPH)?;
        for ((ns, id), row) in &rows {
            match row {
                Some(b) => t.insert((ns.as_str(), *id), b.as_slice())?,
                None => t.remove((ns.as_str(), *id))?,
            };
        }
        let mut meta = txn.open_table(tables::META)?;
        let next = meta.get("next_id")?.map_or(1, |v| v.value());
        meta.insert(GRAPH_THROUGH, through.min(next))?;
        Ok(taken)
    }

    /// After a checkpoint failed to commit: its nodes are dirty again.
    fn uncheckpoint(&self, taken: Checkpoint) {
        if let Ok(mut graphs) = self.index.graphs_mut() {
            for (ns, ids) in taken.dirty {
                if let Some(g) = graphs.get_mut(&ns) {
                    for id in ids {
                        g.mark_dirty(id);
                    }
                }
            }
        }
        self.graph_changes
            .fetch_add(taken.changes, Ordering::Relaxed);
    }

    /// Wakes the indexer (unlinked vectors were added).
    fn wake_indexer(&self) {
        if let Some(ix) = &self.indexer {
            ix.wake();
        }
    }

    /// Vectors stored but not linked into a graph yet (searched exactly until they are).
    pub fn unindexed(&self) -> usize {
        self.index.unlinked()
    }

    /// Holds the indexer still (tests look at unlinked vectors).
    #[cfg(test)]
    fn pause_indexer(&self, paused: bool) {
        if let Some(ix) = &self.indexer {
            ix.set_paused(paused);
        }
    }

    /// Waits up to `timeout` for the indexer to link every vector stored so far; returns
    /// whether it did.
    pub fn wait_indexed(&self, timeout: std::time::Duration) -> bool {
        match &self.indexer {
            Some(ix) => ix.wait_idle(timeout) && self.unindexed() == 0,
            None => self.unindexed() == 0,
        }
    }

    /// Runs `f` in one write transaction under the writer lock and commits durably; on any
    /// failure the in-memory graphs of `touched` namespaces are reloaded from the last commit.
    fn write<T>(
        &self,
        touched: &[&str],
        f: impl FnOnce(&WriteTransaction) -> Result<T, MemoryError>,
    ) -> Result<T, MemoryError> {
        self.write_sized(0, touched, f)
    }

    /// [`Memory::write`] for a write of about `payload` bytes: refused with 507 up front when
    /// the disk cannot take it (see `Store::ensure_space`).
    fn write_sized<T>(
        &self,
        payload: u64,
        touched: &[&str],
        f: impl FnOnce(&WriteTransaction) -> Result<T, MemoryError>,
    ) -> Result<T, MemoryError> {
        self.write_logged(payload, touched, |txn| f(txn).map(|v| (v, None)))
    }

    /// [`Memory::write_sized`] for a write that may be acknowledged through the journal: when
    /// `f` also returns the write's [`journal::Entry`], the entry is appended and synced and
    /// the transaction commits without a sync (see `journal.rs`); any other write commits
    /// durably and so makes every journaled write before it durable too. When enough keyword
    /// postings are unmerged, a merge follows in a transaction of its own (its failure is
    /// logged, never the write's).
    fn write_logged<T>(
        &self,
        payload: u64,
        touched: &[&str],
        f: impl FnOnce(&WriteTransaction) -> Result<(T, Option<journal::Entry>), MemoryError>,
    ) -> Result<T, MemoryError> {
        // Postings, vector and graph links roughly triple a record; B-tree pages copy-on-write.
        disk::ensure_space(&self.path, 4 * payload + (64 << 10))?;
        let _w = self.writer.lock().map_err(|_| poisoned())?;
        let _busy = Busy::enter(&self.writing);
        let result = self.transact(touched, false, f);
        if result.is_ok() {
            self.merge_if_due();
        }
        result
    }

    /// Merges the unmerged keyword postings into a segment when they reach
    /// [`MERGE_POSTINGS_EVERY`] records (or a merge was asked for), in its own durable
    /// transaction (the writer lock is held). Skipped while the disk cannot take it, and for
    /// a minute after a failure: the postings stay in the view meanwhile, and their records'
    /// texts keep them durable.
    fn merge_if_due(&self) {
        let asked = self.merge_now.swap(false, Ordering::Relaxed);
        let records = self.pending.records();
        if !asked && records < MERGE_POSTINGS_EVERY {
            return;
        }
        if !asked
            && self
                .merge_retry
                .lock()
                .is_ok_and(|r| r.is_some_and(|t| std::time::Instant::now() < t))
        {
            return;
        }
        // A segment takes roughly 4 bytes a posting and a record has about a dozen: room for
        // the segment, the pages it copies and the reserve.
        let need = (records as u64).saturating_mul(256) + (1 << 20);
        if disk::ensure_space(&self.path, need).is_err() {
            tracing::debug!("memory: too little space to merge keyword postings now");
            return;
        }
        let failed = self.transact(&[], true, |_| Ok(((), None))).err();
        if let Some(e) = &failed {
            tracing::warn!(
                "memory: merging {records} records' keyword postings failed ({e}); they stay \
                 unmerged in memory, and the merge is tried again in a minute"
            );
        }
        if let Ok(mut retry) = self.merge_retry.lock() {
            *retry = failed.map(|_| std::time::Instant::now() + std::time::Duration::from_secs(60));
        }
    }

    /// One write transaction (the writer lock is held): with `merge`, the unmerged postings are
    /// written as a segment first; then `f` runs; see [`Memory::write_logged`] for how it
    /// commits. Every transaction that changes the unmerged postings moves `META[EPOCH]` on,
    /// and the view follows after the commit, so a search's snapshot pairs a view and a read
    /// transaction of the same epoch.
    fn transact<T>(
        &self,
        touched: &[&str],
        merge: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<(T, Option<journal::Entry>), MemoryError>,
    ) -> Result<T, MemoryError> {
        let result = (|| {
            self.staged.lock().map_err(|_| poisoned())?.clear();
            let mut txn = self.db.begin_write()?;
            self.flush_access(&txn)?;
            let through = if merge {
                Some(self.merge_postings(&txn)?)
            } else {
                None
            };
            let (v, entry) = f(&txn)?;
            let checkpoint = self.checkpoint_now.swap(false, Ordering::Relaxed)
                || self.graph_changes.load(Ordering::Relaxed) >= CHECKPOINT_EVERY;
            let staged = std::mem::take(&mut *self.staged.lock().map_err(|_| poisoned())?);
            let epoch = if through.is_some() || !staged.is_empty() {
                let e = self.pending.next_epoch()?;
                txn.open_table(tables::META)?.insert(pending::EPOCH, e)?;
                Some(e)
            } else {
                None
            };
            let mut taken = None;
            let mut journal = self.journal.lock().map_err(|_| poisoned())?;
            // Journaled: a single remember, unless the journal is due for a durable commit or
            // this write checkpoints anyway (large; it commits durably).
            let logged = match (entry, journal.as_ref()) {
                (Some(e), Some(j)) if !j.full() && !checkpoint => Some(e),
                _ => None,
            };
            let done = (|| {
                if checkpoint {
                    taken = Some(self.checkpoint(&txn)?);
                }
                match (logged, journal.as_mut()) {
                    (Some(e), Some(j)) => {
                        txn.open_table(tables::META)?
                            .insert(JOURNAL_SEQ, j.next_seq())?;
                        txn.set_durability(redb::Durability::None)?;
                        let at = j.append(&e).map_err(journal_error)?;
                        if let Err(err) = txn.commit() {
                            // Told it failed, so it must not come back in a replay.
                            if let Err(e) = j.rewind(at) {
                                tracing::error!("memory: taking back a journal entry: {e}");
                            }
                            return Err(err.into());
                        }
                    }
                    (_, j) => {
                        txn.commit()?;
                        if let Some(j) = j {
                            j.restart();
                        }
                    }
                }
                Ok::<_, MemoryError>(())
            })();
            drop(journal);
            if let Err(e) = done {
                if let Some(t) = taken {
                    self.uncheckpoint(t);
                }
                if checkpoint {
                    self.checkpoint_now.store(true, Ordering::Relaxed);
                }
                return Err(e);
            }
            self.pending.apply(staged, through, epoch);
            Ok(v)
        })();
        if result.is_err() {
            // The access counts taken for this transaction are lost with it: harmless.
            for ns in touched {
                self.restore_graph(ns);
            }
        }
        result
    }

    fn flush_access(&self, txn: &WriteTransaction) -> Result<(), MemoryError> {
        let log: Vec<(u64, (u64, u64))> = match self.access_log.lock() {
            Ok(mut l) => l.drain().collect(),
            Err(_) => return Ok(()),
        };
        if log.is_empty() {
            return Ok(());
        }
        let mut t = txn.open_table(tables::RECORDS)?;
        for (id, (count, at)) in log {
            let Some(mut r) = t.get(id)?.map(|v| decode_record(v.value())).transpose()? else {
                continue;
            };
            r.access_count += count;
            r.accessed_ms = r.accessed_ms.max(at);
            t.insert(id, encode(&r).as_slice())?;
        }
        Ok(())
    }

    /// Writes buffered access statistics, checkpoints the graph and commits durably what the
    /// journal holds (called periodically and at shutdown).
    pub fn flush(&self) -> Result<(), MemoryError> {
        let graph = self.graph_changes.load(Ordering::Relaxed) > 0
            || self
                .index
                .graphs()
                .is_ok_and(|g| g.values().any(Hnsw::has_dirty));
        let journaled = self
            .journal
            .lock()
            .map_err(|_| poisoned())?
            .as_ref()
            .is_some_and(|j| !j.is_empty());
        if !graph && !journaled && self.access_log.lock().map(|l| l.is_empty()).unwrap_or(true) {
            return Ok(());
        }
        if graph {
            self.checkpoint_now.store(true, Ordering::Relaxed);
        }
        // Unmerged postings need no flush: those not in POSTINGS_NEW are read again from the
        // records' texts when memory opens, and merges wait for MERGE_POSTINGS_EVERY records.
        self.write(&[], |_| Ok(()))
    }

    fn note_access(&self, ids: impl IntoIterator<Item = u64>) {
        let now = now_ms();
        if let Ok(mut l) = self.access_log.lock() {
            for id in ids {
                let e = l.entry(id).or_insert((0, now));
                e.0 += 1;
                e.1 = now;
            }
        }
    }

    /// The embedding of `text` for a write: the client's (checked) or the model's.
    fn embedding_for(
        &self,
        text: &str,
        given: Option<&[f32]>,
    ) -> Result<Option<QVec>, MemoryError> {
        let dims = self.dims()?;
        match given {
            Some(v) => {
                if dims != 0 && v.len() != dims {
                    return Err(InputError::Invalid(format!(
                        "embedding has {} dimensions; this memory uses {dims}",
                        v.len()
                    ))
                    .into());
                }
                Ok(Some(QVec::quantize(v).map_err(|e| {
                    InputError::Invalid(format!("embedding: {e}"))
                })?))
            }
            // A model that fails (a broken file) degrades the write to keyword-only rather
            // than refusing it; the answer says `embedded: false`.
            None => Ok(self.embed_one(text)),
        }
    }

    /// The model's vectors of `texts`, [`jsonl::EMBED_BATCH`] at a time; `None` for each
    /// without a model or when it fails (the write is then keyword-only, as for one record).
    fn embed_many(&self, texts: &[&str]) -> Vec<Option<QVec>> {
        let mut out = vec![None; texts.len()];
        let Some(e) = &self.embedder else {
            return out;
        };
        for (c, chunk) in texts.chunks(jsonl::EMBED_BATCH).enumerate() {
            match e.embed(chunk) {
                Ok(vecs) if vecs.len() == chunk.len() => {
                    for (k, v) in vecs.into_iter().enumerate() {
                        out[c * jsonl::EMBED_BATCH + k] = QVec::quantize(&v)
                            .map_err(|err| {
                                tracing::warn!("memory: embedding of {}: {err}", e.model())
                            })
                            .ok();
                    }
                }
                Ok(_) => tracing::warn!(
                    "memory: embedding model {} answered the wrong number of vectors",
                    e.model()
                ),
                Err(err) => tracing::warn!("memory: embedding model {} failed: {err}", e.model()),
            }
        }
        out
    }

    /// The model's vector of `text`, or `None` without a model or when it fails.
    fn embed_one(&self, text: &str) -> Option<QVec> {
        let e = self.embedder.as_ref()?;
        match e.embed(&[text]).map(|mut v| v.pop()) {
            Ok(Some(v)) => QVec::quantize(&v)
                .map_err(|err| tracing::warn!("memory: embedding of {}: {err}", e.model()))
                .ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!("memory: embedding model {} failed: {err}", e.model());
                None
            }
        }
    }

    /// Remembers a record; returns once it is durable.
    pub fn remember(&self, access: &Access, new: NewRecord) -> Result<Remembered, MemoryError> {
        let (tier, ns) = new.validate()?;
        if !access.can_write(&ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to write namespace {ns:?}"
            )));
        }
        let vec = self.embedding_for(&new.text, new.embedding.as_deref())?;
        let now = now_ms();
        let size =
            (new.text.len() + new.metadata.as_ref().map_or(0, |m| m.to_string().len())) as u64;
        self.write_logged(size, &[&ns], |txn| {
            let entry = self.decide(txn, tier, &ns, &new, vec, now)?;
            let done = self.apply(txn, &entry)?;
            Ok((done, Some(entry)))
        })
    }

    /// Remembers several records in one durable transaction, each as [`Memory::remember`]
    /// would (deduplication, versions and evictions see the batch's earlier records); all or
    /// none are written. Records without an embedding are embedded 32 at a time. At most 500
    /// records a call.
    pub fn remember_batch(
        &self,
        access: &Access,
        batch: Vec<NewRecord>,
    ) -> Result<Vec<Remembered>, MemoryError> {
        if batch.len() > jsonl::IMPORT_BATCH {
            return Err(InputError::TooLarge(format!(
                "at most {} records per batch",
                jsonl::IMPORT_BATCH
            ))
            .into());
        }
        let mut checked = Vec::with_capacity(batch.len());
        for (i, new) in batch.into_iter().enumerate() {
            let (tier, ns) = new.validate().map_err(|e| match e {
                InputError::Invalid(m) => InputError::Invalid(format!("record {i}: {m}")),
                other => other,
            })?;
            if !access.can_write(&ns) {
                return Err(MemoryError::Forbidden(format!(
                    "no capability to write namespace {ns:?}"
                )));
            }
            let vec = match new.embedding.as_deref() {
                Some(v) => self.embedding_for(&new.text, Some(v))?,
                None => None,
            };
            checked.push((tier, ns, new, vec));
        }
        let todo: Vec<usize> = (0..checked.len())
            .filter(|&i| checked[i].2.embedding.is_none())
            .collect();
        let texts: Vec<&str> = todo.iter().map(|&i| checked[i].2.text.as_str()).collect();
        for (i, v) in todo.into_iter().zip(self.embed_many(&texts)) {
            checked[i].3 = v;
        }
        let mut touched: Vec<&str> = checked.iter().map(|c| c.1.as_str()).collect();
        touched.sort();
        touched.dedup();
        let now = now_ms();
        let size = checked
            .iter()
            .map(|c| {
                (c.2.text.len() + c.2.metadata.as_ref().map_or(0, |m| m.to_string().len())) as u64
            })
            .sum();
        self.write_sized(size, &touched, |txn| {
            let mut out = Vec::with_capacity(checked.len());
            // Runs of records that need no decision (not semantic, procedural or working)
            // are written together, each table opened once; ids stay in input order.
            let mut run: Vec<usize> = Vec::new();
            let flush = |run: &mut Vec<usize>, out: &mut Vec<Remembered>| {
                let Some(&first) = run.first() else {
                    return Ok::<_, MemoryError>(());
                };
                let ns = checked[first].1.as_str();
                let mut info = ns_info(txn, ns)?;
                let id0 = next_ids(txn, run.len() as u64)?;
                let records: Vec<Record> = run
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| {
                        let (tier, _, new, vec) = &checked[i];
                        new_record(id0 + k as u64, *tier, ns, new, vec.is_some(), now)
                    })
                    .collect();
                let refs: Vec<(&Record, Option<&QVec>)> = records
                    .iter()
                    .zip(run.iter())
                    .map(|(r, &i)| (r, checked[i].3.as_ref()))
                    .collect();
                self.insert_records(txn, &refs, &mut info)?;
                put_ns_info(txn, ns, &info)?;
                out.extend(records.into_iter().map(|r| Remembered {
                    embedded: r.embedded,
                    record: r,
                    deduplicated: None,
                    evicted: Vec::new(),
                }));
                run.clear();
                Ok(())
            };
            for (i, (tier, ns, new, vec)) in checked.iter().enumerate() {
                let plain = matches!(tier, Tier::Episodic);
                if plain && run.first().is_none_or(|&f| checked[f].1 == *ns) {
                    run.push(i);
                    continue;
                }
                flush(&mut run, &mut out)?;
                if plain {
                    run.push(i);
                    continue;
                }
                let entry = self.decide(txn, *tier, ns, new, vec.clone(), now)?;
                out.push(self.apply(txn, &entry)?);
            }
            flush(&mut run, &mut out)?;
            Ok(out)
        })
    }

    /// What remembering `new` does to the current state: merge into a semantic duplicate, or
    /// a new record (with its id, times and version) and the working records it evicts.
    fn decide(
        &self,
        txn: &WriteTransaction,
        tier: Tier,
        ns: &str,
        new: &NewRecord,
        vec: Option<QVec>,
        now: u64,
    ) -> Result<journal::Entry, MemoryError> {
        ns_info(txn, ns)?; // the namespace exists
        // Semantic memory is deduplicated by meaning: an exact normal-form match, or a
        // vector at least DEDUP_SIMILARITY close.
        if tier == Tier::Semantic
            && let Some(existing) = self.find_duplicate(txn, ns, &new.text, vec.as_ref())?
        {
            return Ok(journal::Entry::Merge {
                id: existing,
                at_ms: now,
                importance: new.importance.unwrap_or(0.5),
                pinned: new.pinned,
            });
        }
        let id = next_id(txn)?;
        let mut r = new_record(id, tier, ns, new, vec.is_some(), now);
        let mut supersedes = None;
        if tier == Tier::Procedural {
            let key = r.key.clone().unwrap_or_default();
            let p = txn.open_table(tables::PROCEDURES)?;
            let last = p
                .range((ns, key.as_str(), 0u32)..=(ns, key.as_str(), u32::MAX))?
                .next_back()
                .transpose()?
                .map(|(k, v)| (k.value().2, v.value()));
            r.version = Some(last.map_or(1, |(v, _)| v + 1));
            supersedes = last.map(|(_, prev)| prev);
        }
        let mut evicted = Vec::new();
        if let (Tier::Working, Some(session)) = (tier, &r.session) {
            let ids: Vec<u64> = {
                let w = txn.open_multimap_table(tables::WORKING)?;
                w.get((ns, session.as_str()))?
                    .map(|v| v.map(|v| v.value()))
                    .collect::<Result<_, _>>()?
            };
            // The new record makes one more; the oldest unpinned ones go.
            let mut excess = (ids.len() + 1).saturating_sub(record::WORKING_LIMIT);
            for old in ids {
                if excess == 0 {
                    break;
                }
                if !self.get_in(txn, old)?.is_some_and(|o| o.pinned) {
                    evicted.push(old);
                    excess -= 1;
                }
            }
        }
        Ok(journal::Entry::Insert {
            record: Box::new(r),
            vector: vec,
            evicted,
            supersedes,
        })
    }

    /// Carries out a [`journal::Entry`] inside `txn`: for `remember`, and again for the
    /// journal's entries a crash kept from a durable commit.
    fn apply(
        &self,
        txn: &WriteTransaction,
        entry: &journal::Entry,
    ) -> Result<Remembered, MemoryError> {
        match entry {
            journal::Entry::Merge {
                id,
                at_ms,
                importance,
                pinned,
            } => {
                let mut t = txn.open_table(tables::RECORDS)?;
                let mut r = match t.get(*id)? {
                    Some(v) => decode_record(v.value())?,
                    None => return Err(MemoryError::NotFound(format!("record {id}"))),
                };
                r.access_count += 1;
                r.accessed_ms = *at_ms;
                r.importance = r.importance.max(*importance);
                r.pinned |= *pinned;
                t.insert(*id, encode(&r).as_slice())?;
                Ok(Remembered {
                    embedded: r.embedded,
                    record: r,
                    deduplicated: Some(*id),
                    evicted: Vec::new(),
                })
            }
            journal::Entry::Insert {
                record: r,
                vector,
                evicted,
                supersedes,
            } => {
                let ns = r.namespace.as_str();
                let mut info = ns_info(txn, ns)?;
                // A replayed record's id is past the committed counter; a fresh one is not.
                {
                    let mut meta = txn.open_table(tables::META)?;
                    let next = meta.get("next_id")?.map_or(1, |v| v.value());
                    if next <= r.id {
                        meta.insert("next_id", r.id + 1)?;
                    }
                }
                if let (Tier::Procedural, Some(version)) = (r.tier, r.version) {
                    let key = r.key.as_deref().unwrap_or_default();
                    txn.open_table(tables::PROCEDURES)?
                        .insert((ns, key, version), r.id)?;
                    if let Some(prev) = supersedes {
                        self.modify(txn, *prev, |old| old.superseded_by = Some(r.id))?;
                    }
                }
                self.insert_record(txn, r, vector.as_ref(), &mut info)?;
                for old in evicted {
                    self.delete_record(txn, *old, &mut info)?;
                }
                put_ns_info(txn, ns, &info)?;
                Ok(Remembered {
                    embedded: vector.is_some(),
                    record: (**r).clone(),
                    deduplicated: None,
                    evicted: evicted.clone(),
                })
            }
        }
    }

    fn find_duplicate(
        &self,
        txn: &WriteTransaction,
        ns: &str,
        text: &str,
        vec: Option<&QVec>,
    ) -> Result<Option<u64>, MemoryError> {
        let key = dedup_key(text);
        if let Some(id) = txn
            .open_table(tables::DEDUP)?
            .get((ns, key.as_slice()))?
            .map(|v| v.value())
        {
            return Ok(Some(id));
        }
        let Some(v) = vec else {
            return Ok(None);
        };
        Ok(self
            .index
            .search(ns, v, 8, 64)
            .map_err(|_| poisoned())?
            .into_iter()
            .find(|(_, sim, tag)| *tag == Tier::Semantic.code() && *sim >= DEDUP_SIMILARITY)
            .map(|(id, _, _)| id))
    }

    /// Writes a new record and every index entry of it.
    fn insert_record(
        &self,
        txn: &WriteTransaction,
        r: &Record,
        vec: Option<&QVec>,
        info: &mut NamespaceInfo,
    ) -> Result<(), MemoryError> {
        self.insert_records(txn, &[(r, vec)], info)
    }

    /// Writes new records of one namespace (`info`'s) and every index entry of them, each
    /// table opened once for the batch.
    fn insert_records(
        &self,
        txn: &WriteTransaction,
        batch: &[(&Record, Option<&QVec>)],
        info: &mut NamespaceInfo,
    ) -> Result<(), MemoryError> {
        let given: Vec<(u64, &QVec)> = batch
            .iter()
            .filter_map(|(r, v)| v.map(|v| (r.id, v)))
            .collect();
        self.check_vectors(txn, &given)?;
        let through = self.postings_through(txn)?;
        let mut records = txn.open_table(tables::RECORDS)?;
        let mut by_ns = txn.open_table(tables::BY_NAMESPACE)?;
        let mut new = None;
        let mut vectors = txn.open_table(tables::VECTORS)?;
        let mut dedup = None;
        let mut working = None;
        for (r, vec) in batch {
            let ns = r.namespace.as_str();
            records.insert(r.id, encode(r).as_slice())?;
            by_ns.insert((ns, r.id), r.tier.code())?;
            // A new record's postings stay unmerged in memory (its text has them, for a
            // reload) until the next merge writes them to a segment.
            let (counts, len) = text::term_counts(&r.text);
            if !counts.is_empty() {
                if r.id < through {
                    // Not a fresh id (never the case today): make the postings durable.
                    let t = match &mut new {
                        Some(t) => t,
                        None => new.insert(txn.open_table(tables::POSTINGS_NEW)?),
                    };
                    t.insert((ns, r.id), tables::encode_terms(len, &counts).as_slice())?;
                }
                self.stage(pending::Change::Add {
                    ns: ns.to_string(),
                    id: r.id,
                    len,
                    terms: counts,
                })?;
            }
            info.records += 1;
            info.terms += u64::from(len);
            if r.tier == Tier::Semantic {
                let t = match &mut dedup {
                    Some(t) => t,
                    None => dedup.insert(txn.open_table(tables::DEDUP)?),
                };
                t.insert((ns, dedup_key(&r.text).as_slice()), r.id)?;
            }
            if let (Tier::Working, Some(s)) = (r.tier, &r.session) {
                let t = match &mut working {
                    Some(t) => t,
                    None => working.insert(txn.open_multimap_table(tables::WORKING)?),
                };
                t.insert((ns, s.as_str()), r.id)?;
            }
            if let Some(v) = vec {
                vectors.insert(r.id, v.to_bytes().as_slice())?;
                self.index
                    .push(ns, r.id, (*v).clone(), r.tier.code(), false)
                    .map_err(|_| poisoned())?;
            }
        }
        if !given.is_empty() {
            self.wake_indexer();
        }
        Ok(())
    }

    /// Checks the vectors about to be stored for records `(id, vector)` against the memory's
    /// dimensions (the first vector sets them), and asks for a graph checkpoint in this
    /// transaction when one belongs to a record the last checkpoint covers (such records are
    /// not re-inserted on load, so their new node must be in the next checkpoint).
    fn check_vectors(
        &self,
        txn: &WriteTransaction,
        vectors: &[(u64, &QVec)],
    ) -> Result<(), MemoryError> {
        if vectors.is_empty() {
            return Ok(());
        }
        let mut meta = txn.open_table(tables::META)?;
        let through = meta.get(GRAPH_THROUGH)?.map(|t| t.value());
        let mut dims = meta.get("dims")?.map_or(0, |d| d.value()) as usize;
        for (id, v) in vectors {
            if through.is_none_or(|t| *id < t) {
                self.checkpoint_now.store(true, Ordering::Relaxed);
            }
            if dims == 0 {
                dims = v.dims();
                meta.insert("dims", dims as u64)?;
            } else if dims != v.dims() {
                return Err(InputError::Invalid(format!(
                    "embedding has {} dimensions; this memory uses {dims}",
                    v.dims()
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Stores the vector of record `id` and hands it to the index (`replaces`: the record
    /// may already have one).
    fn add_vector(
        &self,
        txn: &WriteTransaction,
        ns: &str,
        id: u64,
        v: &QVec,
        tier: Tier,
        replaces: bool,
    ) -> Result<(), MemoryError> {
        self.check_vectors(txn, &[(id, v)])?;
        txn.open_table(tables::VECTORS)?
            .insert(id, v.to_bytes().as_slice())?;
        self.index
            .push(ns, id, v.clone(), tier.code(), replaces)
            .map_err(|_| poisoned())?;
        self.wake_indexer();
        Ok(())
    }

    /// Deletes the stored vector of record `id` and takes it out of the index.
    fn drop_vector(&self, txn: &WriteTransaction, ns: &str, id: u64) -> Result<(), MemoryError> {
        txn.open_table(tables::VECTORS)?.remove(id)?;
        if self.index.remove(ns, id).map_err(|_| poisoned())? {
            self.graph_changes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Adds (or removes) the keyword postings of a text; returns its length in terms.
    fn index_terms(
        &self,
        txn: &WriteTransaction,
        ns: &str,
        id: u64,
        text: &str,
        add: bool,
    ) -> Result<u64, MemoryError> {
        let (counts, len) = text::term_counts(text);
        if counts.is_empty() {
            return Ok(u64::from(len));
        }
        // A record's postings are in exactly one place: unmerged in memory (from
        // POSTINGS_THROUGH on: its text holds them durably), unmerged in POSTINGS_NEW (an older
        // record's new text), or in a segment.
        let unmerged_tail = id >= self.postings_through(txn)?;
        if add {
            if !unmerged_tail {
                txn.open_table(tables::POSTINGS_NEW)?
                    .insert((ns, id), tables::encode_terms(len, &counts).as_slice())?;
            }
            self.stage(pending::Change::Add {
                ns: ns.to_string(),
                id,
                len,
                terms: counts,
            })?;
            return Ok(u64::from(len));
        }
        if unmerged_tail
            || txn
                .open_table(tables::POSTINGS_NEW)?
                .remove((ns, id))?
                .is_some()
        {
            self.stage(pending::Change::Remove {
                ns: ns.to_string(),
                id,
                terms: counts.into_iter().map(|(t, _)| t).collect(),
            })?;
            return Ok(u64::from(len));
        }
        for (term, _) in &counts {
            postings::remove(txn, ns, term, id)?;
        }
        Ok(u64::from(len))
    }

    /// Writes every unmerged posting (the view's: this transaction's own changes come after)
    /// as a new segment per namespace, empties `POSTINGS_NEW`, and moves `POSTINGS_THROUGH` to
    /// the next record id, which it returns. Compactions the new segments make due run only
    /// while the disk has room for them.
    fn merge_postings(&self, txn: &WriteTransaction) -> Result<u64, MemoryError> {
        let room = |bytes: u64| disk::ensure_space(&self.path, bytes).is_ok();
        for (ns, terms) in self.pending.collect()? {
            postings::add_segment(
                txn,
                &ns,
                terms.iter().map(|(t, l)| (&**t, l.as_slice())),
                &room,
            )?;
        }
        txn.open_table(tables::POSTINGS_NEW)?.retain(|_, _| false)?;
        let mut meta = txn.open_table(tables::META)?;
        let through = meta.get("next_id")?.map_or(1, |v| v.value());
        meta.insert(tables::POSTINGS_THROUGH, through)?;
        Ok(through)
    }

    /// Merges every unmerged keyword posting now (tests).
    #[cfg(test)]
    pub(crate) fn merge_postings_now(&self) -> Result<(), MemoryError> {
        self.merge_now.store(true, Ordering::Relaxed);
        let _w = self.writer.lock().map_err(|_| poisoned())?;
        self.merge_if_due();
        match self.merge_retry.lock().map_err(|_| poisoned())?.is_some() {
            true => Err(StorageError::MergeFailed.into()),
            false => Ok(()),
        }
    }

    /// `META[POSTINGS_THROUGH]` in `txn`.
    fn postings_through(&self, txn: &WriteTransaction) -> Result<u64, MemoryError> {
        Ok(txn
            .open_table(tables::META)?
            .get(tables::POSTINGS_THROUGH)?
            .map_or(1, |v| v.value()))
    }

    /// Notes a change to the unmerged postings, applied when the running write commits.
    fn stage(&self, change: pending::Change) -> Result<(), MemoryError> {
        self.staged.lock().map_err(|_| poisoned())?.push(change);
        Ok(())
    }

    /// Deletes a record and every index entry of it inside `txn`; returns it.
    fn delete_record(
        &self,
        txn: &WriteTransaction,
        id: u64,
        info: &mut NamespaceInfo,
    ) -> Result<Option<Record>, MemoryError> {
        let Some(r) = self.get_in(txn, id)? else {
            return Ok(None);
        };
        let ns = r.namespace.as_str();
        txn.open_table(tables::RECORDS)?.remove(id)?;
        txn.open_table(tables::BY_NAMESPACE)?.remove((ns, id))?;
        let len = self.index_terms(txn, ns, id, &r.text, false)?;
        info.records = info.records.saturating_sub(1);
        info.terms = info.terms.saturating_sub(len);
        if r.tier == Tier::Semantic {
            let mut d = txn.open_table(tables::DEDUP)?;
            let k = dedup_key(&r.text);
            if d.get((ns, k.as_slice()))?.map(|v| v.value()) == Some(id) {
                d.remove((ns, k.as_slice()))?;
            }
        }
        if let (Tier::Working, Some(s)) = (r.tier, &r.session) {
            txn.open_multimap_table(tables::WORKING)?
                .remove((ns, s.as_str()), id)?;
        }
        if let (Tier::Procedural, Some(key), Some(version)) = (r.tier, &r.key, r.version) {
            let mut p = txn.open_table(tables::PROCEDURES)?;
            p.remove((ns, key.as_str(), version))?;
            // Deleting the newest version makes the previous one current again.
            let prev = p
                .range((ns, key.as_str(), 0u32)..(ns, key.as_str(), version))?
                .next_back()
                .transpose()?
                .map(|(_, v)| v.value());
            drop(p);
            if r.superseded_by.is_none()
                && let Some(prev) = prev
            {
                self.modify(txn, prev, |o| o.superseded_by = None)?;
            }
        }
        if r.embedded {
            self.drop_vector(txn, ns, id)?;
        }
        // A deleted summary releases its sources; a deleted source is purged from its
        // consolidation (which can then no longer be undone).
        let mut c = txn.open_table(tables::CONSOLIDATIONS)?;
        let removed = c.remove(id)?.map(|v| v.value().to_vec());
        if let Some(v) = removed {
            let cons: consolidate::Consolidation = serde_json::from_slice(&v)
                .map_err(|e| decode_error(format!("consolidation {id}"), e))?;
            drop(c);
            for s in cons.sources {
                self.modify(txn, s, |o| o.consolidated_into = None)?;
            }
        } else if let Some(into) = r.consolidated_into {
            let stored = c.get(into)?.map(|v| v.value().to_vec());
            if let Some(v) = stored {
                let mut cons: consolidate::Consolidation = serde_json::from_slice(&v)
                    .map_err(|e| decode_error(format!("consolidation {into}"), e))?;
                cons.sources.retain(|s| *s != id);
                cons.purged.push(id);
                c.insert(into, encode(&cons).as_slice())?;
            }
        }
        Ok(Some(r))
    }

    /// Applies `f` to a stored record inside `txn` (no re-indexing); false if absent.
    fn modify(
        &self,
        txn: &WriteTransaction,
        id: u64,
        f: impl FnOnce(&mut Record),
    ) -> Result<bool, MemoryError> {
        let mut t = txn.open_table(tables::RECORDS)?;
        let Some(mut r) = t.get(id)?.map(|v| decode_record(v.value())).transpose()? else {
            return Ok(false);
        };
        let before = r.clone();
        f(&mut r);
        if r != before {
            t.insert(id, encode(&r).as_slice())?;
        }
        Ok(true)
    }

    fn get_in(&self, txn: &WriteTransaction, id: u64) -> Result<Option<Record>, MemoryError> {
        txn.open_table(tables::RECORDS)?
            .get(id)?
            .map(|v| decode_record(v.value()))
            .transpose()
    }

    /// One record (counts as an access).
    pub fn get(&self, access: &Access, id: u64) -> Result<Record, MemoryError> {
        let txn = self.db.begin_read()?;
        let r = txn
            .open_table(tables::RECORDS)?
            .get(id)?
            .map(|v| decode_record(v.value()))
            .transpose()?
            .filter(|r| access.can_read(&r.namespace))
            .ok_or_else(|| MemoryError::NotFound(format!("no memory record {id}")))?;
        self.note_access([id]);
        Ok(r)
    }

    /// Changes a record's text, metadata, importance or pin.
    pub fn update(&self, access: &Access, id: u64, u: RecordUpdate) -> Result<Record, MemoryError> {
        u.validate()?;
        let current = self.get(access, id)?;
        let ns = current.namespace.clone();
        if !access.can_write(&ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to write namespace {ns:?}"
            )));
        }
        let vec = match &u.text {
            Some(t) if *t != current.text => Some(self.embedding_for(t, None)?),
            _ => None,
        };
        self.write(&[&ns], |txn| {
            let mut r = self
                .get_in(txn, id)?
                .ok_or_else(|| MemoryError::NotFound(format!("no memory record {id}")))?;
            let mut info = ns_info(txn, &ns)?;
            if let Some(t) = &u.text
                && *t != r.text
            {
                let old = self.index_terms(txn, &ns, id, &r.text, false)?;
                let new = self.index_terms(txn, &ns, id, t, true)?;
                info.terms = info.terms.saturating_sub(old) + new;
                if r.tier == Tier::Semantic {
                    let mut d = txn.open_table(tables::DEDUP)?;
                    d.remove((ns.as_str(), dedup_key(&r.text).as_slice()))?;
                    d.insert((ns.as_str(), dedup_key(t).as_slice()), id)?;
                }
                r.text = t.clone();
                match vec.clone().flatten() {
                    Some(v) => {
                        self.add_vector(txn, &ns, id, &v, r.tier, true)?;
                        r.embedded = true;
                    }
                    None => {
                        if r.embedded {
                            self.drop_vector(txn, &ns, id)?;
                        }
                        r.embedded = false;
                    }
                }
            }
            if let Some(serde_json::Value::Object(m)) = &u.metadata {
                r.metadata = m.clone();
            }
            if let Some(i) = u.importance {
                r.importance = i;
                r.decayed_ms = now_ms();
            }
            if let Some(p) = u.pinned {
                r.pinned = p;
            }
            txn.open_table(tables::RECORDS)?
                .insert(id, encode(&r).as_slice())?;
            put_ns_info(txn, &ns, &info)?;
            Ok(r)
        })
    }

    /// Deletes a record; returns it.
    pub fn delete(&self, access: &Access, id: u64) -> Result<Record, MemoryError> {
        let current = self.get(access, id)?;
        let ns = current.namespace.clone();
        if !access.can_write(&ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to write namespace {ns:?}"
            )));
        }
        self.write(&[&ns], |txn| {
            let mut info = ns_info(txn, &ns)?;
            let r = self
                .delete_record(txn, id, &mut info)?
                .ok_or_else(|| MemoryError::NotFound(format!("no memory record {id}")))?;
            put_ns_info(txn, &ns, &info)?;
            Ok(r)
        })
    }

    /// Records of a namespace in id order, `limit` (1–500) after id `after`, optionally of
    /// one tier.
    pub fn list(
        &self,
        access: &Access,
        ns: &str,
        tier: Option<Tier>,
        after: u64,
        limit: usize,
    ) -> Result<Page, MemoryError> {
        self.check_read(access, ns)?;
        if !(1..=500).contains(&limit) {
            return Err(InputError::Invalid("limit must be between 1 and 500".into()).into());
        }
        let txn = self.db.begin_read()?;
        let by_ns = txn.open_table(tables::BY_NAMESPACE)?;
        let records = txn.open_table(tables::RECORDS)?;
        let mut out = Vec::new();
        let mut next = None;
        for row in by_ns.range((ns, after.saturating_add(1))..=(ns, u64::MAX))? {
            let (k, t) = row?;
            if tier.is_some_and(|want| want.code() != t.value()) {
                continue;
            }
            if out.len() == limit {
                next = out.last().map(|r: &Record| r.id);
                break;
            }
            let id = k.value().1;
            if let Some(v) = records.get(id)? {
                out.push(decode_record(v.value())?);
            }
        }
        Ok(Page { records: out, next })
    }

    fn check_read(&self, access: &Access, ns: &str) -> Result<(), MemoryError> {
        record::check_namespace(ns).map_err(InputError::Invalid)?;
        if !access.can_read(ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to read namespace {ns:?}"
            )));
        }
        let txn = self.db.begin_read()?;
        if txn.open_table(tables::NAMESPACES)?.get(ns)?.is_none() {
            return Err(MemoryError::UnknownNamespace(ns.into()));
        }
        Ok(())
    }

    /// Every namespace the caller may read, with its settings and counters.
    pub fn namespaces(
        &self,
        access: &Access,
    ) -> Result<BTreeMap<String, NamespaceInfo>, MemoryError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(tables::NAMESPACES)?;
        let mut out = BTreeMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if access.can_read(k.value()) {
                let info: NamespaceInfo = serde_json::from_slice(v.value())
                    .map_err(|e| decode_error(format!("namespace {:?}", k.value()), e))?;
                out.insert(k.value().to_string(), info);
            }
        }
        Ok(out)
    }

    /// Creates a namespace or changes its quota.
    pub fn put_namespace(
        &self,
        access: &Access,
        ns: &str,
        quota: Option<u64>,
    ) -> Result<NamespaceInfo, MemoryError> {
        record::check_namespace(ns).map_err(InputError::Invalid)?;
        if !access.can_write(ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to write namespace {ns:?}"
            )));
        }
        if quota == Some(0) {
            return Err(InputError::Invalid("quota must be at least 1".into()).into());
        }
        self.write(&[], |txn| {
            let mut info = match ns_info(txn, ns) {
                Ok(i) => i,
                Err(MemoryError::UnknownNamespace(_)) => NamespaceInfo::default(),
                Err(e) => return Err(e),
            };
            if let Some(q) = quota {
                info.quota = q;
            }
            put_ns_info(txn, ns, &info)?;
            Ok(info)
        })
    }

    /// Deletes an empty namespace (409 while it holds records).
    pub fn delete_namespace(&self, access: &Access, ns: &str) -> Result<(), MemoryError> {
        self.check_read(access, ns)?;
        if !access.can_write(ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to write namespace {ns:?}"
            )));
        }
        self.write(&[], |txn| {
            let info = ns_info(txn, ns)?;
            if info.records > 0 {
                return Err(MemoryError::Conflict(format!(
                    "namespace {ns:?} still holds {} records",
                    info.records
                )));
            }
            txn.open_table(tables::NAMESPACES)?.remove(ns)?;
            postings::drop_namespace(txn, ns)?;
            Ok(())
        })
    }

    /// Records in the store and bytes of the database file.
    pub fn stats(&self) -> Result<serde_json::Value, MemoryError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(tables::RECORDS)?.len()?;
        let vectors = txn.open_table(tables::VECTORS)?.len()?;
        Ok(serde_json::json!({
            "records": records,
            "vectors": vectors,
            // Stored vectors the indexer has not linked into a graph yet (searched exactly).
            "vectors_unlinked": self.unindexed(),
            "embedding_model": self.embedding_model(),
            "retrieval": if self.embedder.is_some() { "hybrid" } else { "keyword" },
        }))
    }
}

fn next_id(txn: &WriteTransaction) -> Result<u64, MemoryError> {
    next_ids(txn, 1)
}

/// Takes `n` consecutive record ids; returns the first.
fn next_ids(txn: &WriteTransaction, n: u64) -> Result<u64, MemoryError> {
    let mut meta = txn.open_table(tables::META)?;
    let id = meta.get("next_id")?.map_or(1, |v| v.value());
    meta.insert("next_id", id + n)?;
    Ok(id)
}

/// A journal write that failed (a full disk answers 507, as a failed commit does).
fn journal_error(e: std::io::Error) -> MemoryError {
    MemoryError::Store(StorageError::Journal(e))
}

/// Brings the memory tables of a store at schema version `found` to the current one (called
/// by the store's migration): creates what is missing and moves schema 2 and 3 keyword
/// postings into segments.
pub fn migrate(txn: &WriteTransaction, found: u64) -> Result<(), MemoryError> {
    tables::create(txn)?;
    if found == 2 || found == 3 {
        postings::migrate_to_segments(txn, found)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! Agent memory on redb: four tiers (working, episodic, semantic, procedural) in namespaces,
//! hybrid retrieval (BM25 + HNSW, fused by reciprocal rank), consolidation and forgetting.
//! The written promises are in `docs/memory.md`; the tests here and in `tests/tests/e2e/memory.rs`
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
mod namespaces;
mod open;
mod pending;
mod postings;
mod recall;
mod record;
mod records;
/// The engine's redb tables (whole-box backups copy them row by row).
pub mod tables;
mod text;
mod vector;
mod write;

pub use consolidate::{ConsolidationReport, Summarizer};
pub use disk::{RESERVE_BYTES, ensure_space, free_bytes};
pub use error::{MemoryError, StorageError, StorageKind};
pub use jsonl::ImportReport;
pub use namespaces::{Access, NamespaceInfo};
pub use open::migrate;
pub use recall::{Hit, Mode, Query, Recall};
pub use record::{InputError, NewRecord, Provenance, Record, RecordUpdate, Tier};

use error::{decode_error, poisoned};
use hnsw::Hnsw;
use namespaces::{ns_info, put_ns_info};
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
use write::{dedup_key, next_id, next_ids};

/// Semantic records at least this similar to an existing one are merged into it.
pub(crate) const DEDUP_SIMILARITY: f32 = 0.95;
/// Default record quota of a namespace.
pub(crate) const DEFAULT_QUOTA: u64 = 100_000;
/// Graph changes (vectors linked or removed) after which the next write also checkpoints the
/// graph; bounds the vectors the indexer links again after a power cut (in the background:
/// memory opens at once). Larger windows write each busy node fewer times.
pub(crate) const CHECKPOINT_EVERY: usize = 16384;
/// Records with unmerged keyword postings after which the next write merges them into a new
/// segment (`postings.rs`). Searches read unmerged postings from memory (`pending`), so this
/// bounds that view's size, the texts read again when memory opens, and how many level-0
/// segments a namespace gathers.
pub(crate) const MERGE_POSTINGS_EVERY: usize = 8192;
/// `META` key: every record with a smaller id has its current graph node in `GRAPH` (records
/// from this id on that `GRAPH` lacks are added from their vectors when the graph is loaded).
const GRAPH_THROUGH: &str = "graph_through";
/// `mem_meta` key: the sequence number of the last journal entry a commit included.
const JOURNAL_SEQ: &str = "journal_seq";

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
pub(crate) fn now_ms() -> u64 {
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

impl Memory {
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

#[cfg(test)]
mod tests;

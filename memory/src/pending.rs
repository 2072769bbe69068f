//! The keyword postings not merged into a segment yet, in memory by term.
//!
//! They are those of every record from `META[POSTINGS_THROUGH]` on (read again from the
//! records' texts when memory opens: a new record writes nothing to the keyword index on disk)
//! and those of `POSTINGS_NEW` (records below it whose text changed since the last merge).
//! This view holds them by term so that a keyword search reads them with one lookup per query
//! term, and a merge writes them out as one segment per namespace (`postings.rs`).
//!
//! Consistency with a reader's snapshot: a write changes the view only after its commit
//! (never for a transaction that fails). Every write transaction that changes the unmerged
//! postings (a merge, which writes the view's postings to segments, empties `POSTINGS_NEW`
//! and moves `POSTINGS_THROUGH` to the next record id; or a record added, changed or
//! deleted) sets `META["postings_epoch"]` to the view's epoch + 1; after the commit the view
//! takes the changes and that epoch. [`Pending::snapshot`] takes a read transaction and the
//! view's postings only when both epochs agree, so a search never counts a posting twice,
//! misses one, or sees a record's old and new terms mixed.

use super::{MemoryError, poisoned, tables};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable};
use rustc_hash::FxHashMap;
use std::sync::{Arc, RwLock};

/// `META` key: merges of the unmerged postings into segments committed so far.
pub const EPOCH: &str = "postings_epoch";

/// A posting: namespace, record id, term frequency << 32 | document length.
type Entry = (Arc<str>, u64, u64);

/// An unmerged posting of a query term: (index of the term in the query's terms, record id,
/// packed frequency and length).
pub type Hit = (usize, u64, u64);

/// A posting: record id, term frequency << 32 | document length.
pub type Posting = (u64, u64);

/// Terms and their postings, sorted by term.
pub type TermLists = Vec<(Box<str>, Vec<Posting>)>;

/// One write's change to the view, applied after its commit.
#[derive(Debug)]
pub enum Change {
    /// A record's postings became unmerged (a new record, or a new text).
    Add {
        /// Namespace.
        ns: String,
        /// Record id.
        id: u64,
        /// Document length in terms.
        len: u32,
        /// Terms and their frequencies.
        terms: Vec<(String, u32)>,
    },
    /// A record's unmerged postings went (deleted, or its text changed).
    Remove {
        /// Namespace.
        ns: String,
        /// Record id.
        id: u64,
        /// Its terms.
        terms: Vec<String>,
    },
}

#[derive(Default)]
struct Inner {
    /// Merges reflected here (equals `META[EPOCH]` once every commit is applied).
    epoch: u64,
    /// `META[POSTINGS_THROUGH]` as of that merge.
    through: u64,
    by_term: FxHashMap<Box<str>, Vec<Entry>>,
    /// Interned namespace names.
    names: FxHashMap<Box<str>, Arc<str>>,
    records: usize,
}

/// The unmerged postings (see the module documentation).
#[derive(Default)]
pub struct Pending {
    inner: RwLock<Inner>,
}

impl Pending {
    /// Loads the view: `POSTINGS_NEW`, and the texts of the records from
    /// `META[POSTINGS_THROUGH]` on; the epoch from `META`.
    pub fn load(txn: &ReadTransaction) -> Result<Pending, MemoryError> {
        let meta = txn.open_table(tables::META)?;
        let through = meta.get(tables::POSTINGS_THROUGH)?.map_or(1, |v| v.value());
        let mut inner = Inner {
            epoch: read_epoch(txn)?,
            through,
            ..Inner::default()
        };
        for row in txn.open_table(tables::POSTINGS_NEW)?.iter()? {
            let (k, v) = row?;
            let (ns, id) = k.value();
            let (len, terms) = tables::decode_terms(v.value()).ok_or_else(|| corrupt(id))?;
            let terms = terms.into_iter().map(|(t, tf)| (t.to_string(), tf));
            inner.add(ns, id, len, terms);
        }
        for row in txn.open_table(tables::RECORDS)?.range(through..)? {
            let (k, v) = row?;
            // One unreadable record loses its keywords, not the memory (a read of it answers
            // the error itself).
            let r = match super::decode_record(v.value()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(
                        "memory: record {} is not indexed by keyword: {e}",
                        k.value()
                    );
                    continue;
                }
            };
            let (counts, len) = super::text::term_counts(&r.text);
            if !counts.is_empty() {
                inner.add(&r.namespace, k.value(), len, counts.into_iter());
            }
        }
        Ok(Pending {
            inner: RwLock::new(inner),
        })
    }

    /// `META[POSTINGS_THROUGH]` as of the last merge applied here.
    #[cfg(test)]
    pub fn through(&self) -> u64 {
        self.inner.read().map_or(0, |i| i.through)
    }

    /// Every unmerged posting, by namespace then term (both sorted), each list sorted by id.
    pub fn collect(&self) -> Result<Vec<(Arc<str>, TermLists)>, MemoryError> {
        let inner = self.inner.read().map_err(|_| poisoned())?;
        let mut by_ns: std::collections::BTreeMap<Arc<str>, TermLists> =
            std::collections::BTreeMap::new();
        let mut tagged: Vec<&Entry> = Vec::new();
        for (term, entries) in &inner.by_term {
            let Some(first) = entries.first() else {
                continue;
            };
            // Usually one namespace: no grouping needed.
            let groups: Vec<(&Arc<str>, Vec<Posting>)> =
                if entries.iter().all(|e| Arc::ptr_eq(&e.0, &first.0)) {
                    vec![(&first.0, entries.iter().map(|e| (e.1, e.2)).collect())]
                } else {
                    tagged.clear();
                    tagged.extend(entries.iter());
                    tagged.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    let mut g: Vec<(&Arc<str>, Vec<Posting>)> = Vec::new();
                    for e in &tagged {
                        match g.last_mut() {
                            Some((ns, list)) if Arc::ptr_eq(ns, &e.0) => list.push((e.1, e.2)),
                            _ => g.push((&e.0, vec![(e.1, e.2)])),
                        }
                    }
                    g
                };
            for (ns, mut list) in groups {
                if !list.is_sorted_by_key(|p| p.0) {
                    list.sort_by_key(|p| p.0);
                }
                list.dedup_by_key(|p| p.0);
                by_ns
                    .entry(ns.clone())
                    .or_default()
                    .push((term.clone(), list));
            }
        }
        Ok(by_ns
            .into_iter()
            .map(|(ns, mut terms)| {
                terms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                (ns, terms)
            })
            .collect())
    }

    /// Records with unmerged postings.
    pub fn records(&self) -> usize {
        self.inner.read().map_or(0, |i| i.records)
    }

    /// Applies a committed write: `merged`, the write first merged every unmerged posting
    /// into segments and set `META[POSTINGS_THROUGH]` to this value; then its own `changes`;
    /// `epoch`, the `META[EPOCH]` it committed (when it changed anything here).
    pub fn apply(&self, changes: Vec<Change>, merged: Option<u64>, epoch: Option<u64>) {
        // A poisoned lock is taken over: the view's state is only ever changed whole below.
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(through) = merged {
            inner.by_term.clear();
            inner.records = 0;
            inner.through = through;
        }
        if let Some(e) = epoch {
            inner.epoch = e;
        }
        for c in changes {
            match c {
                Change::Add { ns, id, len, terms } => inner.add(&ns, id, len, terms.into_iter()),
                Change::Remove { ns, id, terms } => inner.remove(&ns, id, &terms),
            }
        }
    }

    /// The epoch the next write that changes the view commits.
    pub fn next_epoch(&self) -> Result<u64, MemoryError> {
        Ok(self.inner.read().map_err(|_| poisoned())?.epoch + 1)
    }

    /// A read transaction and the unmerged postings of `terms` in `namespaces`, consistent
    /// with it.
    pub fn snapshot(
        &self,
        db: &redb::Database,
        terms: &[String],
        namespaces: &[String],
    ) -> Result<(ReadTransaction, Vec<Hit>), MemoryError> {
        // A merge's commit and its view update are a few instructions apart: a reader that
        // sees one and not the other retries.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            let inner = self.inner.read().map_err(|_| poisoned())?;
            let txn = db.begin_read()?;
            if read_epoch(&txn)? != inner.epoch {
                drop(inner);
                std::thread::yield_now();
                continue;
            }
            let mut out = Vec::new();
            for (i, t) in terms.iter().enumerate() {
                for (ns, id, packed) in inner.by_term.get(t.as_str()).into_iter().flatten() {
                    if namespaces.iter().any(|n| n.as_str() == &**ns) {
                        out.push((i, *id, *packed));
                    }
                }
            }
            return Ok((txn, out));
        }
        Err(MemoryError::Store(crate::StorageError::Unsettled))
    }
}

impl Inner {
    fn add(&mut self, ns: &str, id: u64, len: u32, terms: impl Iterator<Item = (String, u32)>) {
        let ns = match self.names.get(ns) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = ns.into();
                self.names.insert(ns.into(), n.clone());
                n
            }
        };
        for (t, tf) in terms {
            let e = (ns.clone(), id, (u64::from(tf) << 32) | u64::from(len));
            match self.by_term.get_mut(t.as_str()) {
                Some(list) => list.push(e),
                None => {
                    self.by_term.insert(t.into_boxed_str(), vec![e]);
                }
            }
        }
        self.records += 1;
    }

    fn remove(&mut self, ns: &str, id: u64, terms: &[String]) {
        for t in terms {
            if let Some(list) = self.by_term.get_mut(t.as_str()) {
                list.retain(|(n, i, _)| !(*i == id && &**n == ns));
                if list.is_empty() {
                    self.by_term.remove(t.as_str());
                }
            }
        }
        self.records = self.records.saturating_sub(1);
    }
}

fn read_epoch(txn: &ReadTransaction) -> Result<u64, MemoryError> {
    Ok(txn
        .open_table(tables::META)?
        .get(EPOCH)?
        .map_or(0, |v| v.value()))
}

/// The error for a malformed `POSTINGS_NEW` row of record `id`.
pub fn corrupt(id: u64) -> MemoryError {
    MemoryError::Store(crate::StorageError::CorruptPending(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(ns: &str, id: u64, terms: &[&str]) -> Change {
        Change::Add {
            ns: ns.into(),
            id,
            len: terms.len() as u32,
            terms: terms.iter().map(|t| (t.to_string(), 1)).collect(),
        }
    }

    #[test]
    fn view_follows_adds_removes_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let txn = db.begin_write().unwrap();
        tables::create(&txn).unwrap();
        txn.commit().unwrap();
        let p = Pending::load(&db.begin_read().unwrap()).unwrap();
        // Writes that changed nothing on disk here keep the epoch (the test's META stays 0).
        p.apply(
            vec![add("a", 1, &["x", "y"]), add("b", 2, &["x"])],
            None,
            None,
        );
        let terms = vec!["x".to_string(), "y".to_string()];
        let (_, got) = p.snapshot(&db, &terms, &["a".to_string()]).unwrap();
        assert_eq!(got, [(0, 1, (1 << 32) | 2), (1, 1, (1 << 32) | 2)]);
        let both = ["a".to_string(), "b".to_string()];
        let (_, got) = p.snapshot(&db, &terms, &both).unwrap();
        assert_eq!(got.len(), 3);
        p.apply(
            vec![Change::Remove {
                ns: "a".into(),
                id: 1,
                terms: vec!["x".into(), "y".into()],
            }],
            None,
            None,
        );
        let (_, got) = p.snapshot(&db, &terms, &both).unwrap();
        assert_eq!(got, [(0, 2, (1 << 32) | 1)]);
        assert_eq!(p.records(), 1);
        // A write committed elsewhere (META's epoch ahead of the view) is waited for: here it
        // never lands in the view, so the snapshot gives up with an error instead of pairing
        // the old view with the new data.
        let txn = db.begin_write().unwrap();
        txn.open_table(tables::META)
            .unwrap()
            .insert(EPOCH, 1)
            .unwrap();
        txn.commit().unwrap();
        assert!(p.snapshot(&db, &terms, &both).is_err());
        let epoch = p.next_epoch().unwrap();
        p.apply(vec![add("a", 11, &["y"])], Some(10), Some(epoch));
        let (_, got) = p.snapshot(&db, &terms, &both).unwrap();
        assert_eq!(
            got,
            [(1, 11, (1 << 32) | 1)],
            "merged postings left the view, the write's own came after"
        );
        assert_eq!((p.records(), p.through()), (1, 10));
    }
}

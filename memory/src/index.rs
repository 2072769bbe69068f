//! The vector index of every namespace: its HNSW graph plus an inbox of vectors written but
//! not handed to the graph yet.
//!
//! Writers only push to the inbox (a short lock the indexer never holds for long), so a write
//! never waits for graph work. The indexer thread moves the inbox into the graphs as unlinked
//! nodes and links them (see `indexer` and `hnsw`). A search holds the graphs' read lock while
//! it scans the inbox, and the indexer moves entries under the graphs' write lock, so every
//! stored vector is seen exactly once: in the inbox, unlinked in a graph (both scanned
//! exactly) or linked. Lock order: graphs, then inbox.

use super::hnsw::Hnsw;
use super::vector::QVec;
use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A vector waiting for its graph.
#[derive(Debug)]
struct Incoming {
    ns: String,
    id: u64,
    vec: QVec,
    tag: u8,
}

/// One search hit: record id, similarity, filter tag.
pub type Found = (u64, f32, u8);

/// The graphs and the inbox.
#[derive(Debug, Default)]
pub struct VectorIndex {
    graphs: RwLock<HashMap<String, Hnsw>>,
    inbox: RwLock<Vec<Incoming>>,
}

/// The lock was poisoned by a panic elsewhere.
#[derive(Debug)]
pub struct Poisoned;

fn sort_hits(v: &mut [Found]) {
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}

impl VectorIndex {
    /// The graphs for reading.
    pub fn graphs(&self) -> Result<RwLockReadGuard<'_, HashMap<String, Hnsw>>, Poisoned> {
        self.graphs.read().map_err(|_| Poisoned)
    }

    /// The graphs for changing (takes the inbox into them first, so that nothing written is
    /// behind a graph change).
    pub fn graphs_mut(&self) -> Result<RwLockWriteGuard<'_, HashMap<String, Hnsw>>, Poisoned> {
        let mut g = self.graphs.write().map_err(|_| Poisoned)?;
        let mut inbox = self.inbox.write().map_err(|_| Poisoned)?;
        for i in inbox.drain(..) {
            let h = g
                .entry(i.ns.clone())
                .or_insert_with(|| Hnsw::new(i.vec.dims()));
            if let Err(e) = h.add(i.id, &i.vec, i.tag) {
                tracing::warn!("memory: indexing record {} in {}: {e}", i.id, i.ns);
            }
        }
        Ok(g)
    }

    /// Stores the vector of record `id`: searchable at once, linked into the graph later.
    /// With `replaces`, an earlier vector of the record is removed first; a new record's
    /// vector goes straight to the inbox, never waiting for the graphs' lock.
    pub fn push(
        &self,
        ns: &str,
        id: u64,
        vec: QVec,
        tag: u8,
        replaces: bool,
    ) -> Result<(), Poisoned> {
        if replaces {
            // Takes the inbox into the graphs, so the old vector is in one place.
            self.remove(ns, id)?;
        }
        let mut inbox = self.inbox.write().map_err(|_| Poisoned)?;
        inbox.push(Incoming {
            ns: ns.to_string(),
            id,
            vec,
            tag,
        });
        Ok(())
    }

    /// Forgets the vector of record `id`; returns whether there was one.
    pub fn remove(&self, ns: &str, id: u64) -> Result<bool, Poisoned> {
        let mut g = self.graphs_mut()?;
        Ok(g.get_mut(ns).is_some_and(|h| h.remove(id)))
    }

    /// Replaces the graph of `ns` (a reload after a failed commit), dropping its inbox.
    pub fn replace(&self, ns: &str, graph: Option<Hnsw>) -> Result<(), Poisoned> {
        let mut g = self.graphs.write().map_err(|_| Poisoned)?;
        self.inbox
            .write()
            .map_err(|_| Poisoned)?
            .retain(|i| i.ns != ns);
        match graph {
            Some(h) => g.insert(ns.to_string(), h),
            None => g.remove(ns),
        };
        Ok(())
    }

    /// Replaces every graph (the load at open).
    pub fn set_all(&self, graphs: HashMap<String, Hnsw>) -> Result<(), Poisoned> {
        *self.graphs.write().map_err(|_| Poisoned)? = graphs;
        Ok(())
    }

    /// The inbox entries of `ns` scored against `q`, added to `out`.
    fn scan_inbox(&self, ns: &str, q: &QVec, out: &mut Vec<Found>) -> Result<(), Poisoned> {
        for i in self.inbox.read().map_err(|_| Poisoned)?.iter() {
            if i.ns == ns && i.vec.dims() == q.dims() {
                out.push((i.id, i.vec.similarity(q), i.tag));
            }
        }
        Ok(())
    }

    /// Up to `k` approximate nearest records of `ns` to `q`, best first (`ef`: the graph
    /// search's candidate list).
    pub fn search(&self, ns: &str, q: &QVec, k: usize, ef: usize) -> Result<Vec<Found>, Poisoned> {
        let g = self.graphs()?;
        let mut v = g.get(ns).map_or_else(Vec::new, |h| h.search(q, k, ef));
        let before = v.len();
        self.scan_inbox(ns, q, &mut v)?;
        if v.len() != before {
            sort_hits(&mut v);
            v.truncate(k);
        }
        Ok(v)
    }

    /// The exact `k` nearest records of `ns` to `q` that `keep` accepts, best first.
    pub fn exact(
        &self,
        ns: &str,
        q: &QVec,
        k: usize,
        keep: impl Fn(u64, u8) -> bool,
    ) -> Result<Vec<Found>, Poisoned> {
        let g = self.graphs()?;
        let mut v = g.get(ns).map_or_else(Vec::new, |h| h.exact(q, k, &keep));
        let mut inbox = Vec::new();
        self.scan_inbox(ns, q, &mut inbox)?;
        v.extend(inbox.into_iter().filter(|f| keep(f.0, f.2)));
        sort_hits(&mut v);
        v.truncate(k);
        Ok(v)
    }

    /// Vectors stored in `ns`.
    pub fn len(&self, ns: &str) -> Result<usize, Poisoned> {
        let g = self.graphs()?;
        let inbox = self.inbox.read().map_err(|_| Poisoned)?;
        Ok(g.get(ns).map_or(0, Hnsw::len) + inbox.iter().filter(|i| i.ns == ns).count())
    }

    /// Vectors not linked into a graph yet.
    pub fn unlinked(&self) -> usize {
        let Ok(g) = self.graphs() else { return 0 };
        let inbox = self.inbox.read().map_or(0, |i| i.len());
        g.values().map(Hnsw::unlinked).sum::<usize>() + inbox
    }

    /// Links unlinked vectors (the inbox first moved into the graphs) for at most `slice`;
    /// returns how many.
    pub fn link_some(&self, slice: std::time::Duration) -> Result<usize, Poisoned> {
        let mut g = self.graphs_mut()?;
        let start = std::time::Instant::now();
        let mut n = 0;
        for h in g.values_mut() {
            while start.elapsed() < slice && h.link_pending(1) == 1 {
                n += 1;
            }
        }
        Ok(n)
    }
}

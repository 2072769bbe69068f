//! Approximate nearest neighbours: a hierarchical navigable small-world graph (HNSW) over
//! int8 unit vectors, one graph per namespace.
//!
//! The graph lives in memory for speed and is persisted node by node in checkpoints: every
//! mutation marks the nodes whose neighbour lists changed as dirty, and a checkpoint (a write
//! transaction of the memory writer, see `Memory::checkpoint`) stores exactly those. Records
//! written after the last checkpoint are re-inserted from their stored vectors when the graph
//! is loaded, so the graph is an acceleration structure that can always be rebuilt from the
//! records: it is never the only copy of anything. If a write transaction fails, the writer
//! reloads the namespace's graph (checkpoint plus the committed tail), so the in-memory
//! graph never keeps an unacknowledged change. Levels are derived from the record id.
//!
//! Deletion repairs the graph locally: each former neighbour of the removed node is offered
//! the removed node's other neighbours, re-selected with the same heuristic as an insert.
//!
//! Linking is deferred: [`Hnsw::add`] stores a vector as an *unlinked* node at once (cheap,
//! inside the write transaction), and [`Hnsw::link_pending`] links unlinked nodes into the
//! graph later (the memory's indexer thread, off the write path). A search walks the graph
//! and scans the unlinked nodes exactly, so a vector is found from the moment its record is
//! committed; only the search cost of the unlinked tail depends on how far linking lags.
//! Unlinked nodes are never persisted: a load adds the records the checkpoint lacks as
//! unlinked again.

use super::vector::{QVec, dot};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

/// Links per node on levels above 0.
pub const M: usize = 16;
/// Links per node on level 0.
pub const M0: usize = 32;
/// Candidate list size while inserting.
pub const EF_CONSTRUCTION: usize = 100;
/// Links a node may gather beyond M (M0) before its list is pruned back: pruning re-runs the
/// selection heuristic (pairwise similarities of every kept link), the dominant cost of an
/// insert, so it runs once per `1 + m / SLACK_DIV` links gained instead of for every one.
const SLACK_DIV: usize = 2;
/// Highest level a node can get (bounds the per-node link table).
const MAX_LEVEL: usize = 12;

/// Per-thread visited marks of graph searches: a stamp per slot, so starting a search is a
/// counter increment instead of clearing (or allocating) a set.
#[derive(Default)]
struct Marks {
    stamp: Vec<u32>,
    current: u32,
}

/// The visited set of one search.
struct Visit<'a> {
    stamp: &'a mut [u32],
    current: u32,
}

impl Marks {
    fn start(&mut self, slots: usize) -> Visit<'_> {
        if self.stamp.len() < slots {
            self.stamp.resize(slots, 0);
        }
        self.current = self.current.wrapping_add(1);
        if self.current == 0 {
            self.stamp.fill(0);
            self.current = 1;
        }
        Visit {
            stamp: &mut self.stamp,
            current: self.current,
        }
    }
}

impl Visit<'_> {
    /// Marks `slot`; false if it was already marked in this search.
    fn insert(&mut self, slot: u32) -> bool {
        match self.stamp.get_mut(slot as usize) {
            Some(s) if *s == self.current => false,
            Some(s) => {
                *s = self.current;
                true
            }
            None => false,
        }
    }
}

thread_local! {
    static VISITED: std::cell::RefCell<Marks> = std::cell::RefCell::new(Marks::default());
}

/// A (similarity, slot) pair ordered by similarity.
#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
    }
}

/// One node: its record id, vector and links per level.
#[derive(Debug, Clone)]
pub struct Node {
    /// Record id.
    pub id: u64,
    /// Vector scale.
    pub scale: f32,
    /// Small per-record facts used by filters without reading the record (the tier code).
    pub tag: u8,
    /// Neighbour slots per level (`links.len() - 1` is the node's level); empty while the
    /// node is not linked yet.
    pub links: Vec<Vec<u32>>,
}

/// The graph of one namespace.
#[derive(Debug, Default)]
pub struct Hnsw {
    dims: usize,
    nodes: Vec<Option<Node>>,
    data: Vec<i8>,
    slot_of: HashMap<u64, u32>,
    free: Vec<u32>,
    entry: Option<u32>,
    dirty: HashSet<u64>,
    /// Nodes waiting to be linked, oldest first, as (slot, id); entries whose node was removed
    /// (or already linked) are skipped when met.
    unlinked: VecDeque<(u32, u64)>,
    /// Live unlinked nodes.
    unlinked_count: usize,
}

/// A loaded node's slot and its links by record id, resolved once every node is loaded.
pub type PendingLinks = (u32, Vec<Vec<u64>>);

/// The level of a new node: geometric with ratio 1/M, derived from the id (splitmix64).
pub fn level_for(id: u64) -> usize {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let u = ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let ml = 1.0 / (M as f64).ln();
    ((-u.ln() * ml) as usize).min(MAX_LEVEL)
}

impl Hnsw {
    /// An empty graph of `dims`-dimensional vectors.
    pub fn new(dims: usize) -> Hnsw {
        Hnsw {
            dims,
            ..Default::default()
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// Whether the graph is empty.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Whether `id` is in the graph.
    pub fn contains(&self, id: u64) -> bool {
        self.slot_of.contains_key(&id)
    }

    /// Vectors stored but not linked into the graph yet.
    pub fn unlinked(&self) -> usize {
        self.unlinked_count
    }

    /// The lowest record id not linked yet, if any.
    pub fn min_unlinked(&self) -> Option<u64> {
        self.unlinked
            .iter()
            .filter(|&&(s, id)| self.is_unlinked(s, id))
            .map(|&(_, id)| id)
            .min()
    }

    /// Whether `slot` holds record `id`, not linked yet.
    fn is_unlinked(&self, slot: u32, id: u64) -> bool {
        self.nodes
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|n| n.id == id && n.links.is_empty())
    }

    /// The stored vector of `id`.
    #[cfg(test)]
    pub fn vector(&self, id: u64) -> Option<QVec> {
        let s = *self.slot_of.get(&id)?;
        let n = self.nodes[s as usize].as_ref()?;
        Some(QVec {
            scale: n.scale,
            q: self.row(s).to_vec(),
        })
    }

    /// Takes the ids whose links changed (or that were removed) since the last call: what a
    /// checkpoint must write.
    pub fn take_dirty(&mut self) -> Vec<u64> {
        self.dirty.drain().collect()
    }

    /// Whether any node changed since the last [`Hnsw::take_dirty`].
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Marks `id` for the next checkpoint (a persisted node whose record is gone is removed
    /// by it).
    pub fn mark_dirty(&mut self, id: u64) {
        self.dirty.insert(id);
    }

    /// The links of `id` as record ids, per level (for persisting); `None` for a node that
    /// is gone or not linked yet.
    pub fn links_of(&self, id: u64) -> Option<(u8, Vec<Vec<u64>>)> {
        let s = *self.slot_of.get(&id)?;
        let n = self.nodes[s as usize]
            .as_ref()
            .filter(|n| !n.links.is_empty())?;
        Some((
            n.tag,
            n.links
                .iter()
                .map(|l| l.iter().filter_map(|x| self.id_of(*x)).collect())
                .collect(),
        ))
    }

    fn id_of(&self, slot: u32) -> Option<u64> {
        self.nodes.get(slot as usize)?.as_ref().map(|n| n.id)
    }

    fn row(&self, slot: u32) -> &[i8] {
        let s = slot as usize * self.dims;
        &self.data[s..s + self.dims]
    }

    fn sim_to(&self, q: &QVec, slot: u32) -> f32 {
        let n = self.nodes[slot as usize].as_ref().map_or(0.0, |n| n.scale);
        dot(&q.q, self.row(slot)) as f32 * q.scale * n
    }

    fn sim(&self, a: u32, b: u32) -> f32 {
        let sa = self.nodes[a as usize].as_ref().map_or(0.0, |n| n.scale);
        let sb = self.nodes[b as usize].as_ref().map_or(0.0, |n| n.scale);
        dot(self.row(a), self.row(b)) as f32 * sa * sb
    }

    fn level_of(&self, slot: u32) -> usize {
        self.nodes[slot as usize]
            .as_ref()
            .map_or(0, |n| n.links.len().saturating_sub(1))
    }

    /// Greedy best-first search on one level from `entry`, keeping `ef` results
    /// (best first).
    fn search_level(&self, q: &QVec, entry: &[u32], ef: usize, level: usize) -> Vec<Scored> {
        VISITED.with(|v| {
            let mut v = v.borrow_mut();
            let visited = v.start(self.nodes.len());
            self.search_level_with(q, entry, ef, level, visited)
        })
    }

    fn search_level_with(
        &self,
        q: &QVec,
        entry: &[u32],
        ef: usize,
        level: usize,
        mut visited: Visit<'_>,
    ) -> Vec<Scored> {
        let mut candidates = BinaryHeap::new(); // best first
        let mut results: BinaryHeap<std::cmp::Reverse<Scored>> = BinaryHeap::new(); // worst first
        for &e in entry {
            if visited.insert(e) {
                let s = Scored(self.sim_to(q, e), e);
                candidates.push(s);
                results.push(std::cmp::Reverse(s));
            }
        }
        while let Some(c) = candidates.pop() {
            let worst = results.peek().map_or(f32::MIN, |r| r.0.0);
            if c.0 < worst && results.len() >= ef {
                break;
            }
            let Some(node) = self.nodes[c.1 as usize].as_ref() else {
                continue;
            };
            let Some(links) = node.links.get(level) else {
                continue;
            };
            for &n in links {
                if !visited.insert(n) || self.nodes[n as usize].is_none() {
                    continue;
                }
                let s = Scored(self.sim_to(q, n), n);
                let worst = results.peek().map_or(f32::MIN, |r| r.0.0);
                if results.len() < ef || s.0 > worst {
                    candidates.push(s);
                    results.push(std::cmp::Reverse(s));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
        let mut v: Vec<Scored> = results.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }

    /// The HNSW neighbour-selection heuristic: keep a candidate only if it is closer to the
    /// base than to every neighbour already kept, then top up with the closest rejected.
    fn select(&self, cands: &[Scored], m: usize) -> Vec<u32> {
        let mut kept: Vec<Scored> = Vec::with_capacity(m);
        let mut rejected = Vec::new();
        for c in cands {
            if kept.len() >= m {
                break;
            }
            if kept.iter().all(|k| self.sim(c.1, k.1) < c.0) {
                kept.push(*c);
            } else {
                rejected.push(*c);
            }
        }
        for r in rejected {
            if kept.len() >= m {
                break;
            }
            kept.push(r);
        }
        kept.into_iter().map(|s| s.1).collect()
    }

    /// Adds (or replaces) the vector of record `id` with filter tag `tag` and links it at once.
    #[cfg(test)]
    pub fn insert(&mut self, id: u64, v: &QVec, tag: u8) -> Result<(), String> {
        let slot = self.add(id, v, tag)?;
        self.unlinked_count -= 1;
        self.link_slot(slot);
        Ok(())
    }

    /// Adds (or replaces) the vector of record `id` with filter tag `tag` as an unlinked node
    /// (found by searches at once, linked by [`Hnsw::link_pending`]); returns its slot.
    pub fn add(&mut self, id: u64, v: &QVec, tag: u8) -> Result<u32, String> {
        if v.dims() != self.dims {
            return Err(format!(
                "vector has {} dimensions, the index {}",
                v.dims(),
                self.dims
            ));
        }
        if self.contains(id) {
            self.remove(id);
        }
        let slot = match self.free.pop() {
            Some(s) => {
                let o = s as usize * self.dims;
                self.data[o..o + self.dims].copy_from_slice(&v.q);
                s
            }
            None => {
                self.data.extend_from_slice(&v.q);
                self.nodes.push(None);
                (self.nodes.len() - 1) as u32
            }
        };
        self.nodes[slot as usize] = Some(Node {
            id,
            scale: v.scale,
            tag,
            links: Vec::new(),
        });
        self.slot_of.insert(id, slot);
        self.unlinked.push_back((slot, id));
        self.unlinked_count += 1;
        Ok(slot)
    }

    /// Links up to `max` unlinked nodes into the graph, oldest first; returns how many.
    pub fn link_pending(&mut self, max: usize) -> usize {
        let mut done = 0;
        while done < max {
            let Some((slot, id)) = self.unlinked.pop_front() else {
                break;
            };
            if !self.is_unlinked(slot, id) {
                continue;
            }
            self.unlinked_count -= 1;
            self.link_slot(slot);
            done += 1;
        }
        if self.unlinked_count == 0 {
            self.unlinked.clear();
        }
        done
    }

    /// Links the unlinked node in `slot` on its levels (derived from its id).
    fn link_slot(&mut self, slot: u32) {
        let Some((id, scale)) = self.nodes[slot as usize].as_ref().map(|n| (n.id, n.scale)) else {
            return;
        };
        let level = level_for(id);
        let v = QVec {
            scale,
            q: self.row(slot).to_vec(),
        };
        if let Some(n) = self.nodes[slot as usize].as_mut() {
            n.links = vec![Vec::new(); level + 1];
        }
        self.dirty.insert(id);
        let Some(entry) = self.entry else {
            self.entry = Some(slot);
            return;
        };
        let top = self.level_of(entry);
        let mut ep = vec![entry];
        for l in (level + 1..=top).rev() {
            ep = vec![self.search_level(&v, &ep, 1, l)[0].1];
        }
        for l in (0..=level.min(top)).rev() {
            let found: Vec<Scored> = self
                .search_level(&v, &ep, EF_CONSTRUCTION, l)
                .into_iter()
                .filter(|s| s.1 != slot)
                .collect();
            let m = if l == 0 { M0 } else { M };
            let chosen = self.select(&found, m);
            if let Some(n) = self.nodes[slot as usize].as_mut() {
                n.links[l] = chosen.clone();
            }
            for &nb in &chosen {
                self.link(nb, slot, l, m);
            }
            ep = found.iter().map(|s| s.1).collect();
            if ep.is_empty() {
                ep = vec![entry];
            }
        }
        if level > top {
            self.entry = Some(slot);
        }
    }

    /// Adds `to` to `from`'s links on `level`, re-selecting if that overflows `m`.
    fn link(&mut self, from: u32, to: u32, level: usize, m: usize) {
        let Some(links) = self.nodes[from as usize]
            .as_ref()
            .and_then(|n| n.links.get(level).cloned())
        else {
            return;
        };
        if links.contains(&to) {
            return;
        }
        let new = if links.len() < m + m / SLACK_DIV {
            let mut l = links;
            l.push(to);
            l
        } else {
            let mut c: Vec<Scored> = links
                .iter()
                .chain(std::iter::once(&to))
                .map(|&x| Scored(self.sim(from, x), x))
                .collect();
            c.sort_by(|a, b| b.cmp(a));
            self.select(&c, m)
        };
        if let Some(n) = self.nodes[from as usize].as_mut() {
            n.links[level] = new;
            self.dirty.insert(n.id);
        }
    }

    /// Removes `id`, repairing its neighbours' links. Returns whether it was present.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.slot_of.remove(&id) else {
            return false;
        };
        let Some(node) = self.nodes[slot as usize].take() else {
            return false;
        };
        self.dirty.insert(id);
        if node.links.is_empty() {
            // Never linked: nothing refers to it.
            self.unlinked_count -= 1;
            self.free.push(slot);
            return true;
        }
        // Every node that links to the removed one, per level.
        for (l, around) in node.links.iter().enumerate() {
            let m = if l == 0 { M0 } else { M };
            let mut referrers: HashSet<u32> = around.iter().copied().collect();
            // Links are not symmetric after pruning: find one-way referrers too (bounded by
            // the neighbours' neighbours, where nearly all of them are).
            for &n in around {
                if let Some(nn) = self.nodes[n as usize].as_ref().and_then(|x| x.links.get(l)) {
                    for &x in nn {
                        if let Some(xl) =
                            self.nodes[x as usize].as_ref().and_then(|x| x.links.get(l))
                            && xl.contains(&slot)
                        {
                            referrers.insert(x);
                        }
                    }
                }
            }
            for r in referrers {
                let Some(links) = self.nodes[r as usize]
                    .as_ref()
                    .and_then(|n| n.links.get(l).cloned())
                else {
                    continue;
                };
                let mut pool: Vec<u32> = links.into_iter().filter(|x| *x != slot).collect();
                for &c in around {
                    if c != r && !pool.contains(&c) && self.nodes[c as usize].is_some() {
                        pool.push(c);
                    }
                }
                let mut scored: Vec<Scored> =
                    pool.iter().map(|&x| Scored(self.sim(r, x), x)).collect();
                scored.sort_by(|a, b| b.cmp(a));
                let new = self.select(&scored, m);
                if let Some(n) = self.nodes[r as usize].as_mut() {
                    n.links[l] = new;
                    self.dirty.insert(n.id);
                }
            }
        }
        self.free.push(slot);
        if self.entry == Some(slot) {
            self.entry = self.highest_node();
        }
        true
    }

    /// Up to `k` nearest records to `q` as (id, similarity, tag), best first: the graph
    /// searched with a candidate list of `ef` (≥ k), merged with an exact scan of the nodes
    /// not linked yet.
    pub fn search(&self, q: &QVec, k: usize, ef: usize) -> Vec<(u64, f32, u8)> {
        if q.dims() != self.dims || k == 0 {
            return Vec::new();
        }
        let mut found = match self.entry {
            Some(entry) => {
                let mut ep = vec![entry];
                for l in (1..=self.level_of(entry)).rev() {
                    ep = vec![self.search_level(q, &ep, 1, l)[0].1];
                }
                let mut f = self.search_level(q, &ep, ef.max(k), 0);
                f.truncate(k);
                f
            }
            None => Vec::new(),
        };
        if self.unlinked_count > 0 {
            VISITED.with(|v| {
                let mut v = v.borrow_mut();
                let mut seen = v.start(self.nodes.len());
                for &(slot, id) in &self.unlinked {
                    if self.is_unlinked(slot, id) && seen.insert(slot) {
                        found.push(Scored(self.sim_to(q, slot), slot));
                    }
                }
            });
            found.sort_by(|a, b| b.cmp(a));
            found.truncate(k);
        }
        found
            .into_iter()
            .filter_map(|s| {
                let n = self.nodes[s.1 as usize].as_ref()?;
                Some((n.id, s.0, n.tag))
            })
            .collect()
    }

    /// Exact nearest records by scanning every vector (the reference for recall, and the
    /// path for small filtered sets): (id, similarity, tag), best first.
    pub fn exact(&self, q: &QVec, k: usize, keep: impl Fn(u64, u8) -> bool) -> Vec<(u64, f32, u8)> {
        let mut v: Vec<(u64, f32, u8)> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.as_ref()?;
                keep(n.id, n.tag).then(|| (n.id, self.sim_to(q, i as u32), n.tag))
            })
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }

    /// Restores a persisted node (vector, tag and links by record id); links to ids not
    /// (yet) loaded are resolved by [`Hnsw::finish_load`].
    pub fn load_node(
        &mut self,
        id: u64,
        v: &QVec,
        tag: u8,
        links: Vec<Vec<u64>>,
        pending: &mut Vec<PendingLinks>,
    ) {
        if v.dims() != self.dims || links.is_empty() {
            return;
        }
        self.data.extend_from_slice(&v.q);
        self.nodes.push(Some(Node {
            id,
            scale: v.scale,
            tag,
            links: vec![Vec::new(); links.len()],
        }));
        let slot = (self.nodes.len() - 1) as u32;
        self.slot_of.insert(id, slot);
        pending.push((slot, links));
    }

    /// The entry point: the node on the highest level, the lowest id among ties.
    fn highest_node(&self) -> Option<u32> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                n.as_ref()
                    .filter(|n| !n.links.is_empty())
                    .map(|n| (n.links.len(), std::cmp::Reverse(n.id), i))
            })
            .max()
            .map(|(_, _, i)| i as u32)
    }

    /// Resolves the links of loaded nodes and picks the entry point (highest level, then
    /// lowest id).
    pub fn finish_load(&mut self, pending: Vec<PendingLinks>) {
        for (slot, links) in pending {
            let resolved: Vec<Vec<u32>> = links
                .iter()
                .map(|l| {
                    l.iter()
                        .filter_map(|id| self.slot_of.get(id).copied())
                        .collect()
                })
                .collect();
            if let Some(n) = self.nodes[slot as usize].as_mut() {
                n.links = resolved;
            }
        }
        self.entry = self.highest_node();
        self.dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vecs(n: usize, dims: usize, seed: u64) -> Vec<QVec> {
        let mut s = seed;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        };
        // Clustered data, like real embeddings: 20 centres plus noise.
        let centres: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..dims).map(|_| next()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % 20];
                let v: Vec<f32> = c.iter().map(|x| x + 1.5 * next()).collect();
                QVec::quantize(&v).unwrap()
            })
            .collect()
    }

    fn recall_at_10(h: &Hnsw, queries: &[QVec]) -> f64 {
        let mut hit = 0;
        for q in queries {
            let want: HashSet<u64> = h.exact(q, 10, |_, _| true).iter().map(|x| x.0).collect();
            hit += h
                .search(q, 10, 64)
                .iter()
                .filter(|x| want.contains(&x.0))
                .count();
        }
        hit as f64 / (10 * queries.len()) as f64
    }

    #[test]
    fn recall_is_high_and_survives_deletes() {
        // Held-out points of the same distribution are the queries.
        let mut vs = rand_vecs(3050, 64, 7);
        let queries = vs.split_off(3000);
        let mut h = Hnsw::new(64);
        for (i, v) in vs.iter().enumerate() {
            h.insert(i as u64 + 1, v, 0).unwrap();
        }
        let r = recall_at_10(&h, &queries);
        assert!(r >= 0.95, "recall@10 {r}");
        for id in (1..=3000).step_by(3) {
            assert!(h.remove(id));
        }
        assert_eq!(h.len(), 2000);
        let r = recall_at_10(&h, &queries);
        assert!(r >= 0.9, "recall@10 after deleting a third: {r}");
        // Removed ids never come back from a search.
        for q in &queries {
            assert!(h.search(q, 10, 64).iter().all(|x| (x.0 - 1) % 3 != 0));
        }
    }

    #[test]
    fn unlinked_nodes_are_searched_exactly_then_linked() {
        let mut vs = rand_vecs(2050, 64, 5);
        let queries = vs.split_off(2000);
        let mut h = Hnsw::new(64);
        for (i, v) in vs.iter().enumerate() {
            h.add(i as u64 + 1, v, 0).unwrap();
        }
        assert_eq!((h.len(), h.unlinked()), (2000, 2000));
        assert_eq!(h.min_unlinked(), Some(1));
        // Nothing linked: the search is the exact scan, and nothing is there to persist.
        assert_eq!(recall_at_10(&h, &queries), 1.0);
        assert!(h.links_of(1).is_none() && !h.has_dirty());
        // Removing an unlinked node forgets it.
        assert!(h.remove(1));
        assert_eq!(h.unlinked(), 1999);
        assert_eq!(h.min_unlinked(), Some(2));
        // Linking half: both halves are found, the linked half is dirty.
        assert_eq!(h.link_pending(1000), 1000);
        assert_eq!(h.unlinked(), 999);
        assert_eq!(h.min_unlinked(), Some(1002));
        assert!(recall_at_10(&h, &queries) >= 0.95);
        assert_eq!(h.take_dirty().len(), 1001);
        assert!(h.links_of(2).is_some() && h.links_of(1500).is_none());
        assert_eq!(h.link_pending(usize::MAX), 999);
        assert_eq!((h.unlinked(), h.min_unlinked()), (0, None));
        assert!(recall_at_10(&h, &queries) >= 0.95);
        // A linked node re-added with a new vector is unlinked again.
        h.add(5, &queries[0], 0).unwrap();
        assert_eq!((h.unlinked(), h.min_unlinked()), (1, Some(5)));
        assert_eq!(h.search(&queries[0], 1, 10)[0].0, 5);
        assert!(h.links_of(5).is_none());
    }

    #[test]
    fn persisted_links_reload_to_the_same_answers() {
        let vs = rand_vecs(500, 32, 3);
        let mut h = Hnsw::new(32);
        for (i, v) in vs.iter().enumerate() {
            h.insert(i as u64 + 10, v, (i % 4) as u8).unwrap();
        }
        let mut dirty = h.take_dirty();
        dirty.sort();
        assert_eq!(dirty.len(), 500);
        let mut g = Hnsw::new(32);
        let mut pending = Vec::new();
        for id in dirty {
            let (tag, links) = h.links_of(id).unwrap();
            g.load_node(id, &h.vector(id).unwrap(), tag, links, &mut pending);
        }
        g.finish_load(pending);
        for q in rand_vecs(20, 32, 11) {
            assert_eq!(h.search(&q, 5, 40), g.search(&q, 5, 40));
        }
    }

    #[test]
    fn wrong_dimensions_are_refused_and_empty_graph_answers_nothing() {
        let mut h = Hnsw::new(8);
        assert!(h.insert(1, &QVec::quantize(&[1.0; 4]).unwrap(), 0).is_err());
        assert!(
            h.search(&QVec::quantize(&[1.0; 8]).unwrap(), 3, 10)
                .is_empty()
        );
        h.insert(1, &QVec::quantize(&[1.0; 8]).unwrap(), 0).unwrap();
        assert!(h.remove(1));
        assert!(!h.remove(1));
        assert!(h.is_empty());
        assert!(
            h.search(&QVec::quantize(&[1.0; 8]).unwrap(), 3, 10)
                .is_empty()
        );
    }
}

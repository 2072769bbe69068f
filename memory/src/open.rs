//! Opening memory and recovering it: the journal replayed, the vector graphs loaded from
//! their last checkpoint (and checkpointed again by writes), the schema migration.

use super::*;

/// What a checkpoint took from the graphs: put back if its transaction fails.
#[derive(Default)]
pub(crate) struct Checkpoint {
    /// Dirty node ids per namespace.
    dirty: Vec<(String, Vec<u64>)>,
    /// The graph change count.
    changes: usize,
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
    pub(crate) fn open_journal(&self) -> Result<(), MemoryError> {
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

    /// Loads the graphs of every namespace (or of one) from the last commit: the checkpointed
    /// nodes, then the records the checkpoint lacks, added unlinked from their vectors (the
    /// indexer links them). Also returns how many were added.
    #[allow(clippy::type_complexity)]
    pub(crate) fn load_graphs(
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
    pub(crate) fn restore_graph(&self, ns: &str) {
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
    pub(crate) fn checkpoint(&self, txn: &WriteTransaction) -> Result<Checkpoint, MemoryError> {
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
    pub(crate) fn uncheckpoint(&self, taken: Checkpoint) {
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
}

//! The write path: one transaction per write under the writer lock, committed durably or
//! acknowledged through the journal; remembering (deduplication, versions, evictions),
//! vectors, keyword postings and their merge into segments.

use super::*;

/// Counts a running write transaction for as long as it lives.
pub(crate) struct Busy<'a>(&'a AtomicUsize);

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

pub(crate) fn dedup_key(text: &str) -> [u8; 32] {
    sha2::Sha256::digest(text::normalized(text).as_bytes()).into()
}

/// The record `new` becomes as record `id` of namespace `ns` at `now`.
pub(crate) fn new_record(
    id: u64,
    tier: Tier,
    ns: &str,
    new: &NewRecord,
    embedded: bool,
    now: u64,
) -> Record {
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

pub(crate) fn next_id(txn: &WriteTransaction) -> Result<u64, MemoryError> {
    next_ids(txn, 1)
}

/// Takes `n` consecutive record ids; returns the first.
pub(crate) fn next_ids(txn: &WriteTransaction, n: u64) -> Result<u64, MemoryError> {
    let mut meta = txn.open_table(tables::META)?;
    let id = meta.get("next_id")?.map_or(1, |v| v.value());
    meta.insert("next_id", id + n)?;
    Ok(id)
}

/// A journal write that failed (a full disk answers 507, as a failed commit does).
pub(crate) fn journal_error(e: std::io::Error) -> MemoryError {
    MemoryError::Store(StorageError::Journal(e))
}

impl Memory {
    /// Runs `f` in one write transaction under the writer lock and commits durably; on any
    /// failure the in-memory graphs of `touched` namespaces are reloaded from the last commit.
    pub(crate) fn write<T>(
        &self,
        touched: &[&str],
        f: impl FnOnce(&WriteTransaction) -> Result<T, MemoryError>,
    ) -> Result<T, MemoryError> {
        self.write_sized(0, touched, f)
    }

    /// [`Memory::write`] for a write of about `payload` bytes: refused with 507 up front when
    /// the disk cannot take it (see `Store::ensure_space`).
    pub(crate) fn write_sized<T>(
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
    pub(crate) fn write_logged<T>(
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
    pub(crate) fn merge_if_due(&self) {
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
    pub(crate) fn transact<T>(
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

    pub(crate) fn flush_access(&self, txn: &WriteTransaction) -> Result<(), MemoryError> {
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

    pub(crate) fn note_access(&self, ids: impl IntoIterator<Item = u64>) {
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
    pub(crate) fn embedding_for(
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
    pub(crate) fn embed_many(&self, texts: &[&str]) -> Vec<Option<QVec>> {
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
    pub(crate) fn embed_one(&self, text: &str) -> Option<QVec> {
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
    pub(crate) fn decide(
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
    pub(crate) fn apply(
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

    pub(crate) fn find_duplicate(
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
    pub(crate) fn insert_record(
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
    pub(crate) fn insert_records(
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
    pub(crate) fn check_vectors(
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
    pub(crate) fn add_vector(
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
    pub(crate) fn drop_vector(
        &self,
        txn: &WriteTransaction,
        ns: &str,
        id: u64,
    ) -> Result<(), MemoryError> {
        txn.open_table(tables::VECTORS)?.remove(id)?;
        if self.index.remove(ns, id).map_err(|_| poisoned())? {
            self.graph_changes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Adds (or removes) the keyword postings of a text; returns its length in terms.
    pub(crate) fn index_terms(
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
    pub(crate) fn merge_postings(&self, txn: &WriteTransaction) -> Result<u64, MemoryError> {
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
    pub(crate) fn postings_through(&self, txn: &WriteTransaction) -> Result<u64, MemoryError> {
        Ok(txn
            .open_table(tables::META)?
            .get(tables::POSTINGS_THROUGH)?
            .map_or(1, |v| v.value()))
    }

    /// Notes a change to the unmerged postings, applied when the running write commits.
    pub(crate) fn stage(&self, change: pending::Change) -> Result<(), MemoryError> {
        self.staged.lock().map_err(|_| poisoned())?.push(change);
        Ok(())
    }
}

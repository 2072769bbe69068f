//! Records by id: read, update, delete and list.

use super::*;

impl Memory {
    /// Deletes a record and every index entry of it inside `txn`; returns it.
    pub(crate) fn delete_record(
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
    pub(crate) fn modify(
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

    pub(crate) fn get_in(
        &self,
        txn: &WriteTransaction,
        id: u64,
    ) -> Result<Option<Record>, MemoryError> {
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
}

//! Export and import as JSON Lines: one record per line, with its embedding as floats.
//!
//! Import contract: lines are read in order and committed in batches of [`IMPORT_BATCH`]
//! valid lines, one transaction per batch. A malformed line (bad JSON, unknown tier or
//! namespace, NaN or wrong-dimension vector, oversized text, …) is rejected with its
//! 1-based line number and the reason, and never stops the other lines. If a batch cannot be
//! committed (a full disk), that batch and every later line are reported as not imported
//! and nothing of that batch is stored.

use super::record::{NewRecord, Provenance, Record, Tier};
use super::vector::QVec;
use super::{Access, InputError, Memory, MemoryError, decode_record, ns_info, put_ns_info, tables};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Valid lines committed per transaction.
pub const IMPORT_BATCH: usize = 500;
/// Most lines in one import.
pub const MAX_IMPORT_LINES: usize = 100_000;
/// Lines without a vector are embedded this many at a time.
pub const EMBED_BATCH: usize = 32;

/// One exported line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    tier: String,
    namespace: String,
    text: String,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    importance: Option<f32>,
    #[serde(default)]
    pinned: bool,
    #[serde(default)]
    provenance: Provenance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    occurred_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    embedding: Option<Vec<f32>>,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// Records stored.
    pub imported: usize,
    /// Ids given to them, in line order.
    pub ids: Vec<u64>,
    /// Rejected lines: (1-based line number, reason).
    pub rejected: Vec<(usize, String)>,
    /// A batch that could not be committed stops the import: its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl Memory {
    /// Every record of a namespace as JSON Lines (embeddings as floats).
    pub fn export(&self, access: &Access, ns: &str) -> Result<String, MemoryError> {
        self.check_read(access, ns)?;
        let txn = self.db.begin_read()?;
        let records = txn.open_table(tables::RECORDS)?;
        let vectors = txn.open_table(tables::VECTORS)?;
        let mut out = String::new();
        for row in txn
            .open_table(tables::BY_NAMESPACE)?
            .range((ns, 0u64)..=(ns, u64::MAX))?
        {
            let id = row?.0.value().1;
            let Some(v) = records.get(id)? else { continue };
            let r: Record = decode_record(v.value())?;
            let embedding = vectors
                .get(id)?
                .and_then(|b| QVec::from_bytes(b.value()))
                .map(|q| q.to_f32());
            let line = Line {
                id: Some(r.id),
                tier: r.tier.name().into(),
                namespace: r.namespace,
                text: r.text,
                metadata: r.metadata,
                created_ms: Some(r.created_ms),
                importance: Some(r.importance),
                pinned: r.pinned,
                provenance: r.provenance,
                session: r.session,
                occurred_ms: r.occurred_ms,
                source: r.source,
                key: r.key,
                version: r.version,
                embedding,
            };
            out.push_str(&serde_json::to_string(&line).unwrap_or_default());
            out.push('\n');
        }
        Ok(out)
    }

    /// Imports JSON Lines (see the module docs for the per-line and per-batch contract).
    pub fn import(&self, access: &Access, body: &str) -> Result<ImportReport, MemoryError> {
        let mut report = ImportReport::default();
        let lines: Vec<&str> = body.lines().collect();
        if lines.len() > MAX_IMPORT_LINES {
            return Err(InputError::TooLarge(format!(
                "at most {MAX_IMPORT_LINES} lines per import"
            ))
            .into());
        }
        let dims = self.dims()?;
        let mut batch: Vec<(usize, Line, Option<QVec>)> = Vec::new();
        let mut dims_seen = dims;
        // Namespaces already found to exist and be readable (one read transaction each).
        let mut known = std::collections::HashSet::new();
        for (i, raw) in lines.iter().enumerate() {
            let n = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            match self.check_line(access, raw, &mut dims_seen, &mut known) {
                Ok((line, vec)) => batch.push((n, line, vec)),
                Err(e) => report.rejected.push((n, e)),
            }
            if batch.len() == IMPORT_BATCH
                && let Err(e) = self.import_batch(std::mem::take(&mut batch), &mut report)
            {
                report.stopped = Some(format!("line {n}: {e}"));
                return Ok(report);
            }
        }
        if !batch.is_empty() {
            let first = batch[0].0;
            if let Err(e) = self.import_batch(batch, &mut report) {
                report.stopped = Some(format!("batch from line {first}: {e}"));
            }
        }
        Ok(report)
    }

    fn check_line(
        &self,
        access: &Access,
        raw: &str,
        dims: &mut usize,
        known: &mut std::collections::HashSet<String>,
    ) -> Result<(Line, Option<QVec>), String> {
        let line: Line = serde_json::from_str(raw).map_err(|e| format!("malformed JSON: {e}"))?;
        let probe = NewRecord {
            tier: Some(line.tier.clone()),
            namespace: Some(line.namespace.clone()),
            text: line.text.clone(),
            metadata: Some(Value::Object(line.metadata.clone())),
            importance: line.importance,
            pinned: line.pinned,
            provenance: Some(line.provenance.clone()),
            session: line.session.clone(),
            occurred_ms: line.occurred_ms,
            source: line.source.clone(),
            key: line.key.clone(),
            embedding: None,
        };
        let (_, ns) = probe.validate().map_err(|e| e.to_string())?;
        if !access.can_write(&ns) {
            return Err(format!("no capability to write namespace {ns:?}"));
        }
        if !known.contains(&ns) {
            self.check_read(access, &ns).map_err(|e| e.to_string())?;
            known.insert(ns);
        }
        let vec = match &line.embedding {
            Some(v) => {
                if *dims != 0 && v.len() != *dims {
                    return Err(format!(
                        "embedding has {} dimensions; this memory uses {dims}",
                        v.len()
                    ));
                }
                let q = QVec::quantize(v).map_err(|e| format!("embedding: {e}"))?;
                *dims = v.len();
                Some(q)
            }
            // Embedded with the rest of its batch, before the batch is written.
            None => None,
        };
        Ok((line, vec))
    }

    fn import_batch(
        &self,
        mut batch: Vec<(usize, Line, Option<QVec>)>,
        report: &mut ImportReport,
    ) -> Result<(), MemoryError> {
        // Lines without a vector: the model embeds them EMBED_BATCH at a time (much faster
        // per text than one by one); a model that fails leaves them keyword-only, as a
        // single remember does.
        let todo: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].1.embedding.is_none())
            .collect();
        let texts: Vec<&str> = todo.iter().map(|&i| batch[i].1.text.as_str()).collect();
        for (i, v) in todo.into_iter().zip(self.embed_many(&texts)) {
            batch[i].2 = v;
        }
        let namespaces: Vec<String> = {
            let mut v: Vec<String> = batch.iter().map(|b| b.1.namespace.clone()).collect();
            v.sort();
            v.dedup();
            v
        };
        let touched: Vec<&str> = namespaces.iter().map(String::as_str).collect();
        let now = super::now_ms();
        let size: u64 = batch.iter().map(|b| b.1.text.len() as u64 + 512).sum();
        let ids = self.write_sized(size, &touched, |txn| {
            let mut ids = Vec::new();
            for ns in &namespaces {
                let mut info = ns_info(txn, ns)?;
                let lines: Vec<_> = batch.iter().filter(|b| &b.1.namespace == ns).collect();
                let first = super::next_ids(txn, lines.len() as u64)?;
                let mut records = Vec::with_capacity(lines.len());
                for (i, (_, l, vec)) in lines.into_iter().enumerate() {
                    let tier = Tier::parse(&l.tier).map_err(InputError::Invalid)?;
                    let id = first + i as u64;
                    let mut version = (tier == Tier::Procedural).then(|| l.version.unwrap_or(1));
                    if let (Some(k), Some(v)) = (&l.key, version) {
                        let mut p = txn.open_table(tables::PROCEDURES)?;
                        let v = match p.get((ns.as_str(), k.as_str(), v))? {
                            // A clash with an existing version appends after the newest.
                            Some(_) => p
                                .range(
                                    (ns.as_str(), k.as_str(), 0u32)
                                        ..=(ns.as_str(), k.as_str(), u32::MAX),
                                )?
                                .next_back()
                                .transpose()?
                                .map_or(1, |(k, _)| k.value().2 + 1),
                            None => v,
                        };
                        p.insert((ns.as_str(), k.as_str(), v), id)?;
                        version = Some(v);
                    }
                    let created = l.created_ms.unwrap_or(now);
                    let r = Record {
                        id,
                        tier,
                        namespace: ns.clone(),
                        text: l.text.clone(),
                        metadata: l.metadata.clone(),
                        created_ms: created,
                        accessed_ms: created,
                        access_count: 0,
                        importance: l.importance.unwrap_or(0.5),
                        pinned: l.pinned,
                        provenance: l.provenance.clone(),
                        session: l.session.clone(),
                        occurred_ms: (tier == Tier::Episodic)
                            .then(|| l.occurred_ms.unwrap_or(created)),
                        source: l.source.clone(),
                        key: l.key.clone(),
                        version,
                        superseded_by: None,
                        consolidated_into: None,
                        embedded: vec.is_some(),
                        decayed_ms: now,
                    };
                    records.push((r, vec.as_ref()));
                }
                let refs: Vec<(&Record, Option<&QVec>)> =
                    records.iter().map(|(r, v)| (r, *v)).collect();
                self.insert_records(txn, &refs, &mut info)?;
                ids.extend(records.iter().map(|(r, _)| r.id));
                put_ns_info(txn, ns, &info)?;
            }
            Ok(ids)
        })?;
        report.imported += ids.len();
        report.ids.extend(ids);
        Ok(())
    }
}

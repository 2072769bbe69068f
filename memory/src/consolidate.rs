//! Consolidation and forgetting, run per namespace by the background job or on request:
//!
//! 1. **Decay**: every unpinned record's importance halves per [`HALF_LIFE_MS`] since it last
//!    decayed.
//! 2. **Consolidation**: episodic records not yet consolidated and older than `min_age` are
//!    grouped greedily (cosine ≥ [`GROUP_SIMILARITY`] between embeddings, or keyword Jaccard
//!    ≥ [`GROUP_JACCARD`] without them); each group of at least [`MIN_GROUP`] becomes one
//!    semantic summary written by the [`Summarizer`] (the local LLM) or, without one or when
//!    it fails, by [`extractive_summary`]. The summary records its sources and each source
//!    points at the summary; the consolidation can be undone until a source is purged.
//! 3. **Eviction**: beyond the namespace's quota, unpinned records go first if already
//!    consolidated, then by lowest importance, then least recently accessed. Pinned records
//!    are never decayed, consolidated or evicted.

use super::record::{Provenance, Record, Tier};
use super::vector::QVec;
use super::{
    Access, Memory, MemoryError, decode_record, encode, now_ms, ns_info, put_ns_info, tables, text,
};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Importance halves over this time.
pub const HALF_LIFE_MS: u64 = 30 * 86_400_000;
/// Embeddings at least this similar belong to one group.
pub const GROUP_SIMILARITY: f32 = 0.75;
/// Without embeddings, keyword sets at least this similar belong to one group.
pub const GROUP_JACCARD: f64 = 0.3;
/// Smallest group that is consolidated.
pub const MIN_GROUP: usize = 3;
/// Largest group.
pub const MAX_GROUP: usize = 12;
/// Most episodic records examined per run.
const MAX_EXAMINED: usize = 2000;

/// Writes a summary of related memories (the local LLM through the router's interface).
pub trait Summarizer: Send + Sync {
    /// Its name, recorded with the summary (e.g. the model id).
    fn name(&self) -> String;
    /// A short summary of `texts`.
    fn summarize(&self, texts: &[&str]) -> Result<String, crate::BoxError>;
}

/// One consolidation as stored (keyed by the summary's id).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Consolidation {
    /// Namespace.
    pub namespace: String,
    /// Source records still present.
    pub sources: Vec<u64>,
    /// Source records evicted or deleted since (undo is then impossible).
    #[serde(default)]
    pub purged: Vec<u64>,
    /// `llm:<model>` or `extractive`.
    pub method: String,
    /// When it ran.
    pub created_ms: u64,
}

/// What one consolidation run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsolidationReport {
    /// Namespace.
    pub namespace: String,
    /// Records whose importance decayed.
    pub decayed: usize,
    /// Summaries written (their ids).
    pub summaries: Vec<u64>,
    /// Source records folded into them.
    pub consolidated: usize,
    /// Records evicted beyond the quota.
    pub evicted: Vec<u64>,
    /// Why the LLM summarizer was not used, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// The deterministic summary without a model: the (up to) two sentences that share the most
/// keywords with the whole group, in the order they first appear, each once.
pub fn extractive_summary(texts: &[&str]) -> String {
    let mut df: BTreeMap<String, usize> = BTreeMap::new();
    for t in texts {
        let set: BTreeSet<String> = text::terms(t).into_iter().collect();
        for term in set {
            *df.entry(term).or_insert(0) += 1;
        }
    }
    let mut sentences: Vec<(usize, String)> = Vec::new();
    for t in texts {
        for s in t.split_inclusive(['.', '!', '?', '\n']) {
            let s = s.trim();
            if !s.is_empty() && !sentences.iter().any(|(_, x)| x == s) {
                sentences.push((sentences.len(), s.to_string()));
            }
        }
    }
    let score = |s: &str| -> f64 {
        let terms = text::terms(s);
        if terms.is_empty() {
            return 0.0;
        }
        terms
            .iter()
            .map(|t| df.get(t).copied().unwrap_or(0) as f64)
            .sum::<f64>()
            / (terms.len() as f64).sqrt()
    };
    let mut ranked: Vec<(f64, usize, String)> = sentences
        .into_iter()
        .map(|(i, s)| (score(&s), i, s))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<(usize, String)> =
        ranked.into_iter().take(2).map(|(_, i, s)| (i, s)).collect();
    chosen.sort();
    let mut out = chosen
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(" ");
    if out.len() > super::record::MAX_TEXT_BYTES {
        let mut cut = super::record::MAX_TEXT_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

impl Memory {
    /// Runs decay, consolidation and eviction on one namespace (see the module docs).
    pub fn consolidate(
        &self,
        access: &Access,
        ns: &str,
        min_age_ms: u64,
        summarizer: Option<&dyn Summarizer>,
    ) -> Result<ConsolidationReport, MemoryError> {
        self.check_read(access, ns)?;
        if !access.can_write(ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to write namespace {ns:?}"
            )));
        }
        let now = now_ms();
        let mut report = ConsolidationReport {
            namespace: ns.to_string(),
            ..Default::default()
        };
        // Phase 1 (read): the groups.
        let groups = self.groups(ns, now.saturating_sub(min_age_ms))?;
        // Phase 2 (no lock held): the summaries; the LLM may take seconds.
        let mut summaries = Vec::new();
        for g in groups {
            let texts: Vec<&str> = g.iter().map(|r| r.text.as_str()).collect();
            let (text, method) = match summarizer {
                Some(s) => match s.summarize(&texts) {
                    Ok(t) if !t.trim().is_empty() && t.len() <= super::record::MAX_TEXT_BYTES => {
                        (t.trim().to_string(), format!("llm:{}", s.name()))
                    }
                    Ok(_) => {
                        report.fallback = Some("the model returned an unusable summary".into());
                        (extractive_summary(&texts), "extractive".into())
                    }
                    Err(e) => {
                        report.fallback = Some(format!("the model failed: {e}"));
                        (extractive_summary(&texts), "extractive".into())
                    }
                },
                None => {
                    report.fallback = Some("no local chat model is available".into());
                    (extractive_summary(&texts), "extractive".into())
                }
            };
            let vec = self.embedding_for(&text, None).ok().flatten();
            summaries.push((g, text, method, vec));
        }
        // Phase 3 (one write transaction): decay, summaries, eviction.
        self.write(&[ns], |txn| {
            let mut info = ns_info(txn, ns)?;
            let ids: Vec<u64> = txn
                .open_table(tables::BY_NAMESPACE)?
                .range((ns, 0u64)..=(ns, u64::MAX))?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for id in &ids {
                let changed = self.modify(txn, *id, |r| {
                    if r.pinned || now <= r.decayed_ms {
                        return;
                    }
                    let f = 0.5f64.powf((now - r.decayed_ms) as f64 / HALF_LIFE_MS as f64);
                    let new = (r.importance as f64 * f) as f32;
                    if (r.importance - new).abs() >= 1e-4 {
                        r.importance = new;
                        r.decayed_ms = now;
                    }
                })?;
                let _ = changed;
            }
            report.decayed = ids.len();
            for (group, text, method, vec) in summaries {
                // Sources must still exist, unconsolidated and unpinned, as when grouped.
                let mut live = Vec::new();
                for r in &group {
                    if let Some(cur) = self.get_in(txn, r.id)?
                        && cur.consolidated_into.is_none()
                    {
                        live.push(cur);
                    }
                }
                if live.len() < MIN_GROUP {
                    continue;
                }
                let id = super::next_id(txn)?;
                let summary = Record {
                    id,
                    tier: Tier::Semantic,
                    namespace: ns.to_string(),
                    text: text.clone(),
                    metadata: serde_json::json!({"consolidation": {"sources": live.len(), "method": method}})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    created_ms: now,
                    accessed_ms: now,
                    access_count: 0,
                    importance: live.iter().map(|r| r.importance).fold(0.0, f32::max),
                    pinned: false,
                    provenance: Provenance {
                        consolidated_from: live.iter().map(|r| r.id).collect(),
                        ..Default::default()
                    },
                    session: None,
                    occurred_ms: None,
                    source: None,
                    key: None,
                    version: None,
                    superseded_by: None,
                    consolidated_into: None,
                    embedded: vec.is_some(),
                    decayed_ms: now,
                };
                self.insert_record(txn, &summary, vec.as_ref(), &mut info)?;
                for r in &live {
                    self.modify(txn, r.id, |s| s.consolidated_into = Some(id))?;
                }
                let c = Consolidation {
                    namespace: ns.to_string(),
                    sources: live.iter().map(|r| r.id).collect(),
                    purged: Vec::new(),
                    method,
                    created_ms: now,
                };
                txn.open_table(tables::CONSOLIDATIONS)?
                    .insert(id, encode(&c).as_slice())?;
                report.consolidated += live.len();
                report.summaries.push(id);
            }
            // Eviction beyond the quota.
            if info.records > info.quota {
                let mut candidates: Vec<(bool, f32, u64, u64)> = Vec::new();
                let records = txn.open_table(tables::RECORDS)?;
                for row in txn
                    .open_table(tables::BY_NAMESPACE)?
                    .range((ns, 0u64)..=(ns, u64::MAX))?
                {
                    let id = row?.0.value().1;
                    if let Some(v) = records.get(id)? {
                        let r = decode_record(v.value())?;
                        if !r.pinned {
                            candidates.push((
                                r.consolidated_into.is_none(),
                                r.importance,
                                r.accessed_ms,
                                id,
                            ));
                        }
                    }
                }
                drop(records);
                candidates.sort_by(|a, b| {
                    a.0.cmp(&b.0)
                        .then(a.1.total_cmp(&b.1))
                        .then(a.2.cmp(&b.2))
                        .then(a.3.cmp(&b.3))
                });
                let excess = (info.records - info.quota) as usize;
                for (_, _, _, id) in candidates.into_iter().take(excess) {
                    if self.delete_record(txn, id, &mut info)?.is_some() {
                        report.evicted.push(id);
                    }
                }
            }
            put_ns_info(txn, ns, &info)?;
            Ok(())
        })?;
        Ok(report)
    }

    /// Groups of related, unconsolidated episodic records written before `before_ms`.
    fn groups(&self, ns: &str, before_ms: u64) -> Result<Vec<Vec<Record>>, MemoryError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(tables::RECORDS)?;
        let vectors = txn.open_table(tables::VECTORS)?;
        let mut pool: Vec<(Record, Option<QVec>, BTreeSet<String>)> = Vec::new();
        for row in txn
            .open_table(tables::BY_NAMESPACE)?
            .range((ns, 0u64)..=(ns, u64::MAX))?
        {
            let (k, tier) = row?;
            if tier.value() != Tier::Episodic.code() {
                continue;
            }
            let id = k.value().1;
            let Some(v) = records.get(id)? else { continue };
            let r = decode_record(v.value())?;
            if r.pinned || r.consolidated_into.is_some() || r.created_ms > before_ms {
                continue;
            }
            let vec = vectors.get(id)?.and_then(|b| QVec::from_bytes(b.value()));
            let terms = text::terms(&r.text).into_iter().collect();
            pool.push((r, vec, terms));
            if pool.len() >= MAX_EXAMINED {
                break;
            }
        }
        let mut used = vec![false; pool.len()];
        let mut groups = Vec::new();
        for i in 0..pool.len() {
            if used[i] {
                continue;
            }
            let mut g = vec![i];
            for j in i + 1..pool.len() {
                if used[j] || g.len() >= MAX_GROUP {
                    continue;
                }
                let related = match (&pool[i].1, &pool[j].1) {
                    (Some(a), Some(b)) => a.similarity(b) >= GROUP_SIMILARITY,
                    _ => jaccard(&pool[i].2, &pool[j].2) >= GROUP_JACCARD,
                };
                if related {
                    g.push(j);
                }
            }
            if g.len() >= MIN_GROUP {
                for &x in &g {
                    used[x] = true;
                }
                groups.push(g.into_iter().map(|x| pool[x].0.clone()).collect());
            }
        }
        Ok(groups)
    }

    /// Undoes a consolidation: deletes the summary and releases its sources. Refused (409)
    /// once a source has been purged.
    pub fn undo_consolidation(
        &self,
        access: &Access,
        summary: u64,
    ) -> Result<Vec<u64>, MemoryError> {
        let txn = self.db.begin_read()?;
        let c: Consolidation = txn
            .open_table(tables::CONSOLIDATIONS)?
            .get(summary)?
            .map(|v| serde_json::from_slice(v.value()))
            .transpose()
            .map_err(|e| super::decode_error(format!("consolidation {summary}"), e))?
            .ok_or_else(|| MemoryError::NotFound(format!("no consolidation {summary}")))?;
        drop(txn);
        if !access.can_write(&c.namespace) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to write namespace {:?}",
                c.namespace
            )));
        }
        if !c.purged.is_empty() {
            return Err(MemoryError::Conflict(format!(
                "consolidation {summary} cannot be undone: source records {:?} were purged",
                c.purged
            )));
        }
        let ns = c.namespace.clone();
        self.write(&[&ns], |txn| {
            let mut info = ns_info(txn, &ns)?;
            // Deleting the summary releases the sources (see delete_record).
            self.delete_record(txn, summary, &mut info)?;
            put_ns_info(txn, &ns, &info)?;
            Ok(c.sources.clone())
        })
    }

    /// Every consolidation of a namespace, newest first.
    pub fn consolidations(
        &self,
        access: &Access,
        ns: &str,
    ) -> Result<Vec<(u64, Consolidation)>, MemoryError> {
        self.check_read(access, ns)?;
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(tables::CONSOLIDATIONS)?.iter()? {
            let (k, v) = row?;
            if let Ok(c) = serde_json::from_slice::<Consolidation>(v.value())
                && c.namespace == ns
            {
                out.push((k.value(), c));
            }
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extractive_summary_is_deterministic_and_central() {
        let texts = [
            "The backup job failed at 02:00. Disk was full.",
            "Backup job failed again because the disk was full.",
            "Cleaned the disk; the backup job succeeded. Coffee machine broke.",
        ];
        let s = extractive_summary(&texts);
        assert_eq!(s, extractive_summary(&texts));
        assert!(s.contains("backup") || s.contains("Backup"), "{s}");
        assert!(!s.contains("Coffee"), "{s}");
        assert_eq!(extractive_summary(&[]), "");
    }
}

//! Agent memory in the appliance: the `cairn-memory` engine (its public API re-exported here,
//! the names the rest of the appliance uses), the local models as its embedder and
//! summarizer (`models.rs`), and its background job.

pub mod models;

pub use cairn_memory::{
    Access, Embed, InputError, Memory, MemoryError, Mode, NewRecord, Provenance, Query,
    RecordUpdate, StorageError, StorageKind, Summarizer, Tier, migrate,
};

use std::sync::Arc;

/// How often buffered access statistics are written.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// How often every namespace is consolidated.
pub const CONSOLIDATE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Episodic records younger than this are left for a later consolidation.
pub const CONSOLIDATE_MIN_AGE_MS: u64 = 3_600_000;

/// The background job of `cairn serve`: flushes access statistics and consolidates every
/// namespace (with the local chat model when there is one) on a timer.
pub async fn background(memory: Arc<Memory>, inference: Arc<crate::inference::Inference>) {
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut consolidate = tokio::time::interval(CONSOLIDATE_EVERY);
    consolidate.tick().await; // not at start-up
    loop {
        tokio::select! {
            _ = flush.tick() => {
                let m = memory.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || m.flush()).await {
                    tracing::warn!("memory: writing access statistics: {e}");
                }
            }
            _ = consolidate.tick() => {
                let m = memory.clone();
                let summarizer = models::local_summarizer(&inference);
                let _ = tokio::task::spawn_blocking(move || {
                    let a = Access::admin();
                    let names = m.namespaces(&a).map(|n| n.into_keys().collect::<Vec<_>>());
                    for ns in names.unwrap_or_default() {
                        let s = summarizer.as_ref().map(|s| s as &dyn Summarizer);
                        match m.consolidate(&a, &ns, CONSOLIDATE_MIN_AGE_MS, s) {
                            Ok(r) if !r.summaries.is_empty() || !r.evicted.is_empty() => {
                                tracing::info!(
                                    "memory: {ns}: {} summaries of {} records, {} evicted",
                                    r.summaries.len(), r.consolidated, r.evicted.len()
                                );
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!("memory: consolidating {ns}: {e}"),
                        }
                    }
                })
                .await;
            }
        }
    }
}

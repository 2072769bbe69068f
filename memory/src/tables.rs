//! The memory subsystem's redb tables. Every one is written only by this module's writer, and
//! a record, its keyword postings, its vector and its bookkeeping change in one transaction,
//! so a crash leaves either all of a write or none of it. `GRAPH` is written by checkpoints
//! (see `Memory::checkpoint`): records from `META["graph_through"]` on are re-inserted into
//! the graph from `VECTORS` when it is loaded.

use redb::{MultimapTableDefinition, ReadableTable, TableDefinition};

/// Record id → record (JSON).
pub const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("mem_records");
/// Record id → quantized embedding (`QVec::to_bytes`).
pub const VECTORS: TableDefinition<u64, &[u8]> = TableDefinition::new("mem_vectors");
/// (namespace, record id) → HNSW node: tier code, level count, then per level a u16 count
/// and that many u64 neighbour ids (little-endian).
pub const GRAPH: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mem_graph");
/// (namespace, segment, term, first record id) → a block of merged keyword postings (see
/// `postings.rs`).
pub const SEG_BLOCKS: TableDefinition<(&str, u64, &str, u64), &[u8]> =
    TableDefinition::new("mem_seg_blocks");
/// (namespace, segment) → the segment's level and its number of postings (see
/// `postings.rs`).
pub const SEGMENTS: TableDefinition<(&str, u64), (u64, u64)> = TableDefinition::new("mem_segments");
/// Schema 3's merged postings, (term, namespace, first record id) → a block: moved into
/// segments and deleted by the migration to schema 4.
pub const POSTING_BLOCKS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("mem_posting_blocks");
/// Schema 2's postings, one row per (term, namespace, record id) → term frequency << 32 |
/// document length: moved into segments and deleted by the migration to schema 4.
pub const POSTINGS_V2: TableDefinition<(&str, &str, u64), u64> =
    TableDefinition::new("mem_postings");
/// (namespace, record id) → the keyword postings (see [`encode_terms`]) of a record whose id
/// is below `META[POSTINGS_THROUGH]` and whose text changed since the last merge; merged into
/// a segment by the next merge. (A record from `POSTINGS_THROUGH` on needs no row: its
/// unmerged postings are read again from its text when memory opens.)
pub const POSTINGS_NEW: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("mem_postings_new");
/// (namespace, record id) → tier code: every record of a namespace in id (= time) order.
pub const BY_NAMESPACE: TableDefinition<(&str, u64), u8> = TableDefinition::new("mem_by_namespace");
/// Namespace → settings and counters (JSON: quota, records, terms).
pub const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("mem_namespaces");
/// (namespace, normalised-text hash) → semantic record id (exact-duplicate detection).
pub const DEDUP: TableDefinition<(&str, &[u8]), u64> = TableDefinition::new("mem_dedup");
/// (namespace, procedure key, version) → record id.
pub const PROCEDURES: TableDefinition<(&str, &str, u32), u64> =
    TableDefinition::new("mem_procedures");
/// (namespace, session) → working-memory record ids.
pub const WORKING: MultimapTableDefinition<(&str, &str), u64> =
    MultimapTableDefinition::new("mem_working");
/// Consolidation summary id → consolidation (JSON: namespace, sources, method, purged).
pub const CONSOLIDATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("mem_consolidations");
/// Counters: `next_id`, `dims` (vector dimensions, 0 until the first vector), `graph_through`
/// (records with smaller ids have their graph node in `GRAPH`), [`POSTINGS_THROUGH`],
/// [`NEXT_SEGMENT`].
pub const META: TableDefinition<&str, u64> = TableDefinition::new("mem_meta");
/// `META` key: every record with a smaller id has its keyword postings in a segment or in
/// `POSTINGS_NEW`; records from this id on have theirs only in memory until the next merge.
pub const POSTINGS_THROUGH: &str = "postings_through";
/// `META` key: the next keyword segment id.
pub const NEXT_SEGMENT: &str = "next_segment";

/// Creates every memory table that is missing, in a write transaction (the schema
/// migrations to 2 and to 4), and starts the keyword index after the records that exist.
pub fn create(txn: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(RECORDS)?;
    txn.open_table(VECTORS)?;
    txn.open_table(GRAPH)?;
    txn.open_table(SEG_BLOCKS)?;
    txn.open_table(SEGMENTS)?;
    txn.open_table(POSTINGS_NEW)?;
    txn.open_table(BY_NAMESPACE)?;
    txn.open_table(DEDUP)?;
    txn.open_table(PROCEDURES)?;
    txn.open_multimap_table(WORKING)?;
    txn.open_table(CONSOLIDATIONS)?;
    let mut meta = txn.open_table(META)?;
    if meta.get("next_id")?.is_none() {
        meta.insert("next_id", 1)?;
    }
    if meta.get(POSTINGS_THROUGH)?.is_none() {
        // Records that exist have their postings in the old layout, migrated with them.
        let next = meta.get("next_id")?.map_or(1, |v| v.value());
        meta.insert(POSTINGS_THROUGH, next)?;
    }
    let mut ns = txn.open_table(NAMESPACES)?;
    if ns.get("shared")?.is_none() {
        let v = serde_json::to_vec(&super::NamespaceInfo::default()).unwrap_or_default();
        ns.insert("shared", v.as_slice())?;
    }
    Ok(())
}

/// Encodes a record's postings: document length (u32), then per term its frequency (u32),
/// its length in bytes (u8) and the term.
pub fn encode_terms(len: u32, counts: &[(String, u32)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + counts.iter().map(|(t, _)| 5 + t.len()).sum::<usize>());
    b.extend_from_slice(&len.to_le_bytes());
    for (t, tf) in counts {
        b.extend_from_slice(&tf.to_le_bytes());
        b.push(t.len().min(255) as u8);
        b.extend_from_slice(&t.as_bytes()[..t.len().min(255)]);
    }
    b
}

/// Decodes [`encode_terms`]: the document length and (term, frequency) pairs; `None` if
/// malformed.
pub fn decode_terms(b: &[u8]) -> Option<(u32, Vec<(&str, u32)>)> {
    let (len, mut rest) = b.split_first_chunk::<4>()?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (tf, r) = rest.split_first_chunk::<4>()?;
        let (&n, r) = r.split_first()?;
        let t = std::str::from_utf8(r.get(..n as usize)?).ok()?;
        out.push((t, u32::from_le_bytes(*tf)));
        rest = &r[n as usize..];
    }
    Some((u32::from_le_bytes(*len), out))
}

/// Encodes a graph node's value.
pub fn encode_node(tag: u8, links: &[Vec<u64>]) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + links.iter().map(|l| 2 + 8 * l.len()).sum::<usize>());
    b.push(tag);
    b.push(links.len() as u8);
    for l in links {
        b.extend_from_slice(&(l.len() as u16).to_le_bytes());
        for id in l {
            b.extend_from_slice(&id.to_le_bytes());
        }
    }
    b
}

/// Decodes a graph node's value; `None` if it is malformed.
pub fn decode_node(b: &[u8]) -> Option<(u8, Vec<Vec<u64>>)> {
    let (&tag, rest) = b.split_first()?;
    let (&levels, mut rest) = rest.split_first()?;
    let mut links = Vec::with_capacity(levels as usize);
    for _ in 0..levels {
        let (n, r) = rest.split_first_chunk::<2>()?;
        let n = u16::from_le_bytes(*n) as usize;
        let bytes = r.get(..n * 8)?;
        links.push(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        );
        rest = &r[n * 8..];
    }
    Some((tag, links))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_round_trip_and_truncation() {
        let c = vec![("naïve".to_string(), 1), ("router".to_string(), 3)];
        let b = encode_terms(9, &c);
        let (len, terms) = decode_terms(&b).unwrap();
        assert_eq!(len, 9);
        assert_eq!(terms, [("naïve", 1), ("router", 3)]);
        // 4 + (4 + 1 + 6) bytes end the first term: cuts inside a term are refused.
        for cut in (5..15).chain(16..b.len()) {
            assert!(decode_terms(&b[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn node_round_trip_and_truncation() {
        let links = vec![vec![1, 2, 3], vec![], vec![u64::MAX]];
        let b = encode_node(2, &links);
        assert_eq!(decode_node(&b), Some((2, links)));
        for cut in 0..b.len() {
            assert!(decode_node(&b[..cut]).is_none(), "cut at {cut}");
        }
    }
}

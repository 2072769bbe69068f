//! The merged keyword postings, in immutable segments (log-structured, as FTS5 and Lucene
//! keep theirs).
//!
//! Unmerged postings live in memory (`pending.rs`). A merge writes all of them as one new
//! segment per namespace: rows of `SEG_BLOCKS` keyed (namespace, segment, term, first record
//! id), each a block of up to [`BLOCK`] postings in id order. Segment ids only grow, so a
//! segment's rows are one contiguous key range written in order: a merge appends pages instead
//! of rewriting each term's last block wherever it sits in the table. `SEGMENTS` lists every
//! segment of a namespace with its level: a merge's output is level 0, and when a namespace
//! has [`FANOUT`] segments of one level they are compacted into one segment of the next level
//! (a streaming k-way merge, term by term), so a namespace holds a few segments per level and
//! each posting is rewritten about once per level.
//!
//! Invariants, kept by every function here: a posting (term, namespace, id) is in at most one
//! segment (and then not in the unmerged view); within a segment a term's blocks hold
//! disjoint, ascending id ranges; no block is empty; a block's key is its first id. A term's
//! postings are the union of its blocks over the namespace's segments.
//!
//! Block encoding, per posting: LEB128 id delta (the first from the key, so 0), LEB128 term
//! frequency, LEB128 document length.

use super::{MemoryError, tables};
use crate::StorageError;
use redb::{ReadableTable, Table, WriteTransaction};

/// Most postings in one block.
pub const BLOCK: usize = 128;
/// Segments of one level that are compacted into one segment of the next level.
pub const FANOUT: usize = 8;

/// A posting: record id, then term frequency << 32 | document length.
pub type Posting = (u64, u64);

/// Key of `SEG_BLOCKS`: namespace, segment, term, first record id of the block.
type BlockKey = (&'static str, u64, &'static str, u64);
type Blocks<'t> = Table<'t, BlockKey, &'static [u8]>;

pub(super) fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Encodes a block (postings sorted by id, the first equal to the block's key).
pub fn encode(postings: &[Posting]) -> Vec<u8> {
    let mut b = Vec::with_capacity(postings.len() * 4);
    let mut prev = postings.first().map_or(0, |p| p.0);
    for &(id, packed) in postings {
        put_varint(&mut b, id - prev);
        put_varint(&mut b, packed >> 32);
        put_varint(&mut b, packed & 0xffff_ffff);
        prev = id;
    }
    b
}

/// Decodes a block whose key is `first`; `None` if it is malformed.
pub fn decode(first: u64, mut b: &[u8], out: &mut Vec<Posting>) -> Option<()> {
    let mut id = first;
    let mut n = 0;
    while !b.is_empty() {
        let delta = get_varint(&mut b)?;
        if n > 0 && delta == 0 {
            return None;
        }
        id = id.checked_add(delta)?;
        let tf = u32::try_from(get_varint(&mut b)?).ok()?;
        let len = u32::try_from(get_varint(&mut b)?).ok()?;
        out.push((id, (u64::from(tf) << 32) | u64::from(len)));
        n += 1;
    }
    (n > 0).then_some(())
}

fn corrupt(term: &str, ns: &str, seg: u64, first: u64) -> MemoryError {
    MemoryError::Store(StorageError::CorruptPostings {
        term: term.to_string(),
        namespace: ns.to_string(),
        segment: seg,
        block: first,
    })
}

/// A segment of a namespace: id, level and number of postings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Segment id.
    pub id: u64,
    /// Level: 0 for a merge's output, one more for each compaction.
    pub level: u64,
    /// Postings it holds (when written; removals are not counted).
    pub postings: u64,
}

/// Bytes a compaction of segments holding `postings` postings may need on disk: the new
/// segment (~4 bytes a posting plus keys) and the pages copied on the way.
fn compaction_bytes(postings: u64) -> u64 {
    postings.saturating_mul(16).saturating_add(1 << 20)
}

/// The segments of `ns`, oldest first.
pub fn segments(
    table: &impl ReadableTable<(&'static str, u64), (u64, u64)>,
    ns: &str,
) -> Result<Vec<Segment>, MemoryError> {
    let mut out = Vec::new();
    for row in table.range((ns, 0u64)..=(ns, u64::MAX))? {
        let (k, v) = row?;
        let (level, postings) = v.value();
        out.push(Segment {
            id: k.value().1,
            level,
            postings,
        });
    }
    Ok(out)
}

/// Appends every posting of `term` in segments `segs` of `ns` to `out` (segment by segment,
/// each in id order).
pub fn read(
    table: &impl ReadableTable<BlockKey, &'static [u8]>,
    ns: &str,
    segs: &[u64],
    term: &str,
    out: &mut Vec<Posting>,
) -> Result<(), MemoryError> {
    for &seg in segs {
        for row in table.range((ns, seg, term, 0u64)..=(ns, seg, term, u64::MAX))? {
            let (k, v) = row?;
            let first = k.value().3;
            decode(first, v.value(), out).ok_or_else(|| corrupt(term, ns, seg, first))?;
        }
    }
    Ok(())
}

/// Writes `list` (sorted by id, ids unique) as the blocks of `term` in segment `seg` of `ns`.
fn write_term(
    table: &mut Blocks<'_>,
    ns: &str,
    seg: u64,
    term: &str,
    list: &[Posting],
) -> Result<(), MemoryError> {
    for chunk in list.chunks(BLOCK) {
        table.insert((ns, seg, term, chunk[0].0), encode(chunk).as_slice())?;
    }
    Ok(())
}

/// Takes a new segment id.
fn next_segment(txn: &WriteTransaction) -> Result<u64, MemoryError> {
    let mut meta = txn.open_table(tables::META)?;
    let seg = meta.get(tables::NEXT_SEGMENT)?.map_or(1, |v| v.value());
    meta.insert(tables::NEXT_SEGMENT, seg + 1)?;
    Ok(seg)
}

/// Writes `terms` (sorted by term, each list sorted by id with unique ids) as a new level-0
/// segment of `ns`, then compacts the namespace's levels that reach [`FANOUT`] segments, each
/// only when `room(bytes)` says the disk can take it (otherwise the level waits for the next
/// merge: searches read any number of segments).
pub fn add_segment<'a>(
    txn: &WriteTransaction,
    ns: &str,
    terms: impl IntoIterator<Item = (&'a str, &'a [Posting])>,
    room: &dyn Fn(u64) -> bool,
) -> Result<(), MemoryError> {
    let seg = next_segment(txn)?;
    let mut postings = 0u64;
    {
        let mut blocks = txn.open_table(tables::SEG_BLOCKS)?;
        for (term, list) in terms {
            if !list.is_empty() {
                write_term(&mut blocks, ns, seg, term, list)?;
                postings += list.len() as u64;
            }
        }
    }
    if postings == 0 {
        return Ok(());
    }
    txn.open_table(tables::SEGMENTS)?
        .insert((ns, seg), (0, postings))?;
    compact_levels(txn, ns, room)
}

/// Compacts every level of `ns` that holds [`FANOUT`] or more segments into one segment of
/// the next level, from level 0 up, while `room` allows.
fn compact_levels(
    txn: &WriteTransaction,
    ns: &str,
    room: &dyn Fn(u64) -> bool,
) -> Result<(), MemoryError> {
    let mut level = 0;
    loop {
        let segs = segments(&txn.open_table(tables::SEGMENTS)?, ns)?;
        let at: Vec<Segment> = segs.iter().filter(|s| s.level == level).copied().collect();
        if at.len() < FANOUT {
            if segs.iter().all(|s| s.level <= level) {
                return Ok(());
            }
            level += 1;
            continue;
        }
        let postings: u64 = at.iter().map(|s| s.postings).sum();
        if !room(compaction_bytes(postings)) {
            tracing::debug!("memory: too little space to compact {ns:?}'s keyword segments now");
            return Ok(());
        }
        let into = next_segment(txn)?;
        let ids: Vec<u64> = at.iter().map(|s| s.id).collect();
        let mut blocks = txn.open_table(tables::SEG_BLOCKS)?;
        let written = compact(&mut blocks, ns, &ids, into)?;
        drop(blocks);
        let mut table = txn.open_table(tables::SEGMENTS)?;
        for s in &ids {
            table.remove((ns, *s))?;
        }
        table.insert((ns, into), (level + 1, written))?;
    }
}

/// Merges segments `from` of `ns` into segment `into` and deletes them: term by term, each
/// term's postings read from every segment that has it (ranges reopened after each term's
/// write, so nothing but one term's postings is held in memory). Returns the postings
/// written.
pub fn compact(
    table: &mut Blocks<'_>,
    ns: &str,
    from: &[u64],
    into: u64,
) -> Result<u64, MemoryError> {
    let mut written = 0u64;
    // The next term of each segment (None once it has no more).
    let mut heads: Vec<Option<String>> = Vec::with_capacity(from.len());
    for &seg in from {
        let first = table
            .range((ns, seg, "", 0u64)..(ns, seg + 1, "", 0u64))?
            .next()
            .transpose()?
            .map(|(k, _)| k.value().2.to_string());
        heads.push(first);
    }
    let mut list: Vec<Posting> = Vec::new();
    while let Some(term) = heads.iter().flatten().min().cloned() {
        list.clear();
        for (i, &seg) in from.iter().enumerate() {
            if heads[i].as_deref() != Some(term.as_str()) {
                continue;
            }
            heads[i] = None;
            for row in table.range((ns, seg, term.as_str(), 0u64)..(ns, seg + 1, "", 0u64))? {
                let (k, v) = row?;
                let (_, _, t, first) = k.value();
                if t != term {
                    heads[i] = Some(t.to_string());
                    break;
                }
                decode(first, v.value(), &mut list)
                    .ok_or_else(|| corrupt(&term, ns, seg, first))?;
            }
        }
        list.sort_unstable_by_key(|p| p.0);
        list.dedup_by_key(|p| p.0);
        write_term(table, ns, into, &term, &list)?;
        written += list.len() as u64;
    }
    for &seg in from {
        table.retain_in((ns, seg, "", 0u64)..(ns, seg + 1, "", 0u64), |_, _| false)?;
    }
    Ok(written)
}

/// Removes record `id`'s posting of `term` from the segments of `ns` (at most one holds it);
/// whether one did.
pub fn remove(txn: &WriteTransaction, ns: &str, term: &str, id: u64) -> Result<bool, MemoryError> {
    let segs = segments(&txn.open_table(tables::SEGMENTS)?, ns)?;
    let mut table = txn.open_table(tables::SEG_BLOCKS)?;
    for seg in segs.iter().rev().map(|s| s.id) {
        let row = table
            .range((ns, seg, term, 0u64)..=(ns, seg, term, id))?
            .next_back()
            .transpose()?
            .map(|(k, v)| (k.value().3, v.value().to_vec()));
        let Some((first, bytes)) = row else {
            continue;
        };
        let mut list = Vec::new();
        decode(first, &bytes, &mut list).ok_or_else(|| corrupt(term, ns, seg, first))?;
        let Ok(pos) = list.binary_search_by_key(&id, |p| p.0) else {
            continue;
        };
        list.remove(pos);
        table.remove((ns, seg, term, first))?;
        if !list.is_empty() {
            table.insert((ns, seg, term, list[0].0), encode(&list).as_slice())?;
        }
        return Ok(true);
    }
    Ok(false)
}

/// Deletes every segment of `ns` (the namespace is being deleted).
pub fn drop_namespace(txn: &WriteTransaction, ns: &str) -> Result<(), MemoryError> {
    txn.open_table(tables::SEG_BLOCKS)?.retain_in(
        (ns, 0u64, "", 0u64)..=(ns, u64::MAX, "\u{10FFFF}", u64::MAX),
        |_, _| false,
    )?;
    txn.open_table(tables::SEGMENTS)?
        .retain_in((ns, 0u64)..=(ns, u64::MAX), |_, _| false)?;
    Ok(())
}

/// Schemas 2 and 3 → 4: the postings of the old layout (schema 2: one row per posting;
/// schema 3: blocks keyed (term, namespace, first id)) become one segment per namespace, and
/// the old table is deleted. The old rows come in (term, namespace) order and are written as
/// they are read, one term's postings at a time. Each namespace's segment gets the level a
/// series of merges and compactions would have given it, so that it is not rewritten by the
/// next few merges.
pub fn migrate_to_segments(txn: &WriteTransaction, schema: u64) -> Result<(), MemoryError> {
    let mut runs = Runs::default();
    let mut blocks = txn.open_table(tables::SEG_BLOCKS)?;
    if schema == 2 {
        let rows = txn.open_table(tables::POSTINGS_V2)?;
        for row in rows.iter()? {
            let (k, v) = row?;
            let (term, ns, id) = k.value();
            runs.at(txn, &mut blocks, term, ns)?.push((id, v.value()));
        }
        runs.flush(txn, &mut blocks)?;
        drop(rows);
        drop(blocks);
        txn.delete_table(tables::POSTINGS_V2)?;
    } else {
        let rows = txn.open_table(tables::POSTING_BLOCKS)?;
        for row in rows.iter()? {
            let (k, v) = row?;
            let (term, ns, first) = k.value();
            let list = runs.at(txn, &mut blocks, term, ns)?;
            decode(first, v.value(), list).ok_or_else(|| corrupt(term, ns, 0, first))?;
        }
        runs.flush(txn, &mut blocks)?;
        drop(rows);
        drop(blocks);
        txn.delete_table(tables::POSTING_BLOCKS)?;
    }
    let mut table = txn.open_table(tables::SEGMENTS)?;
    for (ns, (seg, postings)) in &runs.segs {
        // About a dozen postings a record: the level whose segments hold this many.
        let records = postings / 12;
        let mut level = 0u64;
        let mut span = super::MERGE_POSTINGS_EVERY as u64;
        while records > span && level < 8 {
            span = span.saturating_mul(FANOUT as u64);
            level += 1;
        }
        table.insert((ns.as_str(), *seg), (level, *postings))?;
    }
    Ok(())
}

/// The migration's state: the old rows' current (term, namespace) run and its postings, and
/// each namespace's new segment.
#[derive(Default)]
struct Runs {
    /// Namespace → (segment id, postings written).
    segs: std::collections::BTreeMap<String, (u64, u64)>,
    run: Option<(String, String)>,
    list: Vec<Posting>,
}

impl Runs {
    /// The postings list of (`term`, `ns`), writing out the previous run when it changes.
    fn at(
        &mut self,
        txn: &WriteTransaction,
        blocks: &mut Blocks<'_>,
        term: &str,
        ns: &str,
    ) -> Result<&mut Vec<Posting>, MemoryError> {
        if self
            .run
            .as_ref()
            .is_none_or(|(t, n)| (t.as_str(), n.as_str()) != (term, ns))
        {
            self.flush(txn, blocks)?;
            self.run = Some((term.to_string(), ns.to_string()));
        }
        Ok(&mut self.list)
    }

    /// Writes the current run's postings to its namespace's segment.
    fn flush(
        &mut self,
        txn: &WriteTransaction,
        blocks: &mut Blocks<'_>,
    ) -> Result<(), MemoryError> {
        let Some((term, ns)) = &self.run else {
            return Ok(());
        };
        self.list.sort_unstable_by_key(|p| p.0);
        self.list.dedup_by_key(|p| p.0);
        if !self.list.is_empty() {
            let entry = match self.segs.get_mut(ns.as_str()) {
                Some(e) => e,
                None => self
                    .segs
                    .entry(ns.clone())
                    .or_insert((next_segment(txn)?, 0)),
            };
            write_term(blocks, ns, entry.0, term, &self.list)?;
            entry.1 += self.list.len() as u64;
        }
        self.list.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    fn db() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let txn = db.begin_write().unwrap();
        tables::create(&txn).unwrap();
        txn.commit().unwrap();
        (dir, db)
    }

    fn all(txn: &WriteTransaction, ns: &str, term: &str) -> Vec<u64> {
        let segs: Vec<u64> = segments(&txn.open_table(tables::SEGMENTS).unwrap(), ns)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        let mut out = Vec::new();
        read(
            &txn.open_table(tables::SEG_BLOCKS).unwrap(),
            ns,
            &segs,
            term,
            &mut out,
        )
        .unwrap();
        let mut ids: Vec<u64> = out.into_iter().map(|p| p.0).collect();
        ids.sort_unstable();
        ids
    }

    /// Checks the invariants: blocks in range, none empty or over BLOCK, keyed by their first
    /// id, ascending and disjoint within a (segment, term), every row's segment listed, and no
    /// posting in two segments.
    fn check(txn: &WriteTransaction) {
        let segs = txn.open_table(tables::SEGMENTS).unwrap();
        let mut last: Option<(String, u64, String, u64)> = None;
        let mut seen = std::collections::HashSet::new();
        for row in txn.open_table(tables::SEG_BLOCKS).unwrap().iter().unwrap() {
            let (k, v) = row.unwrap();
            let (ns, seg, term, first) = k.value();
            assert!(
                segs.get((ns, seg)).unwrap().is_some(),
                "unlisted segment {seg}"
            );
            let mut list = Vec::new();
            decode(first, v.value(), &mut list).unwrap();
            assert!(!list.is_empty() && list.len() <= BLOCK);
            assert_eq!(list[0].0, first);
            assert!(list.windows(2).all(|w| w[0].0 < w[1].0));
            if let Some((ln, ls, lt, lmax)) = &last
                && (ln.as_str(), *ls, lt.as_str()) == (ns, seg, term)
            {
                assert!(first > *lmax, "blocks overlap");
            }
            for p in &list {
                assert!(
                    seen.insert((ns.to_string(), term.to_string(), p.0)),
                    "posting in two segments"
                );
            }
            last = Some((ns.into(), seg, term.into(), list.last().unwrap().0));
        }
    }

    #[test]
    fn compaction_waits_for_room_and_reads_are_the_same_meanwhile() {
        let (_dir, db) = db();
        let txn = db.begin_write().unwrap();
        let mut want = Vec::new();
        for m in 0..FANOUT as u64 + 2 {
            let list: Vec<Posting> = (m * 10 + 1..=m * 10 + 10)
                .map(|id| (id, 1 << 32 | 3))
                .collect();
            want.extend(list.iter().map(|p| p.0));
            add_segment(&txn, "ns", [("w", list.as_slice())], &|_| false).unwrap();
        }
        let levels = |txn: &WriteTransaction| -> Vec<u64> {
            segments(&txn.open_table(tables::SEGMENTS).unwrap(), "ns")
                .unwrap()
                .iter()
                .map(|s| s.level)
                .collect()
        };
        assert_eq!(
            levels(&txn),
            vec![0; FANOUT + 2],
            "no room: nothing compacted"
        );
        assert_eq!(all(&txn, "ns", "w"), want);
        // The next merge with room compacts what is due.
        add_segment(&txn, "ns", [("w", [(1000u64, 1u64)].as_slice())], &|_| true).unwrap();
        want.push(1000);
        assert_eq!(levels(&txn), [1], "{:?}", levels(&txn));
        assert_eq!(all(&txn, "ns", "w"), want);
        check(&txn);
        txn.commit().unwrap();
    }

    #[test]
    fn encoding_round_trips_and_refuses_garbage() {
        let list = vec![(7, (3 << 32) | 12), (9, (1 << 32) | 300), (1 << 40, 5)];
        let b = encode(&list);
        let mut out = Vec::new();
        decode(7, &b, &mut out).unwrap();
        assert_eq!(out, list);
        // A cut between postings is a shorter valid block; one inside a posting is refused.
        let ends: Vec<usize> = (1..list.len()).map(|i| encode(&list[..i]).len()).collect();
        for cut in 1..b.len() {
            let ok = decode(7, &b[..cut], &mut Vec::new()).is_some();
            assert_eq!(ok, ends.contains(&cut), "cut {cut}");
        }
        assert!(decode(1, &[], &mut Vec::new()).is_none(), "empty block");
        assert!(
            decode(1, &[0xff; 11], &mut Vec::new()).is_none(),
            "overlong varint"
        );
        // A repeated id (zero delta after the first) is refused.
        assert!(decode(1, &[0, 1, 1, 0, 1, 1], &mut Vec::new()).is_none());
    }

    #[test]
    fn segments_compact_by_level_and_keep_every_posting() {
        let (_dir, db) = db();
        let txn = db.begin_write().unwrap();
        let mut want_w: Vec<u64> = Vec::new();
        let mut want_v: Vec<u64> = Vec::new();
        // FANOUT² + 3 merges: two levels compact, the last few segments stay at level 0.
        let merges = FANOUT * FANOUT + 3;
        for m in 0..merges as u64 {
            // Term "w" in every record (blocks split), "v" in some; ids ascend across merges
            // except one re-added old id per merge (an updated record).
            let ids: Vec<u64> = (m * 300 + 1..=m * 300 + 300).collect();
            let mut w: Vec<Posting> = ids.iter().map(|&id| (id, 1 << 32 | 4)).collect();
            let v: Vec<Posting> = ids
                .iter()
                .filter(|&&id| id % 7 == 0)
                .map(|&id| (id, 2 << 32 | 4))
                .collect();
            if m > 0 {
                // Re-adding id m (from the first merge) takes it out of its old segment first,
                // as an update does.
                assert!(remove(&txn, "ns", "w", m).unwrap());
                w.insert(0, (m, 3 << 32 | 4));
            }
            want_w.extend(ids.iter().copied());
            want_v.extend(v.iter().map(|p| p.0));
            add_segment(
                &txn,
                "ns",
                [("v", v.as_slice()), ("w", w.as_slice())],
                &|_| true,
            )
            .unwrap();
            check(&txn);
        }
        want_w.sort_unstable();
        want_v.sort_unstable();
        assert_eq!(all(&txn, "ns", "w"), want_w);
        assert_eq!(all(&txn, "ns", "v"), want_v);
        let segs = segments(&txn.open_table(tables::SEGMENTS).unwrap(), "ns").unwrap();
        let count = |l: u64| segs.iter().filter(|s| s.level == l).count();
        assert_eq!((count(0), count(1), count(2)), (3, 0, 1), "{segs:?}");
        // The re-added ids carry their newest value.
        let mut got = Vec::new();
        let ids: Vec<u64> = segs.iter().map(|s| s.id).collect();
        read(
            &txn.open_table(tables::SEG_BLOCKS).unwrap(),
            "ns",
            &ids,
            "w",
            &mut got,
        )
        .unwrap();
        assert_eq!(got.iter().find(|p| p.0 == 5).unwrap().1 >> 32, 3);
        // Removes: present, absent, unknown terms; every id of a block.
        for id in [1u64, 2, 300, 301, 5000, 9999] {
            assert!(remove(&txn, "ns", "w", id).unwrap(), "{id}");
            want_w.retain(|&w| w != id);
        }
        for id in 600..=900 {
            remove(&txn, "ns", "w", id).unwrap();
        }
        want_w.retain(|&w| !(600..=900).contains(&w));
        assert!(!remove(&txn, "ns", "w", 1).unwrap());
        assert!(!remove(&txn, "ns", "nope", 5).unwrap());
        check(&txn);
        assert_eq!(all(&txn, "ns", "w"), want_w);
        // Segment sizes are kept: the compacted level-2 segment holds every posting of the
        // first 64 merges that is still there (removals are not counted).
        let total: u64 = segs.iter().map(|s| s.postings).sum();
        assert!(total as usize >= want_w.len() + want_v.len(), "{segs:?}");
        // Other namespaces are separate; dropping one leaves the others.
        add_segment(&txn, "other", [("w", [(5u64, 1u64)].as_slice())], &|_| true).unwrap();
        assert_eq!(all(&txn, "other", "w"), [5]);
        drop_namespace(&txn, "ns").unwrap();
        assert!(all(&txn, "ns", "w").is_empty());
        assert_eq!(all(&txn, "other", "w"), [5]);
        check(&txn);
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(
            txn.open_table(tables::SEG_BLOCKS).unwrap().len().unwrap(),
            1
        );
    }
}

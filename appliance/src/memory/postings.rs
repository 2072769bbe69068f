//! The merged keyword postings: per term and namespace, blocks of up to [`BLOCK`] postings in
//! record-id order, one row of `POSTING_BLOCKS` each, keyed by the block's first id.
//!
//! A merge of a batch of records rewrites one block per distinct term (usually the last,
//! partly filled one) instead of inserting one row per posting, and a search decodes a few
//! blocks per term instead of walking a row per posting. Invariants, kept by every function
//! here: a (term, namespace)'s blocks hold disjoint, ascending id ranges; no block is empty;
//! a block's key is its first id.
//!
//! Block encoding, per posting: LEB128 id delta (the first from the key, so 0), LEB128 term
//! frequency, LEB128 document length.

use super::{MemoryError, tables};
use crate::store::StoreError;
use redb::{ReadableTable, Table};

/// Most postings in one block.
pub const BLOCK: usize = 128;

/// A posting: record id, then term frequency << 32 | document length.
pub type Posting = (u64, u64);

type Blocks<'t> = Table<'t, (&'static str, &'static str, u64), &'static [u8]>;

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
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

fn corrupt(term: &str, ns: &str, first: u64) -> MemoryError {
    MemoryError::Store(StoreError::Other(format!(
        "corrupt keyword postings of {term:?} in {ns:?} (block {first})"
    )))
}

/// Appends every posting of `term` in `ns` to `out` (in id order).
pub fn read(
    table: &impl ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    term: &str,
    ns: &str,
    out: &mut Vec<Posting>,
) -> Result<(), MemoryError> {
    for row in table.range((term, ns, 0u64)..=(term, ns, u64::MAX))? {
        let (k, v) = row?;
        let first = k.value().2;
        decode(first, v.value(), out).ok_or_else(|| corrupt(term, ns, first))?;
    }
    Ok(())
}

/// The block of `term` in `ns` that holds `id` or would: the last one starting at or before
/// it, else the first one (`None` when there is none), decoded.
fn block_for(
    table: &Blocks<'_>,
    term: &str,
    ns: &str,
    id: u64,
) -> Result<Option<(u64, Vec<Posting>)>, MemoryError> {
    let row = match table.range((term, ns, 0u64)..=(term, ns, id))?.next_back() {
        Some(row) => Some(row?),
        None => table
            .range((term, ns, id)..=(term, ns, u64::MAX))?
            .next()
            .transpose()?,
    };
    let Some((k, v)) = row else {
        return Ok(None);
    };
    let first = k.value().2;
    let mut list = Vec::new();
    decode(first, v.value(), &mut list).ok_or_else(|| corrupt(term, ns, first))?;
    Ok(Some((first, list)))
}

/// Writes `list` (sorted, ids unique) as the blocks replacing the block keyed `old` (if any;
/// `unchanged`: its first `unchanged` postings are the old block as stored).
fn write_blocks(
    table: &mut Blocks<'_>,
    term: &str,
    ns: &str,
    old: Option<u64>,
    list: &[Posting],
    unchanged: usize,
) -> Result<(), MemoryError> {
    if let Some(old) = old
        && list.first().is_none_or(|p| p.0 != old)
    {
        table.remove((term, ns, old))?;
    }
    for (i, chunk) in list.chunks(BLOCK).enumerate() {
        // A full old block that only gained postings after it is not written again.
        if i == 0 && unchanged == chunk.len() && old == Some(chunk[0].0) {
            continue;
        }
        table.insert((term, ns, chunk[0].0), encode(chunk).as_slice())?;
    }
    Ok(())
}

/// Adds `new` (sorted by id, ids unique; an id already present takes the new value) to the
/// postings of `term` in `ns`.
pub fn add(
    table: &mut Blocks<'_>,
    term: &str,
    ns: &str,
    new: &[Posting],
) -> Result<(), MemoryError> {
    let mut rest = new;
    while let Some(&(lowest, _)) = rest.first() {
        let (old, list) = match block_for(table, term, ns, lowest)? {
            Some((first, list)) => (Some(first), list),
            None => (None, Vec::new()),
        };
        // This block takes every new posting below the next block's first id.
        let next = match old {
            Some(first) if first < u64::MAX => table
                .range((term, ns, first + 1)..=(term, ns, u64::MAX))?
                .next()
                .transpose()?
                .map(|(k, _)| k.value().2),
            _ => None,
        };
        let take = rest.partition_point(|p| next.is_none_or(|n| p.0 < n));
        let (mine, after) = rest.split_at(take);
        let appended = list.last().is_none_or(|l| mine[0].0 > l.0);
        let unchanged = if appended { list.len() } else { 0 };
        let merged = if appended {
            let mut m = list;
            m.extend_from_slice(mine);
            m
        } else {
            let mut m = Vec::with_capacity(list.len() + mine.len());
            let (mut a, mut b) = (list.as_slice(), mine);
            while let (Some(x), Some(y)) = (a.first(), b.first()) {
                if x.0 < y.0 {
                    m.push(*x);
                    a = &a[1..];
                } else {
                    if x.0 == y.0 {
                        a = &a[1..];
                    }
                    m.push(*y);
                    b = &b[1..];
                }
            }
            m.extend_from_slice(a);
            m.extend_from_slice(b);
            m
        };
        write_blocks(table, term, ns, old, &merged, unchanged)?;
        rest = after;
    }
    Ok(())
}

/// Removes record `id`'s posting of `term` in `ns`; whether it was there.
pub fn remove(table: &mut Blocks<'_>, term: &str, ns: &str, id: u64) -> Result<bool, MemoryError> {
    let Some((first, mut list)) = block_for(table, term, ns, id)? else {
        return Ok(false);
    };
    let Ok(pos) = list.binary_search_by_key(&id, |p| p.0) else {
        return Ok(false);
    };
    list.remove(pos);
    write_blocks(table, term, ns, Some(first), &list, 0)?;
    Ok(true)
}

/// Schema 2 → 3: moves the one-row-per-posting table of schema 2 into blocks and deletes it.
pub fn migrate_rows_to_blocks(txn: &redb::WriteTransaction) -> Result<(), MemoryError> {
    let mut blocks = txn.open_table(tables::POSTING_BLOCKS)?;
    {
        let rows = txn.open_table(tables::POSTINGS_V2)?;
        let mut group: Option<(String, String)> = None;
        let mut list: Vec<Posting> = Vec::new();
        for row in rows.iter()? {
            let (k, v) = row?;
            let (term, ns, id) = k.value();
            if group
                .as_ref()
                .is_some_and(|(t, n)| (t.as_str(), n.as_str()) != (term, ns))
            {
                if let Some((t, n)) = group.take() {
                    add(&mut blocks, &t, &n, &list)?;
                }
                list.clear();
            }
            if group.is_none() {
                group = Some((term.to_string(), ns.to_string()));
            }
            list.push((id, v.value()));
        }
        if let Some((t, n)) = group {
            add(&mut blocks, &t, &n, &list)?;
        }
    }
    drop(blocks);
    txn.delete_table(tables::POSTINGS_V2)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_table(f: impl FnOnce(&mut Blocks<'_>)) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(tables::POSTING_BLOCKS).unwrap();
            f(&mut t);
        }
        txn.commit().unwrap();
    }

    fn all(t: &Blocks<'_>, term: &str) -> Vec<u64> {
        let mut out = Vec::new();
        read(t, term, "ns", &mut out).unwrap();
        out.into_iter().map(|p| p.0).collect()
    }

    /// Checks the invariants: ascending disjoint blocks, none empty or over BLOCK, keyed by
    /// their first id.
    fn check(t: &Blocks<'_>) {
        let mut last: Option<(String, String, u64)> = None;
        for row in t.iter().unwrap() {
            let (k, v) = row.unwrap();
            let (term, ns, first) = k.value();
            let mut list = Vec::new();
            decode(first, v.value(), &mut list).unwrap();
            assert!(!list.is_empty() && list.len() <= BLOCK);
            assert_eq!(list[0].0, first);
            assert!(list.windows(2).all(|w| w[0].0 < w[1].0));
            if let Some((lt, ln, lmax)) = &last
                && (lt.as_str(), ln.as_str()) == (term, ns)
            {
                assert!(first > *lmax, "blocks overlap");
            }
            last = Some((term.into(), ns.into(), list.last().unwrap().0));
        }
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
    fn appends_inserts_and_removes_keep_every_posting_in_order() {
        with_table(|t| {
            // Appends in batches, as merges do.
            let mut want: Vec<u64> = Vec::new();
            for batch in (1..=1000u64).collect::<Vec<_>>().chunks(97) {
                let new: Vec<Posting> = batch.iter().map(|&id| (id, 1 << 32 | 4)).collect();
                add(t, "w", "ns", &new).unwrap();
                want.extend(batch);
                check(t);
            }
            assert_eq!(all(t, "w"), want);
            // Postings below, between and above existing ones (an update re-adds an old id).
            let new: Vec<Posting> = [0u64, 500, 1500, 2000]
                .iter()
                .map(|&id| (id, 2 << 32 | 4))
                .collect();
            add(t, "w", "ns", &new).unwrap();
            check(t);
            want.extend([0, 1500, 2000]);
            want.sort();
            assert_eq!(all(t, "w"), want);
            let mut got = Vec::new();
            read(t, "w", "ns", &mut got).unwrap();
            assert_eq!(got.iter().find(|p| p.0 == 500).unwrap().1 >> 32, 2);
            // Removes: a block's first id, one inside, every id of a block, absent ids.
            for id in [0u64, 1, 2, 129, 700, 1500, 2000] {
                assert!(remove(t, "w", "ns", id).unwrap(), "{id}");
                want.retain(|&w| w != id);
                check(t);
            }
            for id in 300..=428 {
                assert!(remove(t, "w", "ns", id).unwrap());
            }
            want.retain(|&w| !(300..=428).contains(&w));
            check(t);
            assert!(!remove(t, "w", "ns", 1500).unwrap());
            assert!(!remove(t, "other", "ns", 5).unwrap());
            assert_eq!(all(t, "w"), want);
            // Other terms and namespaces are separate lists.
            add(t, "v", "ns", &[(5, 1)]).unwrap();
            add(t, "w", "other", &[(5, 1)]).unwrap();
            assert_eq!(all(t, "v"), [5]);
            assert_eq!(all(t, "w"), want);
        });
    }
}

//! The write-ahead journal of `remember`: a single write is acknowledged once its entry is in
//! this file (one sequential write and one `fdatasync`), while its redb transaction commits
//! without a sync (`Durability::None`). Every [`DURABLE_EVERY`] journaled writes, with any
//! other write (those commit durably) and with the periodic flush, a durable redb commit makes
//! everything before it durable and the journal starts over.
//!
//! A random write to redb's B-trees dirties ~15 pages scattered over the file, and syncing
//! them was most of a single write's time; the journal turns that into one appended block.
//!
//! Entries carry the *decisions* of a write (the record with its id and times, the working
//! records it evicted, the version it superseded, or the semantic record it was merged into),
//! not its inputs, so replaying them does not depend on the vector graph or the clock.
//!
//! File: frames of `magic (4) · seq (8, LE) · length (4, LE) · checksum (8: SHA-256 prefix of
//! the payload) · payload`, written from offset 0 after each durable commit. Reading stops at
//! the first frame with a wrong magic or checksum, a short read, or a sequence number not
//! above the previous one (the rest is a torn write or an older generation). On open, entries
//! above `journal_seq` in `mem_meta` (the last entry a commit included) are applied again.

use super::record::Record;
use super::vector::QVec;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Journaled writes after which the next one commits durably and empties the journal.
pub const DURABLE_EVERY: u64 = 256;
/// Journal bytes after which the next write commits durably.
pub const DURABLE_BYTES: u64 = 1 << 20;
/// Largest payload read back (a record is at most ~80 KiB with its metadata and vector).
const MAX_PAYLOAD: usize = 16 << 20;
const MAGIC: [u8; 4] = *b"CMJ1";
const HEADER: usize = 24;

/// What one acknowledged write did, enough to do it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// A new record, and what writing it changed besides.
    Insert {
        /// The record as stored (id, times, version included).
        record: Box<Record>,
        /// Its vector, in the stored form ([`QVec::to_bytes`]).
        #[serde(with = "vector_bytes")]
        vector: Option<QVec>,
        /// Working records evicted to keep the session's bound.
        evicted: Vec<u64>,
        /// The procedure version this one superseded.
        supersedes: Option<u64>,
    },
    /// A semantic duplicate merged into an existing record.
    Merge {
        /// The existing record.
        id: u64,
        /// The write's time (the record's new accessed time).
        at_ms: u64,
        /// The write's importance (the record keeps the larger).
        importance: f32,
        /// The write's pinned flag (or-ed into the record's).
        pinned: bool,
    },
}

mod vector_bytes {
    use super::QVec;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<QVec>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|v| hex::encode(v.to_bytes())).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<QVec>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|b| QVec::from_bytes(&b))
                    .ok_or_else(|| serde::de::Error::custom("bad vector"))
            })
            .transpose()
    }
}

/// The open journal file.
#[derive(Debug)]
pub struct Journal {
    file: File,
    /// Bytes of this generation's frames.
    len: u64,
    /// Frames in this generation.
    entries: u64,
    /// Sequence number of the last frame written or replayed.
    seq: u64,
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let d = sha2::Sha256::digest(payload);
    let mut c = [0u8; 8];
    c.copy_from_slice(&d[..8]);
    c
}

/// Reads the frames of `bytes` in order; see the module comment for where reading stops.
pub fn parse(bytes: &[u8]) -> Vec<(u64, Entry)> {
    let mut out: Vec<(u64, Entry)> = Vec::new();
    let mut at = 0usize;
    while let Some(h) = bytes.get(at..at + HEADER) {
        if h[..4] != MAGIC {
            break;
        }
        let seq = u64::from_le_bytes(h[4..12].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(h[12..16].try_into().unwrap_or_default()) as usize;
        if len > MAX_PAYLOAD || out.last().is_some_and(|(s, _)| seq <= *s) {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if h[16..24] != checksum(payload) {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry>(payload) else {
            break;
        };
        out.push((seq, entry));
        at += HEADER + len;
    }
    out
}

impl Journal {
    /// Opens (or creates) the journal at `path` and returns the entries it holds.
    pub fn open(path: &Path) -> std::io::Result<(Journal, Vec<(u64, Entry)>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let entries = parse(&bytes);
        if bytes.len() < DURABLE_BYTES as usize {
            // Written once with zeros, so that appending later changes no file size and
            // `fdatasync` flushes only the data block.
            file.write_all_at(
                &vec![0u8; DURABLE_BYTES as usize - bytes.len()],
                bytes.len() as u64,
            )?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let seq = entries.last().map_or(0, |(s, _)| *s);
        Ok((
            Journal {
                file,
                len: 0,
                entries: 0,
                seq,
            },
            entries,
        ))
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// Makes the next sequence number follow `seq` at least (the last one a commit included).
    pub fn follow(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// Whether the next write should commit durably instead of being journaled.
    pub fn full(&self) -> bool {
        self.entries >= DURABLE_EVERY || self.len >= DURABLE_BYTES
    }

    /// Whether entries wait for a durable commit.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Appends `entry` as [`Journal::next_seq`] and syncs it; returns the offset to
    /// [`Journal::rewind`] to if the write then fails.
    pub fn append(&mut self, entry: &Entry) -> std::io::Result<u64> {
        let payload = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let seq = self.seq + 1;
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        frame.extend_from_slice(&MAGIC);
        frame.extend_from_slice(&seq.to_le_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&checksum(&payload));
        frame.extend_from_slice(&payload);
        let at = self.len;
        self.file.write_all_at(&frame, at)?;
        self.file.sync_data()?;
        self.len += frame.len() as u64;
        self.entries += 1;
        self.seq = seq;
        Ok(at)
    }

    /// Takes back the entry appended at `at` (its write failed after all): it is overwritten
    /// on disk, so a replay never applies it.
    pub fn rewind(&mut self, at: u64) -> std::io::Result<()> {
        self.file.write_all_at(&[0u8; HEADER], at)?;
        self.file.sync_data()?;
        self.len = at;
        self.entries = self.entries.saturating_sub(1);
        self.seq -= 1;
        Ok(())
    }

    /// Starts a new generation after a durable commit included every entry. Nothing is
    /// written: the old frames' sequence numbers are at most the committed `journal_seq`.
    pub fn restart(&mut self) {
        self.len = 0;
        self.entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(id: u64) -> Entry {
        Entry::Merge {
            id,
            at_ms: 7,
            importance: 0.5,
            pinned: false,
        }
    }

    #[test]
    fn frames_round_trip_and_reading_stops_at_damage_or_an_older_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, old) = Journal::open(&path).unwrap();
        assert!(old.is_empty());
        for id in 1..=3 {
            j.append(&merge(id)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, DURABLE_BYTES, "preallocated once");
        let got = parse(&bytes);
        assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(got[2].1, merge(3));
        // A torn last frame: the first two remain.
        let cut = j.len as usize - 3;
        assert_eq!(parse(&bytes[..cut]).len(), 2);
        // A flipped payload byte in the second frame ends reading after the first.
        let mut bad = bytes.clone();
        bad[j.len as usize / 3 + HEADER + 2] ^= 1;
        assert_eq!(parse(&bad).len(), 1);
        // A new generation overwrites from 0; what follows it (older, lower seq) is ignored.
        j.restart();
        j.append(&merge(9)).unwrap();
        let again = parse(&std::fs::read(&path).unwrap());
        assert_eq!(again, vec![(4, merge(9))]);
        // A rewound entry is gone on disk.
        let at = j.append(&merge(10)).unwrap();
        j.rewind(at).unwrap();
        assert_eq!(parse(&std::fs::read(&path).unwrap()).len(), 1);
        assert_eq!(j.next_seq(), 5);
        drop(j);
        let (j, entries) = Journal::open(&path).unwrap();
        assert_eq!(entries, vec![(4, merge(9))]);
        assert_eq!(j.next_seq(), 5);
    }
}

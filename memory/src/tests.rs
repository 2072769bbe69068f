//! Behaviour of the memory subsystem on a real redb file (the booted-image tests add power
//! cuts and a full disk).

use super::*;

/// The database file, named as the appliance names it.
const DB_FILE: &str = "cairn.redb";
/// The schema table of the database's owner (the appliance's store), which runs [`migrate`].
const OWNER_META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
/// The owner's schema version that has today's memory tables.
const OWNER_SCHEMA: u64 = 4;

/// Opens the database in `dir` as its owner does: a store at an older schema version has
/// its memory tables brought up to date by [`migrate`] in one transaction.
fn open_db(dir: &std::path::Path) -> Arc<Database> {
    std::fs::create_dir_all(dir).unwrap();
    let db = Database::create(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(OWNER_META).unwrap();
        let found = meta.get("schema_version").unwrap().map_or(0, |v| v.value());
        if found < OWNER_SCHEMA {
            migrate(&txn, found).unwrap();
            meta.insert("schema_version", OWNER_SCHEMA).unwrap();
        }
    }
    txn.commit().unwrap();
    Arc::new(db)
}

/// A deterministic stand-in for the embedding model: hashed bag of words, so texts that
/// share words are similar (the real model is exercised by the booted-image tests).
struct Words;

impl Embed for Words {
    fn model(&self) -> String {
        "test-words".into()
    }
    fn dims(&self) -> usize {
        64
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BoxError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0.01f32; 64];
                for w in text::terms(t) {
                    let h = w
                        .bytes()
                        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
                    v[(h % 64) as usize] += 1.0;
                }
                v
            })
            .collect())
    }
}

fn open(dir: &std::path::Path, embed: bool) -> Memory {
    Memory::open_database(
        open_db(dir),
        &dir.join(DB_FILE),
        embed.then(|| Arc::new(Words) as Arc<dyn Embed>),
    )
    .unwrap()
}

fn new(tier: &str, ns: &str, text: &str) -> NewRecord {
    NewRecord {
        tier: Some(tier.into()),
        namespace: Some(ns.into()),
        text: text.into(),
        ..Default::default()
    }
}

/// Remembers each text as an episodic record in `shared`; returns their ids.
fn remember_episodic(m: &Memory, texts: &[&str]) -> Vec<u64> {
    texts
        .iter()
        .map(|t| {
            m.remember(&Access::admin(), new("episodic", "shared", t))
                .unwrap()
                .record
                .id
        })
        .collect()
}

fn query(q: &str) -> Query {
    Query {
        query: q.into(),
        ..Default::default()
    }
}

fn ids(r: &Recall) -> Vec<u64> {
    r.results.iter().map(|h| h.record.id).collect()
}

const FACTS: &[&str] = &[
    "The backup job runs every night at two and writes to the NAS.",
    "Solar panels on the north roof produce about four kilowatts.",
    "The router's admin password rotates monthly.",
    "Greenhouse sensors report humidity every five minutes.",
    "The diesel generator is tested on the first Monday of each month.",
];

#[test]
fn remembered_records_survive_reopen_with_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let a = Access::admin();
    let mut written = Vec::new();
    {
        let m = open(dir.path(), true);
        for f in FACTS {
            let r = m.remember(&a, new("semantic", "shared", f)).unwrap();
            assert!(r.embedded && r.deduplicated.is_none());
            written.push(r.record.id);
        }
    }
    let m = open(dir.path(), true);
    for (id, f) in written.iter().zip(FACTS) {
        assert_eq!(m.get(&a, *id).unwrap().text, *f);
    }
    let r = m
        .recall(&a, &query("when is the generator tested"))
        .unwrap();
    assert_eq!(r.mode, Mode::Hybrid);
    assert_eq!(r.results[0].record.id, written[4], "{r:?}");
    assert_eq!(r.results[0].keyword_rank, Some(1));
    assert_eq!(r.results[0].vector_rank, Some(1));
    // Vector-only still finds it after the graph was reloaded from redb.
    let mut q = query("generator tested monday");
    q.mode = Mode::Vector;
    assert_eq!(m.recall(&a, &q).unwrap().results[0].record.id, written[4]);
}

#[test]
fn graph_checkpoint_plus_tail_reloads_after_a_crash() {
    // Three records checkpointed (graph) and merged (postings), then writes after it that
    // are never flushed: a delete and a re-embedding update of checkpointed records, and
    // new records. Dropping without flush is the crash; everything must be recallable.
    let dir = tempfile::tempdir().unwrap();
    let a = Access::admin();
    let (kept, updated) = {
        let m = open(dir.path(), true);
        let mut kept = remember_episodic(&m, &FACTS[..3]);
        m.flush().unwrap();
        m.delete(&a, kept[0]).unwrap();
        let text = "The greenhouse heater switches on below five degrees.";
        m.update(
            &a,
            kept[1],
            RecordUpdate {
                text: Some(text.into()),
                ..Default::default()
            },
        )
        .unwrap();
        kept.extend(remember_episodic(&m, &FACTS[3..]));
        (kept, text)
    };
    let m = open(dir.path(), true);
    let find = |text: &str, mode: Mode| {
        let mut q = query(text);
        q.mode = mode;
        ids(&m.recall(&a, &q).unwrap())
    };
    for mode in [Mode::Vector, Mode::Keyword] {
        assert_eq!(find(updated, mode)[0], kept[1], "{mode:?}");
        assert_eq!(find(FACTS[2], mode)[0], kept[2], "{mode:?}");
        assert_eq!(find(FACTS[3], mode)[0], kept[3], "{mode:?}");
        assert_eq!(find(FACTS[4], mode)[0], kept[4], "{mode:?}");
        assert!(!find(FACTS[0], mode).contains(&kept[0]), "{mode:?}");
    }
}

/// Copies the store's files as they are on disk now, with memory still open: what a power
/// cut leaves (redb keeps commits made without a sync in memory only). `journal: false`
/// leaves the journal out.
fn disk_copy(from: &std::path::Path, to: &std::path::Path, journal: bool) {
    std::fs::create_dir_all(to).unwrap();
    let db = DB_FILE;
    std::fs::copy(from.join(db), to.join(db)).unwrap();
    let j = std::path::Path::new(db).with_extension("journal");
    if journal {
        std::fs::copy(from.join(&j), to.join(&j)).unwrap();
    }
}

#[test]
fn journaled_writes_survive_a_power_cut_with_what_they_decided() {
    // Single remembers are acknowledged through the journal, their redb commits unsynced. A
    // copy of the disk taken mid-way must open with every acknowledged write as it was
    // answered: new records (keyword- and vector-recallable), a semantic duplicate merged
    // into its original, a superseded procedure version and evicted working records.
    let dir = tempfile::tempdir().unwrap();
    let a = Access::admin();
    let live = dir.path().join("live");
    let m = open(&live, true);
    let facts = remember_episodic(&m, FACTS);
    let sem = m
        .remember(
            &a,
            new(
                "semantic",
                "shared",
                "The pump house key hangs by the door.",
            ),
        )
        .unwrap();
    let mut again = new("semantic", "shared", "the pump house key hangs by the door");
    again.importance = Some(0.9);
    let dup = m.remember(&a, again).unwrap();
    assert_eq!(dup.deduplicated, Some(sem.record.id));
    let mut how = new("procedural", "shared", "Bleed the radiator, then top up.");
    how.key = Some("radiator".into());
    let v1 = m.remember(&a, how.clone()).unwrap().record;
    how.text = "Bleed the radiator, top up, then check the pressure.".into();
    let v2 = m.remember(&a, how).unwrap().record;
    let mut working = Vec::new();
    let mut evicted = Vec::new();
    for i in 0..record::WORKING_LIMIT + 2 {
        let mut w = new("working", "shared", &format!("scratch note {i}"));
        w.session = Some("run-1".into());
        let r = m.remember(&a, w).unwrap();
        evicted.extend(r.evicted);
        working.push(r.record.id);
    }
    assert_eq!(evicted, working[..2].to_vec());
    let written: Vec<u64> = facts
        .iter()
        .copied()
        .chain([sem.record.id, v1.id, v2.id])
        .chain(working[2..].iter().copied())
        .collect();
    let answered: Vec<Record> = written.iter().map(|id| m.get(&a, *id).unwrap()).collect();
    // Each fact is among the first three answers to its own text, by vector and by keyword
    // (the fusion's importance boost can put the merged semantic record first).
    let found = |m: &Memory| {
        for (id, f) in facts.iter().zip(FACTS) {
            for mode in [Mode::Vector, Mode::Keyword] {
                let mut q = query(f);
                q.mode = mode;
                let got = ids(&m.recall(&a, &q).unwrap());
                assert!(
                    got[..3.min(got.len())].contains(id),
                    "{mode:?} {f:?}: {got:?}"
                );
            }
        }
    };
    found(&m);
    let cut = dir.path().join("cut");
    disk_copy(&live, &cut, true);
    let bare = dir.path().join("bare");
    disk_copy(&live, &bare, false);
    drop(m);

    // Without the journal the unsynced commits are gone: the journal is what kept them.
    let m = open(&bare, true);
    assert!(m.get(&a, facts[0]).is_err());
    drop(m);

    let m = open(&cut, true);
    for r in &answered {
        let got = m.get(&a, r.id).unwrap();
        assert_eq!(got.text, r.text);
        assert_eq!(got.tier, r.tier);
        assert_eq!(got.created_ms, r.created_ms);
        assert_eq!(got.version, r.version);
        assert_eq!(got.superseded_by, r.superseded_by, "record {}", r.id);
        assert_eq!(got.importance, r.importance, "record {}", r.id);
    }
    assert_eq!(
        m.get(&a, sem.record.id).unwrap().access_count,
        1,
        "the merge counts"
    );
    assert_eq!(m.get(&a, sem.record.id).unwrap().importance, 0.9);
    assert_eq!(m.get(&a, v1.id).unwrap().superseded_by, Some(v2.id));
    for id in &evicted {
        assert!(m.get(&a, *id).is_err(), "evicted {id} came back");
    }
    found(&m);
    // Ids continue after the replayed ones, and the replay is not applied twice.
    let next = remember_episodic(&m, &["The well pump was serviced in May."])[0];
    assert!(next > *written.iter().max().unwrap());
    drop(m);
    let m = open(&cut, true);
    assert_eq!(
        m.get(&a, next).unwrap().text,
        "The well pump was serviced in May."
    );
    let stats = m.stats().unwrap();
    assert_eq!(
        stats["records"].as_u64(),
        Some(written.len() as u64 + 1),
        "{stats}"
    );
    assert_eq!(
        m.namespaces(&a).unwrap()["shared"].records,
        written.len() as u64 + 1
    );
}

#[test]
fn unlinked_vectors_are_found_and_survive_a_crash_before_linking() {
    // The indexer is held still: new vectors stay unlinked, yet vector recall finds them. A
    // checkpoint taken then (forced by a delete) must leave those records to be added again
    // on open, so a crash after it loses none of them from the index.
    let dir = tempfile::tempdir().unwrap();
    let a = Access::admin();
    let wait = std::time::Duration::from_secs(60);
    let vector = |m: &Memory, text: &str| {
        let mut q = query(text);
        q.mode = Mode::Vector;
        q.k = Some(1);
        ids(&m.recall(&a, &q).unwrap())
    };
    let (linked, deleted, unlinked) = {
        let m = open(dir.path(), true);
        let mut linked = remember_episodic(&m, &FACTS[..3]);
        assert!(m.wait_indexed(wait));
        m.flush().unwrap();
        m.pause_indexer(true);
        let unlinked = remember_episodic(&m, &FACTS[3..]);
        assert_eq!(m.unindexed(), 2);
        for (id, f) in unlinked.iter().zip(&FACTS[3..]) {
            assert_eq!(vector(&m, f), vec![*id], "unlinked {f:?}");
        }
        let deleted = linked.pop().unwrap();
        m.delete(&a, deleted).unwrap();
        // Checkpoint (the delete changed the graph) with two unlinked, then crash.
        m.flush().unwrap();
        assert_eq!(m.unindexed(), 2);
        (linked, deleted, unlinked)
    };
    let m = open(dir.path(), true);
    assert!(m.wait_indexed(wait));
    assert_eq!(m.unindexed(), 0);
    assert_eq!(m.index.len("shared").unwrap(), 4);
    for (id, f) in linked.iter().zip(&FACTS[..2]) {
        assert_eq!(vector(&m, f), vec![*id], "after reopening: {f:?}");
    }
    for (id, f) in unlinked.iter().zip(&FACTS[3..]) {
        assert_eq!(vector(&m, f), vec![*id], "after reopening: {f:?}");
    }
    assert_ne!(vector(&m, FACTS[2]), vec![deleted]);
}

#[test]
fn keyword_retrieval_works_without_a_model_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), false);
    let a = Access::admin();
    for f in FACTS {
        let r = m.remember(&a, new("episodic", "shared", f)).unwrap();
        assert!(!r.embedded);
    }
    let r = m.recall(&a, &query("solar kilowatts")).unwrap();
    assert_eq!(r.mode, Mode::Keyword);
    assert!(
        r.notes.iter().any(|n| n.contains("no embedding model")),
        "{:?}",
        r.notes
    );
    assert_eq!(r.results.len(), 1);
    assert!(r.results[0].record.text.contains("Solar"));
    let mut q = query("solar");
    q.mode = Mode::Vector;
    assert!(matches!(m.recall(&a, &q), Err(MemoryError::Conflict(_))));
}

#[test]
fn bad_queries_get_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), false);
    let a = Access::admin();
    m.remember(&a, new("episodic", "shared", FACTS[0])).unwrap();
    let mut q = query("backup");
    q.k = Some(0);
    assert!(matches!(m.recall(&a, &q), Err(MemoryError::Input(_))));
    q.k = Some(1_000_000);
    assert!(matches!(m.recall(&a, &q), Err(MemoryError::Input(_))));
    assert!(matches!(
        m.recall(&a, &query("   ")),
        Err(MemoryError::Input(_))
    ));
    let r = m.recall(&a, &query("the of and")).unwrap();
    assert!(r.results.is_empty());
    assert!(r.notes.iter().any(|n| n.contains("no searchable keywords")));
    let mut q = query("backup");
    q.namespaces = Some(vec!["agent:ghost".into()]);
    assert!(matches!(
        m.recall(&a, &q),
        Err(MemoryError::UnknownNamespace(_))
    ));
    q.namespaces = Some(vec!["bogus".into()]);
    assert!(matches!(m.recall(&a, &q), Err(MemoryError::Input(_))));
    q.namespaces = None;
    q.tiers = Some(vec!["dreams".into()]);
    assert!(matches!(m.recall(&a, &q), Err(MemoryError::Input(_))));
}

#[test]
fn semantic_memory_is_deduplicated_by_meaning() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), true);
    let a = Access::admin();
    let first = m
        .remember(&a, new("semantic", "shared", "The NAS lives in rack 4."))
        .unwrap();
    let again = m
        .remember(&a, new("semantic", "shared", "the NAS lives in RACK 4"))
        .unwrap();
    assert_eq!(again.deduplicated, Some(first.record.id));
    // Same words in another order: same bag-of-words vector, merged by similarity.
    let similar = m
        .remember(&a, new("semantic", "shared", "In rack 4 lives the NAS!"))
        .unwrap();
    assert_eq!(similar.deduplicated, Some(first.record.id));
    // Episodic memory keeps every event.
    let e1 = m
        .remember(&a, new("episodic", "shared", "The NAS rebooted."))
        .unwrap();
    let e2 = m
        .remember(&a, new("episodic", "shared", "The NAS rebooted."))
        .unwrap();
    assert_ne!(e1.record.id, e2.record.id);
    assert_eq!(m.namespaces(&a).unwrap()["shared"].records, 3);
}

#[test]
fn procedures_are_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), false);
    let a = Access::admin();
    let mut p = new(
        "procedural",
        "shared",
        "Restart the pump: switch off, wait, switch on.",
    );
    p.key = Some("restart-pump".into());
    let v1 = m.remember(&a, p.clone()).unwrap().record;
    p.text = "Restart the pump: close valve, switch off, wait 30 s, switch on.".into();
    let v2 = m.remember(&a, p).unwrap().record;
    assert_eq!((v1.version, v2.version), (Some(1), Some(2)));
    assert_eq!(m.get(&a, v1.id).unwrap().superseded_by, Some(v2.id));
    let r = m.recall(&a, &query("restart pump")).unwrap();
    assert_eq!(ids(&r), [v2.id]);
    let mut q = query("restart pump");
    q.include_superseded = true;
    assert_eq!(m.recall(&a, &q).unwrap().results.len(), 2);
    // Deleting the newest version makes the previous one current again.
    m.delete(&a, v2.id).unwrap();
    assert_eq!(m.get(&a, v1.id).unwrap().superseded_by, None);
    assert_eq!(ids(&m.recall(&a, &query("restart pump")).unwrap()), [v1.id]);
}

#[test]
fn working_memory_is_bounded_per_session_and_keeps_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), false);
    let a = Access::admin();
    let mut first = None;
    let mut all = Vec::new();
    for i in 0..record::WORKING_LIMIT + 5 {
        let mut r = new("working", "shared", &format!("step {i} of the plan"));
        r.session = Some("run-1".into());
        r.pinned = i == 0;
        let w = m.remember(&a, r).unwrap();
        first.get_or_insert(w.record.id);
        all.push(w);
    }
    let first = first.unwrap();
    // Pinned step 0 stays; steps 1..=5 were evicted, oldest first.
    let evicted: Vec<u64> = all.iter().flat_map(|w| w.evicted.clone()).collect();
    assert_eq!(evicted, (first + 1..=first + 5).collect::<Vec<_>>());
    assert!(m.get(&a, first).is_ok());
    assert!(matches!(
        m.get(&a, first + 1),
        Err(MemoryError::NotFound(_))
    ));
    let page = m.list(&a, "shared", Some(Tier::Working), 0, 500).unwrap();
    assert_eq!(page.records.len(), record::WORKING_LIMIT);
    // Another session has its own bound.
    let mut r = new("working", "shared", "other");
    r.session = Some("run-2".into());
    assert!(m.remember(&a, r).unwrap().evicted.is_empty());
}

#[test]
fn filters_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), true);
    let a = Access::admin();
    let mut e = new("episodic", "shared", "Pump 3 reported low pressure.");
    e.occurred_ms = Some(1_000);
    e.metadata = Some(serde_json::json!({"site": "north"}));
    let old = m.remember(&a, e).unwrap().record.id;
    let mut e = new("episodic", "shared", "Pump 3 reported low pressure again.");
    e.metadata = Some(serde_json::json!({"site": "south"}));
    let recent = m.remember(&a, e).unwrap().record.id;
    let fact = m
        .remember(
            &a,
            new("semantic", "shared", "Pump 3 is a centrifugal pump."),
        )
        .unwrap()
        .record
        .id;
    let mut q = query("pump pressure");
    q.tiers = Some(vec!["semantic".into()]);
    assert_eq!(ids(&m.recall(&a, &q).unwrap()), [fact]);
    let mut q = query("pump pressure");
    q.until_ms = Some(2_000);
    assert_eq!(ids(&m.recall(&a, &q).unwrap()), [old]);
    let mut q = query("pump");
    q.metadata = Some(
        serde_json::json!({"site": "south"})
            .as_object()
            .unwrap()
            .clone(),
    );
    assert_eq!(ids(&m.recall(&a, &q).unwrap()), [recent]);
    let p1 = m.list(&a, "shared", None, 0, 2).unwrap();
    assert_eq!(p1.records.len(), 2);
    let p2 = m.list(&a, "shared", None, p1.next.unwrap(), 2).unwrap();
    assert_eq!(p2.records.len(), 1);
    assert!(p2.next.is_none());
    assert!(m.list(&a, "shared", None, 0, 0).is_err());
}

#[test]
fn namespaces_are_access_controlled() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), false);
    let admin = Access::admin();
    m.put_namespace(&admin, "agent:alpha", Some(100)).unwrap();
    m.put_namespace(&admin, "agent:beta", None).unwrap();
    let alpha = Access::agent("alpha", &["shared".into()], &[]);
    m.remember(
        &alpha,
        new("episodic", "agent:alpha", "alpha's secret plan"),
    )
    .unwrap();
    let b = m
        .remember(&admin, new("episodic", "agent:beta", "beta's secret plan"))
        .unwrap()
        .record
        .id;
    assert!(matches!(
        m.remember(&alpha, new("episodic", "agent:beta", "intrusion")),
        Err(MemoryError::Forbidden(_))
    ));
    assert!(matches!(
        m.remember(&alpha, new("episodic", "shared", "read-only grant")),
        Err(MemoryError::Forbidden(_))
    ));
    // Recall over "everything" only covers what alpha may read.
    let r = m.recall(&alpha, &query("secret plan")).unwrap();
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].record.namespace, "agent:alpha");
    assert!(matches!(m.get(&alpha, b), Err(MemoryError::NotFound(_))));
    assert!(matches!(
        m.remember(&admin, new("episodic", "agent:gamma", "x")),
        Err(MemoryError::UnknownNamespace(_))
    ));
    assert!(matches!(
        m.delete_namespace(&admin, "agent:beta"),
        Err(MemoryError::Conflict(_))
    ));
}

#[test]
fn consolidation_summarises_undoes_and_evicts_but_never_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), true);
    let a = Access::admin();
    m.put_namespace(&a, "user:ops", Some(6)).unwrap();
    let mut sources = Vec::new();
    for t in [
        "Backup job failed: the NAS disk is full.",
        "Backup job failed again: NAS disk full.",
        "NAS disk full, backup job failed overnight.",
    ] {
        sources.push(
            m.remember(&a, new("episodic", "user:ops", t))
                .unwrap()
                .record
                .id,
        );
    }
    let mut pinned = new("episodic", "user:ops", "Solar inverter replaced.");
    pinned.pinned = true;
    pinned.importance = Some(0.0);
    let pinned = m.remember(&a, pinned).unwrap().record.id;
    let rep = m.consolidate(&a, "user:ops", 0, None).unwrap();
    assert_eq!(rep.summaries.len(), 1, "{rep:?}");
    assert_eq!(rep.consolidated, 3);
    assert!(rep.fallback.is_some());
    let summary = m.get(&a, rep.summaries[0]).unwrap();
    assert_eq!(summary.tier, Tier::Semantic);
    assert_eq!(summary.provenance.consolidated_from, sources);
    assert!(
        summary.text.to_lowercase().contains("backup"),
        "{}",
        summary.text
    );
    for s in &sources {
        assert_eq!(m.get(&a, *s).unwrap().consolidated_into, Some(summary.id));
    }
    // A second run finds nothing new to consolidate.
    assert!(
        m.consolidate(&a, "user:ops", 0, None)
            .unwrap()
            .summaries
            .is_empty()
    );
    // Undo releases the sources and removes the summary.
    assert_eq!(m.undo_consolidation(&a, summary.id).unwrap(), sources);
    assert!(m.get(&a, summary.id).is_err());
    assert_eq!(m.get(&a, sources[0]).unwrap().consolidated_into, None);
    // Consolidate again, then overflow the quota of 6: consolidated sources go first (the
    // least recently accessed of them), the pinned record never.
    let rep = m.consolidate(&a, "user:ops", 0, None).unwrap();
    let summary = rep.summaries[0];
    for i in 0..3 {
        let mut r = new(
            "semantic",
            "user:ops",
            &format!("distinct fact number {i} about pumps {i}"),
        );
        r.importance = Some(0.9);
        m.remember(&a, r).unwrap();
    }
    let rep = m.consolidate(&a, "user:ops", 0, None).unwrap();
    // sources[0] was read last (above), so the other two go.
    assert_eq!(rep.evicted, sources[1..].to_vec(), "{rep:?}");
    assert!(m.get(&a, pinned).is_ok());
    assert_eq!(m.namespaces(&a).unwrap()["user:ops"].records, 6);
    // A purged source makes the undo impossible, with a reason.
    match m.undo_consolidation(&a, summary) {
        Err(MemoryError::Conflict(msg)) => assert!(msg.contains("purged"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn importance_decays_except_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), false);
    let a = Access::admin();
    let mut lines = String::new();
    for (pinned, text) in [(false, "old event"), (true, "old pinned event")] {
        lines.push_str(
            &serde_json::json!({"tier": "episodic", "namespace": "shared", "text": text,
                "importance": 0.8, "pinned": pinned})
            .to_string(),
        );
        lines.push('\n');
    }
    let rep = m.import(&a, &lines).unwrap();
    // Pretend both last decayed two half-lives ago.
    m.write(&[], |txn| {
        for id in &rep.ids {
            m.modify(txn, *id, |r| {
                r.decayed_ms -= 2 * consolidate::HALF_LIFE_MS;
            })?;
        }
        Ok(())
    })
    .unwrap();
    m.consolidate(&a, "shared", 0, None).unwrap();
    let unpinned = m.get(&a, rep.ids[0]).unwrap().importance;
    assert!((unpinned - 0.2).abs() < 0.01, "{unpinned}");
    assert_eq!(m.get(&a, rep.ids[1]).unwrap().importance, 0.8);
}

#[test]
fn import_rejects_bad_lines_by_number_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), true);
    let a = Access::admin();
    let good = |t: &str| {
        serde_json::json!({"tier": "semantic", "namespace": "shared", "text": t}).to_string()
    };
    let body = [
        good("first fact about the pump"),
        "{not json".to_string(),
        serde_json::json!({"tier": "dreams", "namespace": "shared", "text": "x"}).to_string(),
        serde_json::json!({"tier": "episodic", "namespace": "agent:nobody", "text": "x"}).to_string(),
        serde_json::json!({"tier": "episodic", "namespace": "shared", "text": "x", "embedding": [1.0, 2.0]}).to_string(),
        // NaN is not JSON: the line is malformed.
        r#"{"tier": "episodic", "namespace": "shared", "text": "x", "embedding": [NaN]}"#.to_string(),
        serde_json::json!({"tier": "episodic", "namespace": "shared", "text": "x".repeat(record::MAX_TEXT_BYTES + 1)}).to_string(),
        good("second fact about the generator"),
    ]
    .join("\n");
    let rep = m.import(&a, &body).unwrap();
    assert_eq!(rep.imported, 2);
    let lines: Vec<usize> = rep.rejected.iter().map(|r| r.0).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 7], "{:?}", rep.rejected);
    assert!(
        rep.rejected[3].1.contains("dimensions"),
        "{:?}",
        rep.rejected[3]
    );
    // Export and re-import into a fresh store gives the same texts and vectors.
    let exported = m.export(&a, "shared").unwrap();
    assert_eq!(exported.lines().count(), 2);
    let dir2 = tempfile::tempdir().unwrap();
    let m2 = open(dir2.path(), false);
    let rep2 = m2.import(&a, &exported).unwrap();
    assert_eq!(rep2.imported, 2, "{rep2:?}");
    let mut q = query("generator");
    q.mode = Mode::Keyword;
    assert_eq!(
        m2.recall(&a, &q).unwrap().results[0].record.text,
        "second fact about the generator"
    );
    // A procedure whose version is taken is filed after the newest, and says so.
    let proc = |t: &str| {
        serde_json::json!({"tier": "procedural", "namespace": "shared", "text": t,
            "key": "bleed", "version": 1})
        .to_string()
    };
    let rep3 = m2
        .import(
            &a,
            &[proc("Open the valve."), proc("Open the valve slowly.")].join("\n"),
        )
        .unwrap();
    let versions: Vec<Option<u32>> = rep3
        .ids
        .iter()
        .map(|id| m2.get(&a, *id).unwrap().version)
        .collect();
    assert_eq!(versions, [Some(1), Some(2)]);
    // The imported vectors are searchable even though m2 has no model (query by vector).
    let mut q = query("x");
    q.mode = Mode::Vector;
    q.embedding = Some(Words.embed(&["generator fact second"]).unwrap().remove(0));
    assert_eq!(
        m2.recall(&a, &q).unwrap().results[0].record.text,
        "second fact about the generator"
    );
}

#[test]
fn a_batch_is_remembered_as_one_by_one_and_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), true);
    let a = Access::admin();
    let mut v2 = new("procedural", "shared", "Flush the filter, then restart.");
    v2.key = Some("filter".into());
    let mut v1 = v2.clone();
    v1.text = "Flush the filter.".into();
    let got = m
        .remember_batch(
            &a,
            vec![
                new("episodic", "shared", FACTS[0]),
                new(
                    "semantic",
                    "shared",
                    "The pump house key hangs by the door.",
                ),
                new("semantic", "shared", "the pump house key hangs by the door"),
                v1,
                v2,
            ],
        )
        .unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(
        got[2].deduplicated,
        Some(got[1].record.id),
        "dedup sees the batch"
    );
    assert_eq!(got[4].record.version, Some(2));
    assert_eq!(
        m.get(&a, got[3].record.id).unwrap().superseded_by,
        Some(got[4].record.id)
    );
    assert!(got.iter().all(|r| r.embedded));
    let mut q = query(FACTS[0]);
    q.mode = Mode::Vector;
    assert_eq!(ids(&m.recall(&a, &q).unwrap())[0], got[0].record.id);
    // One bad record refuses the batch, naming it, and writes nothing.
    let before = m.stats().unwrap()["records"].as_u64();
    let err = m
        .remember_batch(
            &a,
            vec![
                new("episodic", "shared", FACTS[1]),
                new("dreams", "shared", "x"),
            ],
        )
        .unwrap_err();
    assert!(err.to_string().contains("record 1"), "{err}");
    let agent = Access::agent("a", &[], &["agent:a".into()]);
    assert!(matches!(
        m.remember_batch(&agent, vec![new("episodic", "shared", FACTS[1])]),
        Err(MemoryError::Forbidden(_))
    ));
    assert_eq!(m.stats().unwrap()["records"].as_u64(), before);
}

#[test]
fn update_reindexes_and_delete_removes_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), true);
    let a = Access::admin();
    let id = m
        .remember(
            &a,
            new("semantic", "shared", "The spare key is in the red box."),
        )
        .unwrap()
        .record
        .id;
    m.update(
        &a,
        id,
        RecordUpdate {
            text: Some("The spare key is in the blue cabinet.".into()),
            pinned: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        m.recall(&a, &query("red box"))
            .unwrap()
            .results
            .iter()
            .all(|h| h.keyword_rank.is_none())
    );
    let r = m.recall(&a, &query("blue cabinet")).unwrap();
    assert_eq!(r.results[0].record.id, id);
    assert!(r.results[0].record.pinned);
    m.delete(&a, id).unwrap();
    assert!(
        m.recall(&a, &query("blue cabinet"))
            .unwrap()
            .results
            .is_empty()
    );
    let mut q = query("spare key blue cabinet");
    q.mode = Mode::Vector;
    assert!(m.recall(&a, &q).unwrap().results.is_empty());
    assert_eq!(
        m.namespaces(&a).unwrap()["shared"],
        NamespaceInfo::default()
    );
}

#[test]
fn wrong_embeddings_are_refused_without_a_partial_write() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path(), true);
    let a = Access::admin();
    let mut r = new("episodic", "shared", "vector of the wrong size");
    r.embedding = Some(vec![1.0; 3]);
    assert!(matches!(
        m.remember(&a, r.clone()),
        Err(MemoryError::Input(_))
    ));
    r.embedding = Some(vec![f32::NAN; 64]);
    assert!(matches!(m.remember(&a, r), Err(MemoryError::Input(_))));
    assert_eq!(m.namespaces(&a).unwrap()["shared"].records, 0);
    assert!(
        m.recall(&a, &query("vector wrong size"))
            .unwrap()
            .results
            .is_empty()
    );
}

#[test]
fn schema_2_and_3_postings_migrate_to_segments_with_the_same_answers() {
    // A store written with keyword postings merged, then turned back into what schema 2
    // (one row per posting in `mem_postings`) or schema 3 (blocks keyed by term in
    // `mem_posting_blocks`) stored, with one more record left unmerged in `mem_postings_new`.
    for schema in [2u64, 3] {
        let dir = tempfile::tempdir().unwrap();
        let a = Access::admin();
        let (kept, before) = {
            let m = open(dir.path(), false);
            let kept = remember_episodic(&m, &FACTS[..4]);
            m.merge_postings_now().unwrap();
            let mut kept5 = remember_episodic(&m, &FACTS[4..]);
            m.flush().unwrap();
            let before: Vec<Vec<u64>> = FACTS
                .iter()
                .map(|f| ids(&m.recall(&a, &query(f)).unwrap()))
                .collect();
            let mut kept = kept;
            kept.append(&mut kept5);
            (kept, before)
        };
        {
            let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut rows = Vec::new();
                for row in txn.open_table(tables::SEG_BLOCKS).unwrap().iter().unwrap() {
                    let (k, v) = row.unwrap();
                    let (ns, _, t, first) = k.value();
                    let mut list = Vec::new();
                    postings::decode(first, v.value(), &mut list).unwrap();
                    rows.push((t.to_string(), ns.to_string(), first, list));
                }
                assert!(rows.len() > 10, "the first records' postings were merged");
                if schema == 2 {
                    let mut old = txn.open_table(tables::POSTINGS_V2).unwrap();
                    for (t, ns, _, list) in &rows {
                        for (id, packed) in list {
                            old.insert((t.as_str(), ns.as_str(), *id), *packed).unwrap();
                        }
                    }
                } else {
                    let mut old = txn.open_table(tables::POSTING_BLOCKS).unwrap();
                    for (t, ns, first, list) in &rows {
                        old.insert(
                            (t.as_str(), ns.as_str(), *first),
                            postings::encode(list).as_slice(),
                        )
                        .unwrap();
                    }
                }
                // The unmerged last record had its postings in `mem_postings_new`.
                let r = crate::decode_record(
                    txn.open_table(tables::RECORDS)
                        .unwrap()
                        .get(kept[4])
                        .unwrap()
                        .unwrap()
                        .value(),
                )
                .unwrap();
                let (counts, len) = crate::text::term_counts(&r.text);
                txn.open_table(tables::POSTINGS_NEW)
                    .unwrap()
                    .insert(
                        ("shared", kept[4]),
                        tables::encode_terms(len, &counts).as_slice(),
                    )
                    .unwrap();
                let mut meta = txn.open_table(tables::META).unwrap();
                meta.remove(tables::POSTINGS_THROUGH).unwrap();
                meta.remove(tables::NEXT_SEGMENT).unwrap();
                txn.open_table(OWNER_META)
                    .unwrap()
                    .insert("schema_version", schema)
                    .unwrap();
            }
            txn.delete_table(tables::SEG_BLOCKS).unwrap();
            txn.delete_table(tables::SEGMENTS).unwrap();
            txn.commit().unwrap();
        }
        let m = open(dir.path(), false);
        for (f, want) in FACTS.iter().zip(&before) {
            assert_eq!(
                &ids(&m.recall(&a, &query(f)).unwrap()),
                want,
                "schema {schema}: {f}"
            );
        }
        // The old tables are gone and deletes reach the migrated postings.
        {
            let txn = m.db.begin_read().unwrap();
            assert!(txn.open_table(tables::POSTINGS_V2).is_err());
            assert!(txn.open_table(tables::POSTING_BLOCKS).is_err());
        }
        m.delete(&a, kept[3]).unwrap();
        m.delete(&a, kept[4]).unwrap();
        for q in ["greenhouse humidity sensors", "diesel generator monday"] {
            let r = m.recall(&a, &query(q)).unwrap();
            assert!(r.results.is_empty(), "schema {schema}: {q}: {r:?}");
        }
    }
}

#[test]
fn merged_and_unmerged_postings_answer_alike_across_reopens_and_edits() {
    // Records in every state: in compacted segments, in a level-0 segment, unmerged in
    // memory (read again from the texts on reopen), and old records edited after their merge
    // (unmerged in `mem_postings_new`).
    let dir = tempfile::tempdir().unwrap();
    let a = Access::admin();
    let texts: Vec<String> = (0..(postings::FANOUT + 2) * 3)
        .map(|i| format!("alpha{} beta{} gamma{} shared word", i % 7, i % 5, i))
        .collect();
    let mut ids_all = Vec::new();
    {
        let m = open(dir.path(), false);
        for (i, t) in texts.iter().enumerate() {
            ids_all.push(remember_episodic(&m, &[t.as_str()])[0]);
            if i % 3 == 2 {
                m.merge_postings_now().unwrap();
            }
        }
        // Two merged records get new texts; one unmerged record is deleted.
        m.update(
            &a,
            ids_all[0],
            RecordUpdate {
                text: Some("zeta rewritten first".into()),
                ..Default::default()
            },
        )
        .unwrap();
        m.update(
            &a,
            ids_all[4],
            RecordUpdate {
                text: Some("zeta rewritten fifth".into()),
                ..Default::default()
            },
        )
        .unwrap();
        m.delete(&a, *ids_all.last().unwrap()).unwrap();
        let segs = {
            let txn = m.db.begin_read().unwrap();
            postings::segments(&txn.open_table(tables::SEGMENTS).unwrap(), "shared").unwrap()
        };
        assert!(
            segs.iter().any(|s| s.level == 1) && segs.iter().any(|s| s.level == 0),
            "compacted and level-0 segments: {segs:?}"
        );
    }
    let expect = |m: &Memory| {
        let hits = |q: &str| {
            let mut v = ids(&m
                .recall(
                    &a,
                    &Query {
                        query: q.into(),
                        k: Some(100),
                        ..Default::default()
                    },
                )
                .unwrap());
            v.sort_unstable();
            v
        };
        assert_eq!(hits("zeta"), [ids_all[0], ids_all[4]]);
        assert_eq!(
            hits("gamma0"),
            Vec::<u64>::new(),
            "the old text's terms are gone"
        );
        let mut alpha3: Vec<u64> = (0..texts.len())
            .filter(|&i| i % 7 == 3 && i != texts.len() - 1)
            .map(|i| ids_all[i])
            .collect();
        alpha3.sort_unstable();
        assert_eq!(hits("alpha3"), alpha3);
        assert_eq!(hits("word").len(), texts.len() - 3);
    };
    let m = open(dir.path(), false);
    expect(&m);
    // A merge of everything left answers the same, and so does a reopen after it.
    m.merge_postings_now().unwrap();
    expect(&m);
    drop(m);
    expect(&open(dir.path(), false));
}

#[test]
fn a_failing_merge_fails_no_write_and_keeps_the_postings_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let a = Access::admin();
    let m = open(dir.path(), false);
    // One segment short of a compaction.
    for i in 0..postings::FANOUT - 1 {
        remember_episodic(&m, &[format!("segment{i} common keyword").as_str()]);
        m.merge_postings_now().unwrap();
    }
    // A block of the first segment is damaged on disk.
    {
        let txn = m.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(tables::SEG_BLOCKS).unwrap();
            let (ns, seg, term, first) = {
                let (k, _) = t.first().unwrap().unwrap();
                let (ns, seg, term, first) = k.value();
                (ns.to_string(), seg, term.to_string(), first)
            };
            t.insert(
                (ns.as_str(), seg, term.as_str(), first),
                [0xffu8; 11].as_slice(),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }
    // The merge that compacts the level reads the damage and fails; the writes before and
    // after it succeed, and their keywords are found from the unmerged view.
    let before = remember_episodic(&m, &["fresh record before the merge"])[0];
    assert!(m.merge_postings_now().is_err());
    let after = remember_episodic(&m, &["fresh record after the merge"])[0];
    let mut got = ids(&m.recall(&a, &query("fresh record")).unwrap());
    got.sort_unstable();
    assert_eq!(got, [before, after]);
    // So are they after a reopen (read again from the records' texts).
    drop(m);
    let m = open(dir.path(), false);
    let mut got = ids(&m.recall(&a, &query("fresh record")).unwrap());
    got.sort_unstable();
    assert_eq!(got, [before, after]);
}

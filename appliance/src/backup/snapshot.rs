//! The database snapshot: every table of the live database copied row by row, inside one read
//! transaction, into a new redb file. Every table the appliance and its engines own is named
//! here; a table in the live file that is not is refused ([`BackupError::UnknownTable`]) rather
//! than silently left out, and the test below fills every subsystem and takes a snapshot.

use super::BackupError;
use redb::{
    Database, Key, MultimapTableDefinition, MultimapTableHandle, ReadTransaction, ReadableDatabase,
    ReadableMultimapTable, ReadableTable, TableDefinition, TableHandle, Value, WriteTransaction,
};
use std::collections::BTreeSet;
use std::path::Path;

struct Copier<'a> {
    src: &'a ReadTransaction,
    dst: &'a WriteTransaction,
    known: BTreeSet<String>,
    rows: u64,
}

impl Copier<'_> {
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<K, V>,
    ) -> Result<(), BackupError> {
        self.known.insert(def.name().to_string());
        let src = match self.src.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut dst = self.dst.open_table(def)?;
        for row in src.iter()? {
            let (k, v) = row?;
            dst.insert(k.value(), v.value())?;
            self.rows += 1;
        }
        Ok(())
    }

    fn multimap<K: Key + 'static, V: Key + 'static>(
        &mut self,
        def: MultimapTableDefinition<K, V>,
    ) -> Result<(), BackupError> {
        self.known.insert(def.name().to_string());
        let src = match self.src.open_multimap_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut dst = self.dst.open_multimap_table(def)?;
        for row in src.iter()? {
            let (k, values) = row?;
            for v in values {
                dst.insert(k.value(), v?.value())?;
                self.rows += 1;
            }
        }
        Ok(())
    }

    /// Every table of the appliance's database, by owner.
    fn all(&mut self) -> Result<(), BackupError> {
        use cairn_agents::db as agents;
        use cairn_memory::tables as memory;
        // The appliance: schema, settings, accounts, the router's books.
        self.table(crate::store::META)?;
        self.table(crate::store::SETTINGS)?;
        self.table(crate::auth::USERS)?;
        self.table(crate::auth::SESSIONS)?;
        self.table(crate::auth::TOKENS)?;
        self.table(crate::auth::AUDIT)?;
        self.table(crate::router::ledger::PROVIDERS)?;
        self.table(crate::router::ledger::SETTINGS)?;
        self.table(crate::router::ledger::USAGE)?;
        self.table(crate::router::ledger::HOURLY)?;
        self.table(crate::router::ledger::SCORES)?;
        self.table(crate::router::ledger::USAGE_SEQ)?;
        // Memory.
        self.table(memory::RECORDS)?;
        self.table(memory::VECTORS)?;
        self.table(memory::GRAPH)?;
        self.table(memory::SEG_BLOCKS)?;
        self.table(memory::SEGMENTS)?;
        self.table(memory::POSTING_BLOCKS)?;
        self.table(memory::POSTINGS_V2)?;
        self.table(memory::POSTINGS_NEW)?;
        self.table(memory::BY_NAMESPACE)?;
        self.table(memory::NAMESPACES)?;
        self.table(memory::DEDUP)?;
        self.table(memory::PROCEDURES)?;
        self.multimap(memory::WORKING)?;
        self.table(memory::CONSOLIDATIONS)?;
        self.table(memory::META)?;
        // Agents.
        self.table(agents::TRUST)?;
        self.table(agents::PACKAGES)?;
        self.table(agents::AGENTS)?;
        self.table(agents::RUNS)?;
        self.table(agents::KV)?;
        self.table(agents::KV_BYTES)?;
        self.table(agents::CHECKPOINTS)?;
        self.table(agents::USAGE)?;
        self.table(agents::AUDIT)?;
        self.table(agents::WORKFLOW_RUNS)?;
        self.table(agents::WORKFLOWS)?;
        Ok(())
    }
}

/// Copies `db` as of now into a new database file at `out`; returns the rows copied.
pub fn snapshot(db: &Database, out: &Path) -> Result<u64, BackupError> {
    let src = db.begin_read()?;
    let copy = Database::builder().create(out).map_err(|e| match e {
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            BackupError::io(format!("creating {}", out.display()), io)
        }
        e => e.into(),
    })?;
    let dst = copy.begin_write()?;
    let mut c = Copier {
        src: &src,
        dst: &dst,
        known: BTreeSet::new(),
        rows: 0,
    };
    c.all()?;
    let names = src
        .list_tables()?
        .map(|t| t.name().to_string())
        .chain(src.list_multimap_tables()?.map(|t| t.name().to_string()));
    for name in names {
        if !c.known.contains(&name) {
            return Err(BackupError::UnknownTable(name));
        }
    }
    let rows = c.rows;
    dst.commit()?;
    drop(copy);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_copied_and_an_unknown_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("live.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(crate::store::SETTINGS).unwrap();
            t.insert("a", "1").unwrap();
            t.insert("b", "2").unwrap();
            let mut m = w
                .open_multimap_table(cairn_memory::tables::WORKING)
                .unwrap();
            m.insert(("ns", "s"), 1).unwrap();
            m.insert(("ns", "s"), 2).unwrap();
        }
        w.commit().unwrap();
        let out = dir.path().join("copy.redb");
        assert_eq!(snapshot(&db, &out).unwrap(), 4);
        let copy = Database::open(&out).unwrap();
        let r = copy.begin_read().unwrap();
        let t = r.open_table(crate::store::SETTINGS).unwrap();
        assert_eq!(t.get("b").unwrap().unwrap().value(), "2");
        let m = r
            .open_multimap_table(cairn_memory::tables::WORKING)
            .unwrap();
        assert_eq!(m.get(("ns", "s")).unwrap().count(), 2);

        const STRANGER: TableDefinition<&str, &str> = TableDefinition::new("stranger");
        let w = db.begin_write().unwrap();
        w.open_table(STRANGER).unwrap().insert("x", "y").unwrap();
        w.commit().unwrap();
        let again = dir.path().join("again.redb");
        assert!(matches!(
            snapshot(&db, &again),
            Err(BackupError::UnknownTable(name)) if name == "stranger"
        ));
    }
}

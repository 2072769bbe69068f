//! Namespaces and who may use them: access patterns, settings and counters.

use super::*;

/// Which namespaces a caller may read and write. Patterns are a namespace, `kind:*`, or `*`.
#[derive(Debug, Clone, Default)]
pub struct Access {
    read: Vec<String>,
    write: Vec<String>,
}

fn matches(patterns: &[String], ns: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == ns
            || p.strip_suffix('*')
                .is_some_and(|prefix| prefix.ends_with(':') && ns.starts_with(prefix))
    })
}

impl Access {
    /// The operator: every namespace.
    pub fn admin() -> Access {
        Access {
            read: vec!["*".into()],
            write: vec!["*".into()],
        }
    }

    /// An agent: its own `agent:NAME` namespace read-write, plus the granted namespaces.
    pub fn agent(name: &str, read: &[String], write: &[String]) -> Access {
        let own = format!("agent:{name}");
        let mut a = Access {
            read: read.to_vec(),
            write: write.to_vec(),
        };
        a.read.push(own.clone());
        a.write.push(own);
        a.read.extend(a.write.clone());
        a
    }

    /// A user: `user:NAME` read-write and `shared` read-write.
    pub fn user(name: &str) -> Access {
        let v = vec![format!("user:{name}"), "shared".into(), "shared:*".into()];
        Access {
            read: v.clone(),
            write: v,
        }
    }

    /// Whether `ns` may be read.
    pub fn can_read(&self, ns: &str) -> bool {
        matches(&self.read, ns)
    }

    /// Whether `ns` may be written.
    pub fn can_write(&self, ns: &str) -> bool {
        matches(&self.write, ns)
    }
}

/// A namespace's settings and counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamespaceInfo {
    /// Most records kept; consolidation evicts unpinned records beyond it.
    pub quota: u64,
    /// Records now.
    pub records: u64,
    /// Sum of keyword document lengths (for BM25's average).
    pub terms: u64,
}

impl Default for NamespaceInfo {
    fn default() -> Self {
        NamespaceInfo {
            quota: DEFAULT_QUOTA,
            records: 0,
            terms: 0,
        }
    }
}

/// Reads a namespace's info inside a write transaction.
pub(crate) fn ns_info(txn: &WriteTransaction, ns: &str) -> Result<NamespaceInfo, MemoryError> {
    let t = txn.open_table(tables::NAMESPACES)?;
    let v = t.get(ns)?;
    match v {
        Some(v) => serde_json::from_slice(v.value())
            .map_err(|e| decode_error(format!("namespace {ns:?}"), e)),
        None => Err(MemoryError::UnknownNamespace(ns.to_string())),
    }
}

pub(crate) fn put_ns_info(
    txn: &WriteTransaction,
    ns: &str,
    info: &NamespaceInfo,
) -> Result<(), MemoryError> {
    txn.open_table(tables::NAMESPACES)?
        .insert(ns, encode(info).as_slice())?;
    Ok(())
}

impl Memory {
    pub(crate) fn check_read(&self, access: &Access, ns: &str) -> Result<(), MemoryError> {
        record::check_namespace(ns).map_err(InputError::Invalid)?;
        if !access.can_read(ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to read namespace {ns:?}"
            )));
        }
        let txn = self.db.begin_read()?;
        if txn.open_table(tables::NAMESPACES)?.get(ns)?.is_none() {
            return Err(MemoryError::UnknownNamespace(ns.into()));
        }
        Ok(())
    }

    /// Every namespace the caller may read, with its settings and counters.
    pub fn namespaces(
        &self,
        access: &Access,
    ) -> Result<BTreeMap<String, NamespaceInfo>, MemoryError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(tables::NAMESPACES)?;
        let mut out = BTreeMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if access.can_read(k.value()) {
                let info: NamespaceInfo = serde_json::from_slice(v.value())
                    .map_err(|e| decode_error(format!("namespace {:?}", k.value()), e))?;
                out.insert(k.value().to_string(), info);
            }
        }
        Ok(out)
    }

    /// Creates a namespace or changes its quota.
    pub fn put_namespace(
        &self,
        access: &Access,
        ns: &str,
        quota: Option<u64>,
    ) -> Result<NamespaceInfo, MemoryError> {
        record::check_namespace(ns).map_err(InputError::Invalid)?;
        if !access.can_write(ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to write namespace {ns:?}"
            )));
        }
        if quota == Some(0) {
            return Err(InputError::Invalid("quota must be at least 1".into()).into());
        }
        self.write(&[], |txn| {
            let mut info = match ns_info(txn, ns) {
                Ok(i) => i,
                Err(MemoryError::UnknownNamespace(_)) => NamespaceInfo::default(),
                Err(e) => return Err(e),
            };
            if let Some(q) = quota {
                info.quota = q;
            }
            put_ns_info(txn, ns, &info)?;
            Ok(info)
        })
    }

    /// Deletes an empty namespace (409 while it holds records).
    pub fn delete_namespace(&self, access: &Access, ns: &str) -> Result<(), MemoryError> {
        self.check_read(access, ns)?;
        if !access.can_write(ns) {
            return Err(MemoryError::Forbidden(format!(
                "no capability to write namespace {ns:?}"
            )));
        }
        self.write(&[], |txn| {
            let info = ns_info(txn, ns)?;
            if info.records > 0 {
                return Err(MemoryError::Conflict(format!(
                    "namespace {ns:?} still holds {} records",
                    info.records
                )));
            }
            txn.open_table(tables::NAMESPACES)?.remove(ns)?;
            postings::drop_namespace(txn, ns)?;
            Ok(())
        })
    }
}

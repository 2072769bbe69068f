//! The router's redb tables (all `router_*`, written only by this module): providers with
//! their sealed keys, settings, usage per day / caller / provider / model, tokens per hour and
//! caller (budgets), and learned judge scores. Tables are created by their first write, so no
//! schema migration is needed; reads of a table that does not exist yet see it empty.

use super::config::{ProviderConfig, RouterSettings};
use crate::store::StoreError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Provider name → stored provider (JSON).
const PROVIDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("router_providers");
/// `"settings"` → router settings (JSON).
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("router_settings");
/// (UTC day number, caller, provider, model) → usage row (JSON).
const USAGE: TableDefinition<(u32, &str, &str, &str), &[u8]> = TableDefinition::new("router_usage");
/// (UTC hour number, caller) → tokens.
const HOURLY: TableDefinition<(u64, &str), u64> = TableDefinition::new("router_hourly");
/// (model, task kind) → score (JSON: n, sum).
const SCORES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("router_scores");

/// A provider as stored: its configuration and its sealed key (hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredProvider {
    /// Configuration.
    pub config: ProviderConfig,
    /// `KeyBox::seal` output, hex; never the key itself.
    #[serde(default)]
    pub sealed_key: Option<String>,
}

/// Accumulated usage of one (day, caller, provider, model).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Successful calls.
    pub calls: u64,
    /// Failed attempts charged to this target.
    #[serde(default)]
    pub failures: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// US dollars.
    pub cost_usd: f64,
}

/// A stored usage row with its key: (UTC day number, caller, provider, model, figures).
pub type UsageRecord = (u32, String, String, String, UsageRow);

/// One usage line of a report.
#[derive(Debug, Clone, Serialize)]
pub struct UsageLine {
    /// UTC date, `YYYY-MM-DD`.
    pub day: String,
    /// `api` or `agent:NAME`.
    pub caller: String,
    /// `local` or the provider's name.
    pub provider: String,
    /// The model.
    pub model: String,
    /// The figures.
    #[serde(flatten)]
    pub usage: UsageRow,
}

/// A learned score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Judgements recorded.
    pub n: u64,
    /// Their sum.
    pub sum: f64,
}

/// Access to the tables; without a database (degraded mode) reads are empty and writes fail.
#[derive(Clone)]
pub struct Ledger {
    db: Option<(Arc<Database>, PathBuf)>,
}

fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(e.to_string())
}

/// The UTC date of a day number.
pub fn day_string(day: u32) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::from(day) * 86_400)
        .map(|t| {
            let d = t.date();
            format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
        })
        .unwrap_or_else(|_| day.to_string())
}

impl Ledger {
    /// Over `db` (stored at `path`, for the free-space check), or none.
    pub fn new(db: Option<(Arc<Database>, PathBuf)>) -> Ledger {
        Ledger { db }
    }

    /// Whether writes can persist.
    pub fn persistent(&self) -> bool {
        self.db.is_some()
    }

    fn write<R>(
        &self,
        need: u64,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let Some((db, path)) = &self.db else {
            return Err(StoreError::Unavailable(
                "the data partition is unavailable (degraded mode)".into(),
            ));
        };
        crate::store::ensure_space(path, need)?;
        let txn = db.begin_write()?;
        let r = f(&txn)?;
        txn.commit()?;
        Ok(r)
    }

    /// Runs `f` on a read transaction; `Ok(default)` when there is no database.
    fn read<R: Default>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match &self.db {
            None => Ok(R::default()),
            Some((db, _)) => f(&db.begin_read()?),
        }
    }

    /// Every stored provider.
    pub fn providers(&self) -> Result<Vec<StoredProvider>, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(PROVIDERS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                match serde_json::from_slice(v.value()) {
                    Ok(p) => out.push(p),
                    Err(e) => tracing::error!("router provider {:?} unreadable: {e}", k.value()),
                }
            }
            Ok(out)
        })
    }

    /// Writes (creates or replaces) a provider.
    pub fn put_provider(&self, p: &StoredProvider) -> Result<(), StoreError> {
        let v = serde_json::to_vec(p).map_err(other)?;
        self.write(4 * v.len() as u64 + 4096, |txn| {
            txn.open_table(PROVIDERS)?
                .insert(p.config.name.as_str(), v.as_slice())?;
            Ok(())
        })
    }

    /// Deletes a provider; whether it existed.
    pub fn delete_provider(&self, name: &str) -> Result<bool, StoreError> {
        self.write(4096, |txn| {
            Ok(txn.open_table(PROVIDERS)?.remove(name)?.is_some())
        })
    }

    /// The stored settings (defaults when none).
    pub fn settings(&self) -> Result<RouterSettings, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(SETTINGS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
                Err(e) => return Err(e.into()),
            };
            Ok(match t.get("settings")? {
                Some(v) => serde_json::from_slice(v.value()).map_err(other)?,
                None => RouterSettings::default(),
            })
        })
    }

    /// Stores the settings.
    pub fn put_settings(&self, s: &RouterSettings) -> Result<(), StoreError> {
        let v = serde_json::to_vec(s).map_err(other)?;
        self.write(4 * v.len() as u64 + 4096, |txn| {
            txn.open_table(SETTINGS)?.insert("settings", v.as_slice())?;
            Ok(())
        })
    }

    /// Adds a call's figures to the day's row and the hour's token count, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        day: u32,
        hour: u64,
        caller: &str,
        provider: &str,
        model: &str,
        add: &UsageRow,
    ) -> Result<(), StoreError> {
        self.write(16 << 10, |txn| {
            {
                let mut t = txn.open_table(USAGE)?;
                let key = (day, caller, provider, model);
                let mut row: UsageRow = match t.get(key)? {
                    Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
                    None => UsageRow::default(),
                };
                row.calls += add.calls;
                row.failures += add.failures;
                row.prompt_tokens += add.prompt_tokens;
                row.completion_tokens += add.completion_tokens;
                row.cost_usd += add.cost_usd;
                let v = serde_json::to_vec(&row).map_err(other)?;
                t.insert(key, v.as_slice())?;
            }
            let tokens = add.prompt_tokens + add.completion_tokens;
            if tokens > 0 {
                let mut h = txn.open_table(HOURLY)?;
                let cur = h.get((hour, caller))?.map(|v| v.value()).unwrap_or(0);
                h.insert((hour, caller), cur + tokens)?;
            }
            Ok(())
        })
    }

    /// Tokens used in `hour` by `caller` (every caller when `None`).
    pub fn tokens_in_hour(&self, hour: u64, caller: Option<&str>) -> Result<u64, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(HOURLY) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            let mut sum = 0;
            for row in t.range((hour, "")..(hour + 1, ""))? {
                let (k, v) = row?;
                if caller.is_none_or(|c| c == k.value().1) {
                    sum += v.value();
                }
            }
            Ok(sum)
        })
    }

    /// Usage rows of days `from..=to`, optionally of one caller.
    pub fn usage(
        &self,
        from: u32,
        to: u32,
        caller: Option<&str>,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(USAGE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in t.range((from, "", "", "")..(to.saturating_add(1), "", "", ""))? {
                let (k, v) = row?;
                let (day, c, p, m) = k.value();
                if caller.is_some_and(|x| x != c) {
                    continue;
                }
                let r: UsageRow = serde_json::from_slice(v.value()).unwrap_or_default();
                out.push((day, c.to_string(), p.to_string(), m.to_string(), r));
            }
            Ok(out)
        })
    }

    /// Every learned score.
    pub fn scores(&self) -> Result<Vec<(String, String, Score)>, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(SCORES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                let (m, kind) = k.value();
                let s: Score = serde_json::from_slice(v.value()).unwrap_or_default();
                out.push((m.to_string(), kind.to_string(), s));
            }
            Ok(out)
        })
    }

    /// Stores one learned score.
    pub fn put_score(&self, model: &str, kind: &str, s: &Score) -> Result<(), StoreError> {
        let v = serde_json::to_vec(s).map_err(other)?;
        self.write(16 << 10, |txn| {
            txn.open_table(SCORES)?
                .insert((model, kind), v.as_slice())?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_hourly_tokens_accumulate_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::store::Store::open(dir.path()).unwrap();
            let l = Ledger::new(Some((store.database(), store.path().to_path_buf())));
            assert_eq!(l.tokens_in_hour(5, None).unwrap(), 0);
            let row = UsageRow {
                calls: 1,
                failures: 0,
                prompt_tokens: 10,
                completion_tokens: 5,
                cost_usd: 0.25,
            };
            l.record(3, 5, "api", "cloud", "m", &row).unwrap();
            l.record(3, 5, "api", "cloud", "m", &row).unwrap();
            l.record(3, 5, "agent:bob", "local", "x", &row).unwrap();
            l.record(4, 6, "api", "cloud", "m", &row).unwrap();
        }
        let store = crate::store::Store::open(dir.path()).unwrap();
        let l = Ledger::new(Some((store.database(), store.path().to_path_buf())));
        assert_eq!(l.tokens_in_hour(5, None).unwrap(), 45);
        assert_eq!(l.tokens_in_hour(5, Some("agent:bob")).unwrap(), 15);
        assert_eq!(l.tokens_in_hour(6, Some("api")).unwrap(), 15);
        let day3 = l.usage(3, 3, None).unwrap();
        assert_eq!(day3.len(), 2);
        let api = day3.iter().find(|r| r.1 == "api").unwrap();
        assert_eq!(api.4.calls, 2);
        assert!((api.4.cost_usd - 0.5).abs() < 1e-12);
        assert_eq!(l.usage(3, 4, Some("api")).unwrap().len(), 2);
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(20_000), "2024-10-04");
    }
}

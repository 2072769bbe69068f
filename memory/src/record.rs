//! The memory data model: tiers, namespaces, records and the limits every input is held to.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest record text in bytes (bigger gets 413).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Largest metadata object, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Longest namespace, session, source or procedure key.
pub const MAX_NAME_BYTES: usize = 128;
/// Working-memory records kept per session (oldest unpinned evicted first).
pub const WORKING_LIMIT: usize = 64;

/// A memory tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Bounded per session or run, evicted oldest-first.
    Working,
    /// Events with time, source and importance.
    Episodic,
    /// Facts and knowledge, deduplicated by meaning.
    Semantic,
    /// How-tos and skills, versioned by key.
    Procedural,
}

impl Tier {
    /// Every tier.
    pub const ALL: [Tier; 4] = [
        Tier::Working,
        Tier::Episodic,
        Tier::Semantic,
        Tier::Procedural,
    ];

    /// The tier's name.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Working => "working",
            Tier::Episodic => "episodic",
            Tier::Semantic => "semantic",
            Tier::Procedural => "procedural",
        }
    }

    /// Parses a tier name.
    pub fn parse(s: &str) -> Result<Tier, String> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!("unknown tier {s:?} (working, episodic, semantic or procedural)")
            })
    }

    /// Small code kept in the vector index for filtering.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The tier of a code.
    pub fn from_code(c: u8) -> Option<Tier> {
        Tier::ALL.get(c as usize).copied()
    }
}

/// Checks a namespace name: `shared`, or `shared:`, `agent:` or `user:` followed by 1–64 of
/// `a-z 0-9 . _ -`.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    if ns == "shared" {
        return Ok(());
    }
    let Some((kind, name)) = ns.split_once(':') else {
        return Err(format!(
            "namespace {ns:?}: expected shared, shared:NAME, agent:NAME or user:NAME"
        ));
    };
    if !["shared", "agent", "user"].contains(&kind) {
        return Err(format!(
            "namespace {ns:?}: kind must be shared, agent or user"
        ));
    }
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(format!(
            "namespace {ns:?}: the name must be 1-64 characters of a-z, 0-9, '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// Who produced a record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The agent that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The run it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The user who wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Records a consolidation summarised into this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consolidated_from: Vec<u64>,
}

/// One memory record as stored and returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique, increasing id.
    pub id: u64,
    /// Tier.
    pub tier: Tier,
    /// Namespace.
    pub namespace: String,
    /// The remembered text.
    pub text: String,
    /// Free-form JSON object.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Milliseconds since the Unix epoch when it was written.
    pub created_ms: u64,
    /// When it was last returned by get or recall.
    pub accessed_ms: u64,
    /// How many times it was returned by get or recall.
    pub access_count: u64,
    /// 0 to 1; decays over time unless pinned.
    pub importance: f32,
    /// Pinned records are never decayed, evicted or consolidated away.
    pub pinned: bool,
    /// Who produced it.
    #[serde(default)]
    pub provenance: Provenance,
    /// Working tier: the session or run it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Episodic tier: when the event happened (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_ms: Option<u64>,
    /// Episodic tier: where the event came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Procedural tier: the skill's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Procedural tier: version of the skill (1, 2, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Procedural tier: the newer version that replaced this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<u64>,
    /// The consolidation summary this record was folded into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consolidated_into: Option<u64>,
    /// Whether the record has an embedding (stored apart, quantized).
    #[serde(default)]
    pub embedded: bool,
    /// The time importance last decayed (ms since the epoch).
    #[serde(default)]
    pub decayed_ms: u64,
}

/// A record to write, as a client sends it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    /// Tier.
    pub tier: Option<String>,
    /// Namespace (default `shared`).
    pub namespace: Option<String>,
    /// Text.
    pub text: String,
    /// JSON object.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// 0 to 1 (default 0.5).
    pub importance: Option<f32>,
    /// Pinned.
    #[serde(default)]
    pub pinned: bool,
    /// Who produced it.
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// Working tier: session or run id (required there).
    pub session: Option<String>,
    /// Episodic: when the event happened (default now).
    pub occurred_ms: Option<u64>,
    /// Episodic: where it came from.
    pub source: Option<String>,
    /// Procedural: the skill's key (required there).
    pub key: Option<String>,
    /// A precomputed embedding (must match the index's dimensions); otherwise the embedding
    /// model computes one when it is available.
    pub embedding: Option<Vec<f32>>,
}

/// Why an input was refused; the API maps each to a status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// Malformed or out-of-range field (400).
    #[error("{0}")]
    Invalid(String),
    /// Text or metadata over its limit (413).
    #[error("{0}")]
    TooLarge(String),
}

/// Text: not blank, at most [`MAX_TEXT_BYTES`].
fn check_text(text: &str) -> Result<(), InputError> {
    if text.trim().is_empty() {
        return Err(InputError::Invalid("text must not be empty".into()));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(InputError::TooLarge(format!(
            "text is {} bytes; the limit is {MAX_TEXT_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// Metadata (a JSON object of at most [`MAX_METADATA_BYTES`]) and importance (0 to 1).
fn check_fields(metadata: Option<&Value>, importance: Option<f32>) -> Result<(), InputError> {
    if let Some(m) = metadata {
        if !m.is_object() {
            return Err(InputError::Invalid("metadata must be a JSON object".into()));
        }
        if m.to_string().len() > MAX_METADATA_BYTES {
            return Err(InputError::TooLarge(format!(
                "metadata is over {MAX_METADATA_BYTES} bytes"
            )));
        }
    }
    if let Some(i) = importance
        && !(0.0..=1.0).contains(&i)
    {
        return Err(InputError::Invalid(
            "importance must be between 0 and 1".into(),
        ));
    }
    Ok(())
}

fn name_field(field: &str, v: &Option<String>) -> Result<(), InputError> {
    if let Some(v) = v
        && (v.is_empty() || v.len() > MAX_NAME_BYTES || v.chars().any(char::is_control))
    {
        return Err(InputError::Invalid(format!(
            "{field} must be 1-{MAX_NAME_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

impl NewRecord {
    /// Checks every field and returns the tier and namespace it names.
    pub fn validate(&self) -> Result<(Tier, String), InputError> {
        let tier =
            Tier::parse(self.tier.as_deref().unwrap_or("episodic")).map_err(InputError::Invalid)?;
        let ns = self.namespace.clone().unwrap_or_else(|| "shared".into());
        check_namespace(&ns).map_err(InputError::Invalid)?;
        check_text(&self.text)?;
        check_fields(self.metadata.as_ref(), self.importance)?;
        name_field("session", &self.session)?;
        name_field("source", &self.source)?;
        name_field("key", &self.key)?;
        if let Some(p) = &self.provenance {
            name_field("provenance.agent", &p.agent)?;
            name_field("provenance.run", &p.run)?;
            name_field("provenance.user", &p.user)?;
        }
        match tier {
            Tier::Working if self.session.is_none() => {
                return Err(InputError::Invalid(
                    "working memory needs a session (the session or run it belongs to)".into(),
                ));
            }
            Tier::Procedural if self.key.is_none() => {
                return Err(InputError::Invalid(
                    "procedural memory needs a key (the skill's name)".into(),
                ));
            }
            _ => {}
        }
        let only = |field: &str, set: bool, t: Tier| {
            if set && tier != t {
                Err(InputError::Invalid(format!(
                    "{field} applies only to the {} tier",
                    t.name()
                )))
            } else {
                Ok(())
            }
        };
        only("session", self.session.is_some(), Tier::Working)?;
        only("key", self.key.is_some(), Tier::Procedural)?;
        only("occurred_ms", self.occurred_ms.is_some(), Tier::Episodic)?;
        only("source", self.source.is_some(), Tier::Episodic)?;
        Ok((tier, ns))
    }
}

/// Changes to a record (PATCH): each present field replaces the stored one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordUpdate {
    /// New text (re-indexed and re-embedded).
    pub text: Option<String>,
    /// New metadata object.
    pub metadata: Option<Value>,
    /// New importance.
    pub importance: Option<f32>,
    /// Pin or unpin.
    pub pinned: Option<bool>,
}

impl RecordUpdate {
    /// Checks the fields like [`NewRecord::validate`].
    pub fn validate(&self) -> Result<(), InputError> {
        if let Some(t) = &self.text {
            check_text(t)?;
        }
        check_fields(self.metadata.as_ref(), self.importance)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tier: &str) -> NewRecord {
        NewRecord {
            tier: Some(tier.into()),
            text: "x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn namespaces() {
        for ok in ["shared", "shared:team", "agent:planner-1", "user:ops.eu"] {
            check_namespace(ok).unwrap();
        }
        for bad in [
            "",
            "agent",
            "agent:",
            "robot:x",
            "agent:Upper",
            "user:a b",
            "shared:é",
        ] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tier_specific_fields_are_checked() {
        assert!(rec("working").validate().is_err());
        assert!(rec("procedural").validate().is_err());
        assert!(
            rec("robotic")
                .validate()
                .unwrap_err()
                .to_string()
                .contains("unknown tier")
        );
        let mut r = rec("semantic");
        r.session = Some("s".into());
        assert!(r.validate().unwrap_err().to_string().contains("working"));
        let mut r = rec("episodic");
        r.importance = Some(f32::NAN);
        assert!(r.validate().is_err());
        r.importance = Some(0.7);
        assert_eq!(r.validate().unwrap(), (Tier::Episodic, "shared".into()));
    }

    #[test]
    fn limits() {
        let mut r = rec("episodic");
        r.text = "a".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(r.validate(), Err(InputError::TooLarge(_))));
        r.text = "   ".into();
        assert!(matches!(r.validate(), Err(InputError::Invalid(_))));
        r.text = "ok".into();
        r.metadata = Some(Value::from(3));
        assert!(r.validate().is_err());
    }
}

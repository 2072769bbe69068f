//! The model store: a directory with one folder per model (`<root>/<id>/<file>`), filled by
//! `cargo xtask fetch-models` (hosted) or baked into the image's read-only model partition.

use super::catalog::{Catalog, Model};
use std::path::{Path, PathBuf};

/// The default store for this user: `$CAIRN_MODELS`, else `$CAIRN_CACHE/models`, else
/// `$XDG_CACHE_HOME/cairn/models`, else `~/.cache/cairn/models`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CAIRN_MODELS") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("CAIRN_CACHE") {
        return PathBuf::from(d).join("models");
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("cairn").join("models");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home)
        .join(".cache")
        .join("cairn")
        .join("models")
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

impl ModelStore {
    /// A store rooted at `root` (which may not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> ModelStore {
        ModelStore { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a model's file of `role` lives (whether or not it is there).
    pub fn file(&self, model: &Model, role: &str) -> Option<PathBuf> {
        let f = model.files.iter().find(|f| f.role == role)?;
        let name = Path::new(&f.path).file_name()?;
        Some(self.root.join(&model.id).join(name))
    }

    /// True when every file of the model is present with its catalogued size.
    pub fn has(&self, model: &Model) -> bool {
        model.files.iter().all(|f| {
            Path::new(&f.path)
                .file_name()
                .map(|n| self.root.join(&model.id).join(n))
                .and_then(|p| std::fs::metadata(p).ok())
                .is_some_and(|m| m.len() == f.size)
        })
    }

    /// The catalogued models present in the store.
    pub fn available<'a>(&self, catalog: &'a Catalog) -> Vec<&'a Model> {
        catalog.models.iter().filter(|m| self.has(m)).collect()
    }
}

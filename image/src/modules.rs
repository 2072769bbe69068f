//! Kernel module selection: read `.modinfo` from each `.ko`, close the curated set over
//! `depends=` and `softdep pre:`, and write the index init matches modaliases against.

use anyhow::{Context, Result, bail};
use cairn_init::modindex::{Alias, ModuleEntry, ModuleIndex, normalize};
use object::{Object, ObjectSection};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The parts of a module's `.modinfo` the builder uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`, normalised.
    pub name: String,
    /// `depends=`.
    pub depends: Vec<String>,
    /// `softdep=pre:` entries (module names or aliases).
    pub softdep_pre: Vec<String>,
    /// `alias=` patterns.
    pub aliases: Vec<String>,
    /// `firmware=` files the module may request.
    pub firmware: Vec<String>,
}

/// Parses the raw `.modinfo` section (NUL-separated `key=value` strings).
pub fn parse_modinfo(raw: &[u8]) -> ModInfo {
    let mut m = ModInfo::default();
    for entry in raw.split(|b| *b == 0) {
        let Ok(s) = std::str::from_utf8(entry) else {
            continue;
        };
        let Some((k, v)) = s.split_once('=') else {
            continue;
        };
        match k {
            "name" => m.name = normalize(v),
            "depends" => m
                .depends
                .extend(v.split(',').filter(|d| !d.is_empty()).map(normalize)),
            "alias" => m.aliases.push(v.to_string()),
            "firmware" => m.firmware.push(v.to_string()),
            "softdep" => {
                // "pre: a b post: c"
                let mut pre = false;
                for w in v.split_whitespace() {
                    match w {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        name if pre => m.softdep_pre.push(name.to_string()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    m
}

/// Reads the `.modinfo` of a `.ko` file.
pub fn read_modinfo(path: &Path) -> Result<ModInfo> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let obj = object::File::parse(&*data)
        .with_context(|| format!("{} is not an ELF object", path.display()))?;
    let section = obj
        .section_by_name(".modinfo")
        .with_context(|| format!("{} has no .modinfo", path.display()))?;
    let mut info = parse_modinfo(section.data()?);
    if info.name.is_empty() {
        info.name = module_name_of(path);
    }
    Ok(info)
}

fn module_name_of(path: &Path) -> String {
    normalize(
        path.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
            .unwrap_or(""),
    )
}

/// A kernel's module tree (`lib/modules/<release>` of an extracted package).
pub struct ModuleTree {
    /// `lib/modules/<release>`.
    pub root: PathBuf,
    /// Kernel release.
    pub release: String,
    /// Module name → path relative to `root`.
    pub files: BTreeMap<String, String>,
    /// Built-in module names (`modules.builtin`).
    pub builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Indexes the `.ko` files under `root`.
    pub fn open(root: &Path) -> Result<ModuleTree> {
        let release = root
            .file_name()
            .and_then(|n| n.to_str())
            .context("module root has no release name")?
            .to_string();
        let mut files = BTreeMap::new();
        let mut stack = vec![root.join("kernel")];
        while let Some(dir) = stack.pop() {
            for e in
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
            {
                let e = e?;
                let p = e.path();
                if e.file_type()?.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "ko") {
                    let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
                    files.insert(module_name_of(&p), rel);
                } else if p
                    .extension()
                    .is_some_and(|x| x == "xz" || x == "zst" || x == "gz")
                {
                    bail!(
                        "{} is compressed; this kernel package is not supported (init loads \
                         uncompressed modules with finit_module)",
                        p.display()
                    );
                }
            }
        }
        let builtin = std::fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name_of_line)
            .collect();
        Ok(ModuleTree {
            root: root.to_path_buf(),
            release,
            files,
            builtin,
        })
    }

    /// Every module that serves a softdep name: the module of that name, else any module with
    /// that alias. Only consulted for softdeps, so the scan of the whole tree happens rarely.
    fn providers(
        &self,
        want: &str,
        cache: &mut Option<Vec<(String, Vec<String>)>>,
    ) -> Result<Vec<String>> {
        let n = normalize(want);
        if self.files.contains_key(&n) {
            return Ok(vec![n]);
        }
        if cache.is_none() {
            let mut all = Vec::new();
            for (name, rel) in &self.files {
                let info = read_modinfo(&self.root.join(rel))?;
                all.push((name.clone(), info.aliases));
            }
            *cache = Some(all);
        }
        Ok(cache
            .as_ref()
            .map(|all| {
                all.iter()
                    .filter(|(_, aliases)| aliases.iter().any(|a| a == want))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn module_name_of_line(line: &str) -> String {
    module_name_of(Path::new(line.trim()))
}

/// The closed module set and its index.
pub struct Selection {
    /// The index for init.
    pub index: ModuleIndex,
    /// Requested modules that are built into this kernel (nothing to ship).
    pub builtin: Vec<String>,
}

/// Closes `drivers` and `boot` over dependencies and softdeps and builds the index.
pub fn select(tree: &ModuleTree, drivers: &[String], boot: &[String]) -> Result<Selection> {
    let mut infos: BTreeMap<String, ModInfo> = BTreeMap::new();
    let mut boot_set: BTreeSet<String> = BTreeSet::new();
    let mut builtin = Vec::new();
    let mut alias_cache = None;
    let mut queue: Vec<(String, bool, String)> = Vec::new();
    for d in drivers {
        queue.push((normalize(d), false, "firmware/<arch>/target.toml".into()));
    }
    for b in boot {
        queue.push((normalize(b), true, "firmware/<arch>/target.toml".into()));
    }
    while let Some((name, is_boot, wanted_by)) = queue.pop() {
        if is_boot {
            boot_set.insert(name.clone());
        }
        if infos.contains_key(&name) {
            continue;
        }
        let Some(rel) = tree.files.get(&name) else {
            if tree.builtin.contains(&name) {
                builtin.push(name);
                continue;
            }
            bail!(
                "module {name} (wanted by {wanted_by}) is neither a module nor built into kernel {}",
                tree.release
            );
        };
        let info = read_modinfo(&tree.root.join(rel))?;
        for d in &info.depends {
            queue.push((d.clone(), false, name.clone()));
        }
        for s in &info.softdep_pre {
            let providers = tree.providers(s, &mut alias_cache)?;
            if providers.is_empty() {
                eprintln!("  note: softdep {s} of {name} has no module (built in?)");
            }
            for p in providers {
                queue.push((p, false, name.clone()));
            }
        }
        infos.insert(name, info);
    }
    let mut index = ModuleIndex {
        kernel: tree.release.clone(),
        ..Default::default()
    };
    for (name, info) in &infos {
        let mut deps = info.depends.clone();
        for s in &info.softdep_pre {
            for p in tree.providers(s, &mut alias_cache)? {
                if p != *name && !deps.contains(&p) {
                    deps.push(p);
                }
            }
        }
        index.modules.push(ModuleEntry {
            name: name.clone(),
            path: tree.files.get(name).cloned().unwrap_or_default(),
            deps,
            boot: boot_set.contains(name),
        });
        for a in &info.aliases {
            index.aliases.push(Alias {
                pattern: a.clone(),
                module: name.clone(),
            });
        }
    }
    builtin.sort();
    builtin.dedup();
    Ok(Selection { index, builtin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modinfo_fields() {
        let raw = b"license=GPL\0softdep=pre: crypto-crc32c post: foo\0alias=fs-ext4\0alias=ext3\0\
                    depends=mbcache,jbd2\0firmware=rtl_nic/rtl8168d-1.fw\0name=ext4\0\xff\xfe\0vermagic=6.1\0";
        let m = parse_modinfo(raw);
        assert_eq!(m.name, "ext4");
        assert_eq!(m.depends, ["mbcache", "jbd2"]);
        assert_eq!(m.softdep_pre, ["crypto-crc32c"]);
        assert_eq!(m.aliases, ["fs-ext4", "ext3"]);
        assert_eq!(m.firmware, ["rtl_nic/rtl8168d-1.fw"]);
    }

    #[test]
    fn empty_depends_and_garbage_are_harmless() {
        let m = parse_modinfo(b"depends=\0=\0noequals\0");
        assert!(m.depends.is_empty());
        assert_eq!(parse_modinfo(b""), ModInfo::default());
    }
}

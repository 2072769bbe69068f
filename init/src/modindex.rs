//! The module index: which kernel modules the image carries, their dependencies and the device
//! aliases they serve.
//!
//! Debian's kernel package ships no `modules.dep`/`modules.alias` (depmod runs at install time),
//! so the image builder reads each selected module's `.modinfo` and writes this compact text
//! index into the initramfs; init matches `/sys` modaliases against it, as udev does with
//! `modules.alias`. Format (one record per line, `#` comments allowed):
//!
//! ```text
//! cairn-modules 1 <kernel release>
//! module <name> <path relative to /lib/modules/<release>> <dep,dep|-> [boot]
//! alias <fnmatch pattern> <module name>
//! ```
//!
//! `boot` marks modules loaded unconditionally (file systems, NLS tables): nothing in `/sys`
//! asks for them. Dependencies include resolved `softdep pre:` entries.

use std::collections::BTreeSet;

/// Magic first word of the index.
pub const MAGIC: &str = "cairn-modules";
/// Format version this code reads and writes.
pub const VERSION: u32 = 1;
/// File name of the index inside `/lib/modules/<release>/`.
pub const FILE_NAME: &str = "cairn.modules";

/// One module the image carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// Normalised name (`-` replaced by `_`), as the kernel names it in `/sys/module`.
    pub name: String,
    /// Path of the `.ko` relative to `/lib/modules/<release>/`.
    pub path: String,
    /// Modules that must be loaded first.
    pub deps: Vec<String>,
    /// Loaded at boot whatever the hardware.
    pub boot: bool,
}

/// One `alias` line: devices whose modalias matches `pattern` are served by `module`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// fnmatch(3) pattern from the module's `.modinfo`.
    pub pattern: String,
    /// Normalised module name.
    pub module: String,
}

/// The parsed index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleIndex {
    /// Kernel release the modules were built for.
    pub kernel: String,
    /// Modules, sorted by name.
    pub modules: Vec<ModuleEntry>,
    /// Aliases, in file order.
    pub aliases: Vec<Alias>,
}

/// Normalises a module name the way the kernel does (`-` and `_` are the same).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleIndex {
    /// Parses the index text; errors name the line.
    pub fn parse(text: &str) -> Result<ModuleIndex, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let (_, header) = lines.next().ok_or("module index is empty")?;
        let mut h = header.split_ascii_whitespace();
        if h.next() != Some(MAGIC) {
            return Err(format!("module index line 1: expected {MAGIC:?} header"));
        }
        let version: u32 = h
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or("module index line 1: missing version")?;
        if version != VERSION {
            return Err(format!(
                "module index line 1: version {version} is not supported (this init reads {VERSION})"
            ));
        }
        let kernel = h
            .next()
            .ok_or("module index line 1: missing kernel release")?
            .to_string();
        let mut idx = ModuleIndex {
            kernel,
            ..Default::default()
        };
        for (n, line) in lines {
            let mut w = line.split_ascii_whitespace();
            match w.next() {
                Some("module") => {
                    let (Some(name), Some(path), Some(deps)) = (w.next(), w.next(), w.next())
                    else {
                        return Err(format!(
                            "module index line {n}: module needs name, path, deps"
                        ));
                    };
                    if path.contains("..") || path.starts_with('/') {
                        return Err(format!(
                            "module index line {n}: path {path:?} escapes the module tree"
                        ));
                    }
                    let boot = match w.next() {
                        None => false,
                        Some("boot") => true,
                        Some(x) => {
                            return Err(format!("module index line {n}: unknown flag {x:?}"));
                        }
                    };
                    let deps = if deps == "-" {
                        Vec::new()
                    } else {
                        deps.split(',').map(normalize).collect()
                    };
                    idx.modules.push(ModuleEntry {
                        name: normalize(name),
                        path: path.to_string(),
                        deps,
                        boot,
                    });
                }
                Some("alias") => {
                    let (Some(pattern), Some(module), None) = (w.next(), w.next(), w.next()) else {
                        return Err(format!(
                            "module index line {n}: alias needs pattern and module"
                        ));
                    };
                    idx.aliases.push(Alias {
                        pattern: pattern.to_string(),
                        module: normalize(module),
                    });
                }
                Some(other) => {
                    return Err(format!("module index line {n}: unknown record {other:?}"));
                }
                None => {}
            }
        }
        idx.modules.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(idx)
    }

    /// Writes the index text (deterministic: modules by name, aliases as given).
    pub fn render(&self) -> String {
        let mut out = format!("{MAGIC} {VERSION} {}\n", self.kernel);
        for m in &self.modules {
            let deps = if m.deps.is_empty() {
                "-".to_string()
            } else {
                m.deps.join(",")
            };
            out.push_str(&format!("module {} {} {}", m.name, m.path, deps));
            if m.boot {
                out.push_str(" boot");
            }
            out.push('\n');
        }
        for a in &self.aliases {
            out.push_str(&format!("alias {} {}\n", a.pattern, a.module));
        }
        out
    }

    /// The module with this (normalised) name.
    pub fn module(&self, name: &str) -> Option<&ModuleEntry> {
        let name = normalize(name);
        self.modules
            .binary_search_by(|m| m.name.as_str().cmp(&name))
            .ok()
            .and_then(|i| self.modules.get(i))
    }

    /// Module names whose aliases match a device modalias (or a `modprobe` request such as
    /// `fs-vfat` or `crypto-crc32c`), without duplicates, in index order.
    pub fn matches(&self, modalias: &str) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for a in &self.aliases {
            if glob_match(&a.pattern, modalias) && seen.insert(a.module.as_str()) {
                out.push(a.module.as_str());
            }
        }
        out
    }

    /// Resolves what `modprobe NAME` means: a module name, else any alias match.
    pub fn resolve(&self, request: &str) -> Vec<&str> {
        match self.module(request) {
            Some(m) => vec![m.name.as_str()],
            None => self.matches(request),
        }
    }

    /// The modules to load for `name`, dependencies first, each once. A dependency the index
    /// lacks is an error naming it; cycles are broken (each module is visited once).
    pub fn load_order(&self, name: &str) -> Result<Vec<&ModuleEntry>, String> {
        let mut order = Vec::new();
        let mut visiting = BTreeSet::new();
        self.visit(&normalize(name), &mut visiting, &mut order)?;
        Ok(order)
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<&'a ModuleEntry>,
    ) -> Result<(), String> {
        if !visiting.insert(name.to_string()) {
            return Ok(());
        }
        let m = self
            .module(name)
            .ok_or_else(|| format!("module {name} is not in the image"))?;
        for d in &m.deps {
            self.visit(d, visiting, order)?;
        }
        order.push(m);
        Ok(())
    }
}

/// fnmatch(3) without flags, as modalias patterns use it: `*`, `?`, and `[...]` classes with
/// ranges and `!`/`^` negation. Works on bytes (modaliases are ASCII), allocates nothing, and
/// runs in O(pattern × text) without recursion: init matches every device against every
/// alias at boot, under emulation too.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, text index it matched to).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let tc = t.get(ti).copied().unwrap_or(0);
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class_match(p, pi, tc) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                // An unterminated class matches a literal '['.
                None => (tc == b'[').then_some(1),
            },
            Some(c) => (*c == tc).then_some(1),
            None => None,
        };
        match step {
            Some(len) => {
                pi += len;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == b'*'))
}

/// Matches `c` against the class starting at `p[start] == '['`; returns (matched, pattern
/// length of the class) or `None` when the class is unterminated.
fn class_match(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            break;
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|h| *h != b']') {
            let hi = *p.get(i + 2)?;
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
    Some((matched != negate, i + 1 - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "\
cairn-modules 1 6.1.0-test
# comment
module virtio_blk kernel/drivers/block/virtio_blk.ko -
module ext4 kernel/fs/ext4/ext4.ko mbcache,jbd2,crc16 boot
module jbd2 kernel/fs/jbd2/jbd2.ko -
module mbcache kernel/fs/mbcache.ko -
module crc16 kernel/lib/crc16.ko -
module usb-storage kernel/drivers/usb/storage/usb-storage.ko usbcore
module usbcore kernel/drivers/usb/core/usbcore.ko usb-common
module usb_common kernel/drivers/usb/common/usb-common.ko -
alias virtio:d00000002v* virtio_blk
alias fs-ext4 ext4
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb-storage
";

    #[test]
    fn parses_and_renders_round_trip() {
        let idx = ModuleIndex::parse(INDEX).unwrap();
        assert_eq!(idx.kernel, "6.1.0-test");
        assert_eq!(idx.modules.len(), 8);
        assert!(idx.module("usb-storage").is_some());
        let again = ModuleIndex::parse(&idx.render()).unwrap();
        assert_eq!(again, idx);
    }

    #[test]
    fn matches_device_modaliases() {
        let idx = ModuleIndex::parse(INDEX).unwrap();
        assert_eq!(idx.matches("virtio:d00000002v00001AF4"), vec!["virtio_blk"]);
        assert_eq!(
            idx.matches("usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00"),
            vec!["usb_storage"]
        );
        assert!(idx.matches("virtio:d00000001v00001AF4").is_empty());
        assert_eq!(idx.resolve("fs-ext4"), vec!["ext4"]);
        assert_eq!(idx.resolve("usb-storage"), vec!["usb_storage"]);
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let idx = ModuleIndex::parse(INDEX).unwrap();
        let names: Vec<_> = idx
            .load_order("usb_storage")
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["usb_common", "usbcore", "usb_storage"]);
        let names: Vec<_> = idx
            .load_order("ext4")
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["mbcache", "jbd2", "crc16", "ext4"]);
    }

    #[test]
    fn missing_dependency_and_cycles() {
        let idx = ModuleIndex::parse(
            "cairn-modules 1 k\nmodule a a.ko b\nmodule b b.ko a\nmodule c c.ko nope\n",
        )
        .unwrap();
        assert_eq!(idx.load_order("a").unwrap().len(), 2);
        assert!(idx.load_order("c").unwrap_err().contains("nope"));
    }

    #[test]
    fn bad_index_lines_are_named() {
        assert!(ModuleIndex::parse("").is_err());
        assert!(
            ModuleIndex::parse("cairn-modules 2 k\n")
                .unwrap_err()
                .contains("version 2")
        );
        let e = ModuleIndex::parse("cairn-modules 1 k\nmodule a\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = ModuleIndex::parse("cairn-modules 1 k\nmodule a ../../etc/x.ko -\n").unwrap_err();
        assert!(e.contains("escapes"), "{e}");
        let e = ModuleIndex::parse("cairn-modules 1 k\nfoo\n").unwrap_err();
        assert!(e.contains("unknown record"), "{e}");
    }

    #[test]
    fn glob_semantics() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match(
            "pci:v00008086d*sv*sd*bc02sc00i*",
            "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("[abc]x", "bx"));
        assert!(glob_match("[a-f]x", "ex"));
        assert!(!glob_match("[!a-f]x", "ex"));
        assert!(glob_match("[^a-f]x", "gx"));
        assert!(glob_match("[]]", "]"));
        assert!(glob_match("[", "["));
        assert!(glob_match("**a", "a"));
        assert!(!glob_match("", "a"));
    }

    proptest::proptest! {
        #[test]
        fn glob_never_panics_and_literal_matches_itself(p in "[a-z*?\\[\\]!^-]{0,12}", t in "[a-z\\[\\]]{0,12}") {
            let _ = glob_match(&p, &t);
            let literal: String = t.chars().filter(|c| c.is_ascii_lowercase()).collect();
            proptest::prop_assert!(glob_match(&literal, &literal));
            proptest::prop_assert!(glob_match("*", &t));
        }

        #[test]
        fn parse_never_panics(s in "(cairn-modules 1 k\n)?((module|alias|x) [a-z./,-]{0,8} [a-z./,-]{0,8} [a-z,-]{0,6}( boot)?\n){0,6}") {
            let _ = ModuleIndex::parse(&s);
        }
    }
}

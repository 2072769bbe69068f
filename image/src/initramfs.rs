//! The initramfs: a file tree written as a newc cpio archive (the `cpio` crate), entries sorted
//! by path with fixed owner and timestamp, optionally gzip-compressed (`flate2`, no header
//! timestamp), so the same tree always gives the same bytes.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::Write;

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file with its content and permission bits.
    File(Vec<u8>, u32),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device (major, minor).
    CharDev(u32, u32),
}

/// A file tree keyed by absolute-looking paths without the leading `/` (`bin/cairn`).
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    fn add_parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in parts.iter().take(parts.len().saturating_sub(1)) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            self.nodes.entry(acc.clone()).or_insert(Node::Dir);
        }
    }

    /// Adds a node (and its parent directories); replaces an existing node at that path.
    pub fn add(&mut self, path: &str, node: Node) -> Result<()> {
        let path = path.trim_start_matches('/');
        if path.is_empty()
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("bad initramfs path {path:?}");
        }
        self.add_parents(path);
        self.nodes.insert(path.to_string(), node);
        Ok(())
    }

    /// Adds a file.
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<()> {
        self.add(path, Node::File(data, mode))
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Writes the newc archive with every timestamp set to `mtime`.
    pub fn to_cpio(&self, mtime: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (i, (path, node)) in self.nodes.iter().enumerate() {
            let ino = i as u32 + 1;
            let base = cpio::newc::Builder::new(path)
                .ino(ino)
                .uid(0)
                .gid(0)
                .mtime(mtime);
            let (b, data): (cpio::newc::Builder, &[u8]) = match node {
                Node::Dir => (base.mode(0o040755).nlink(2), &[]),
                Node::File(d, m) => (base.mode(0o100000 | (m & 0o7777)), d.as_slice()),
                Node::Symlink(t) => (base.mode(0o120777), t.as_bytes()),
                Node::CharDev(maj, min) => {
                    (base.mode(0o020600).rdev_major(*maj).rdev_minor(*min), &[])
                }
            };
            let size = u32::try_from(data.len()).context("initramfs file over 4 GiB")?;
            let mut w = b.write(&mut out, size);
            w.write_all(data)?;
            w.finish()?;
        }
        cpio::newc::trailer(&mut out)?;
        Ok(out)
    }
}

/// Gzip with a fixed header (no name, no timestamp) at the best compression level.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.file("init", b"#!init".to_vec(), 0o755).unwrap();
        t.file("lib/modules/6.1/kernel/a.ko", vec![1, 2, 3], 0o644)
            .unwrap();
        t.add("dev/console", Node::CharDev(5, 1)).unwrap();
        t.add("sbin/modprobe", Node::Symlink("/init".into()))
            .unwrap();
        t
    }

    #[test]
    fn archive_lists_sorted_entries_with_parents() {
        let bytes = sample().to_cpio(1234).unwrap();
        let mut names = Vec::new();
        let mut rest: &[u8] = &bytes;
        loop {
            let r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            names.push((
                r.entry().name().to_string(),
                r.entry().mtime(),
                r.entry().mode(),
            ));
            rest = r.finish().unwrap();
        }
        let just: Vec<&str> = names.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(
            just,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/a.ko",
                "sbin",
                "sbin/modprobe"
            ]
        );
        assert!(names.iter().all(|n| n.1 == 1234));
        assert_eq!(names[1].2, 0o020600);
        assert_eq!(names[9].2, 0o120777);
    }

    #[test]
    fn same_tree_same_bytes_and_gzip_round_trips() {
        let a = gzip(&sample().to_cpio(7).unwrap()).unwrap();
        let b = gzip(&sample().to_cpio(7).unwrap()).unwrap();
        assert_eq!(a, b);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&a[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, sample().to_cpio(7).unwrap());
    }

    #[test]
    fn rejects_escaping_paths() {
        let mut t = Tree::new();
        assert!(t.file("../etc/passwd", vec![], 0o644).is_err());
        assert!(t.file("a//b", vec![], 0o644).is_err());
        assert!(t.file("", vec![], 0o644).is_err());
    }
}

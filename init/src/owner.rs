//! The appliance runs as its own unprivileged user: before each start, init hands the data
//! directory to that user, except what only init may touch (its random seed).
//!
//! Ownership is walked, not trusted: a data partition written by an older Cairn (whose
//! appliance ran as root), restored from a backup or edited on another computer holds files
//! of other owners, and the appliance must be able to write every one of them. Symbolic links
//! are not followed (`lchown`), so a link planted in the data directory cannot hand over a file
//! outside it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Gives `root` and everything below it to `uid:gid`, except the top-level entries named in
/// `keep` (left as they are). Returns how many entries changed owner.
pub fn hand_over(root: &Path, uid: u32, gid: u32, keep: &[&str]) -> io::Result<u64> {
    let mut changed = 0u64;
    let mut pending = vec![root.to_path_buf()];
    let mut first = true;
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
            changed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                if first && keep.iter().any(|k| entry.file_name() == **k) {
                    continue;
                }
                pending.push(entry.path());
            }
        }
        first = false;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary directory, removed when dropped.
    struct Scratch(std::path::PathBuf);
    impl Scratch {
        fn new() -> Scratch {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p =
                std::env::temp_dir().join(format!("cairn-owner-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn owner(p: &Path) -> (u32, u32) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    #[test]
    fn everything_but_the_kept_entries_changes_hands_and_links_are_not_followed() {
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        let (uid, gid) = if root_user {
            (4321, 4322)
        } else {
            // Without root, only one's own ids can be given: the walk still has to reach
            // every entry and change none.
            owner(Path::new("/proc/self"))
        };
        let dir = Scratch::new();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("agents/files/echo")).unwrap();
        std::fs::write(data.join("cairn.redb"), b"x").unwrap();
        std::fs::write(data.join("agents/files/echo/notes"), b"x").unwrap();
        std::fs::create_dir_all(data.join(".cairn")).unwrap();
        std::fs::write(data.join(".cairn/random-seed"), b"x").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        let before_outside = owner(&outside);
        let before_seed = owner(&data.join(".cairn/random-seed"));

        let changed = hand_over(&data, uid, gid, &[".cairn"]).unwrap();
        for p in [
            "",
            "cairn.redb",
            "agents",
            "agents/files/echo",
            "agents/files/echo/notes",
            "link",
        ] {
            assert_eq!(owner(&data.join(p)), (uid, gid), "{p:?}");
        }
        assert_eq!(owner(&outside), before_outside, "a link was followed");
        assert_eq!(owner(&data.join(".cairn/random-seed")), before_seed);
        if root_user {
            // data, cairn.redb, agents, agents/files, agents/files/echo, its notes, link.
            assert_eq!(changed, 7, "every entry but the kept ones");
        }
        // A second pass finds nothing to do.
        assert_eq!(hand_over(&data, uid, gid, &[".cairn"]).unwrap(), 0);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        assert!(hand_over(Path::new("/nonexistent/cairn-data"), 1, 1, &[]).is_err());
    }
}

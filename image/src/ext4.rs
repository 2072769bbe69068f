//! The data partition's empty ext4 file system, made by `mke2fs` (e2fsprogs), the one host
//! tool the image build needs for a file system: no maintained Rust crate writes ext4.
//! Reproducible through a fixed UUID, hash seed and `E2FSPROGS_FAKE_TIME`.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

/// Creates an ext4 file system of `bytes` at `path` with the given label and UUID.
pub fn make(path: &Path, bytes: u64, label: &str, uuid: &str, epoch: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(bytes)?;
    drop(f);
    let out = Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("MKE2FS_CONFIG", "/dev/null")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-i", "16384", "-L", label, "-U", uuid])
        // meta_bg (instead of resize_inode's reserved GDT blocks) lets the kernel grow it online
        // to any size in small journal transactions: the 4 MiB journal of a 16 MiB file system
        // cannot hold the credits a resize_inode resize asks for.
        .args(["-O", "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^resize_inode,meta_bg,sparse_super,large_file,filetype,dir_index,ext_attr"])
        .args(["-E", &format!("hash_seed={uuid},lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0")])
        .args(["-m", "1"])
        .arg(path)
        .output();
    check_tool("mke2fs", out)
}

/// Turns a run of an e2fsprogs tool into a clear error when it is missing or fails.
fn check_tool(tool: &str, out: std::io::Result<std::process::Output>) -> Result<()> {
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{tool} not found: install it with `apt-get install e2fsprogs`")
        }
        Err(e) => return Err(e).with_context(|| format!("running {tool}")),
    };
    if !out.status.success() {
        bail!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates a read-only-use ext4 file system at `path` holding a copy of the tree under
/// `dir` (`mke2fs -d`, then `debugfs` to pin inode change times), sized to fit it. No journal:
/// it is only ever mounted read-only. Every inode's times are `epoch`, so the same tree gives
/// the same bytes.
pub fn make_from_dir(path: &Path, dir: &Path, label: &str, uuid: &str, epoch: u64) -> Result<()> {
    let (mut bytes, mut inodes) = (0u64, 16u64);
    // (path, is a directory)
    let mut paths = vec![("/".to_string(), true)];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let m = e.metadata()?;
            inodes += 1;
            bytes += m.len().div_ceil(4096) * 4096 + 4096;
            let rel = e.path();
            let rel = rel
                .strip_prefix(dir)
                .unwrap_or(&rel)
                .to_string_lossy()
                .into_owned();
            if rel
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c.is_control())
            {
                bail!("{rel:?}: names in the model partition may not contain spaces or quotes");
            }
            paths.push((format!("/{rel}"), m.is_dir()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    paths.sort();
    // Extent trees, bitmaps, group descriptors and inode tables: 3 % plus 8 MiB is ample.
    let size = (bytes + bytes / 32 + (8 << 20)).div_ceil(1 << 20) << 20;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)?;
    drop(f);
    let out = Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("MKE2FS_CONFIG", "/dev/null")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-L", label, "-U", uuid])
        .args(["-N", &inodes.to_string(), "-m", "0"])
        .args(["-O", "^has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,sparse_super,large_file,filetype,dir_index,ext_attr"])
        .args(["-E", &format!("hash_seed={uuid},root_owner=0:0")])
        .arg("-d")
        .arg(dir)
        .arg(path)
        .output();
    check_tool("mke2fs -d", out)?;
    // mke2fs copies each source file's times, and the host can neither set a ctime nor keep
    // reading a directory from updating its atime: pin all three with debugfs.
    let script = path.with_extension("debugfs");
    let lines: String = paths
        .iter()
        .flat_map(|(p, dir)| {
            // Readable by every user (the appliance is not root), whatever the host's umask
            // made of the staged copies: the same tree gives the same bytes.
            let mode = if *dir { "040755" } else { "0100644" };
            ["atime", "mtime", "ctime"]
                .map(|f| format!("set_inode_field {p} {f} @{epoch}\n"))
                .into_iter()
                .chain([format!("set_inode_field {p} mode {mode}\n")])
        })
        .collect();
    std::fs::write(&script, lines)?;
    let out = Command::new("debugfs")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(path)
        .output()
        .context("running debugfs (e2fsprogs)")?;
    let _ = std::fs::remove_file(&script);
    let err = String::from_utf8_lossy(&out.stderr);
    // debugfs prints its banner on stderr and keeps going after a failed command.
    if !out.status.success()
        || err
            .lines()
            .any(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
    {
        bail!("debugfs on {} failed: {}", path.display(), err.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_filesystem() {
        let dir = std::env::temp_dir().join(format!("cairn-ext4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.img"), dir.join("b.img"));
        let uuid = "6b2a4f5e-1c2d-4e8f-9a0b-112233445566";
        make(&a, 16 << 20, "cairn-data", uuid, 1_767_225_600).unwrap();
        make(&b, 16 << 20, "cairn-data", uuid, 1_767_225_600).unwrap();
        let (da, db) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(da, db);
        // Superblock magic 0xEF53 at offset 1024 + 56, label at 1024 + 120.
        assert_eq!(&da[1024 + 56..1024 + 58], &[0x53, 0xEF]);
        assert_eq!(&da[1024 + 120..1024 + 130], b"cairn-data");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn populated_filesystem_is_reproducible_and_holds_the_files() {
        let dir = std::env::temp_dir().join(format!("cairn-ext4d-{}", std::process::id()));
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("m")).unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(tree.join("m/weights.bin"), &payload).unwrap();
        // A host whose umask or download tool left the file private to its owner.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                tree.join("m/weights.bin"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        let fix = |tree: &Path| {
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600);
            let t = std::fs::FileTimes::new()
                .set_accessed(when)
                .set_modified(when);
            for p in [
                tree.join("m/weights.bin"),
                tree.join("m"),
                tree.to_path_buf(),
            ] {
                std::fs::File::open(&p).unwrap().set_times(t).unwrap();
            }
        };
        fix(&tree);
        let (a, b) = (dir.join("a.img"), dir.join("b.img"));
        let uuid = "6b2a4f5e-1c2d-4e8f-9a0b-112233445567";
        make_from_dir(&a, &tree, "models", uuid, 1_767_225_600).unwrap();
        // Reading the tree (and time passing) must not change the result once times are fixed.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let _ = std::fs::read(tree.join("m/weights.bin")).unwrap();
        fix(&tree);
        make_from_dir(&b, &tree, "models", uuid, 1_767_225_600).unwrap();
        let (da, db) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(da, db);
        // The payload is stored contiguously somewhere in the image.
        assert!(da.windows(4096).any(|w| w == &payload[..4096]));
        // Every user can read it (the appliance does not run as root).
        let stat = Command::new("debugfs")
            .args(["-R", "stat /m/weights.bin"])
            .arg(&a)
            .output()
            .unwrap();
        let stat = String::from_utf8_lossy(&stat.stdout);
        assert!(stat.contains("Mode:  0644"), "{stat}");
        // Without a journal (compat feature bit 0x4 clear).
        let compat = u32::from_le_bytes(da[1024 + 92..1024 + 96].try_into().unwrap());
        assert_eq!(compat & 0x4, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

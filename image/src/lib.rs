//! cairn-image: builds Cairn's bootable artifacts for one architecture.
//!
//! Outputs in `target/cairn/<arch>/`: `cairn.img` (GPT: FAT32 ESP with the UKI at the
//! removable-media path, read-only ext4 model partition when models are baked in, ext4 data
//! partition), `vmlinuz`, `initramfs`, `cmdline` for direct
//! boot, and `manifest.json` listing every component with its version and sha256.
//!
//! Which crate builds which piece: cpio → `cpio`; gzip → `flate2`; FAT32 → `fatfs`; GPT →
//! `cairn_init::gpt` (shared with the first-boot grower); UKI → `uki` (hand-written PE
//! section appender); ext4 → host `mke2fs` (and `debugfs` to pin the model partition's inode
//! times); packages → host `apt-get` and `dpkg-deb`.

pub mod deb;
pub mod disk;
pub mod esp;
pub mod ext4;
pub mod initramfs;
pub mod modules;
pub mod target;
pub mod uki;

use anyhow::{Context, Result, bail};
use initramfs::{Node, Tree};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
pub use target::{Arch, Target};

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Architecture.
    pub arch: Arch,
    /// Its target description.
    pub target: Target,
    /// Static cairn-init binary.
    pub init_bin: PathBuf,
    /// Static cairn binary.
    pub cairn_bin: PathBuf,
    /// A kernel package to use instead of resolving `target.kernel_package`.
    pub kernel_deb: Option<PathBuf>,
    /// Timestamp for every file (SOURCE_DATE_EPOCH).
    pub source_date_epoch: u64,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Size of the data partition in the image, MiB (it grows on first boot).
    pub data_mib: u64,
    /// Cairn version.
    pub version: String,
    /// Rebuild even when the inputs are unchanged.
    pub force: bool,
    /// Models baked into the read-only model partition (none: no such partition).
    pub models: Vec<ModelInput>,
}

/// One model to bake into the image: its catalog id and verified files.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModelInput {
    /// Catalog id (the folder name under `/models`).
    pub id: String,
    /// Files (stored under their file names).
    pub files: Vec<ModelFile>,
}

/// One file of a baked model.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModelFile {
    /// Where it is on the build host.
    pub path: PathBuf,
    /// Its sha256, already verified against the catalog.
    pub sha256: String,
}

/// Paths of the outputs.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// GPT disk image.
    pub image: PathBuf,
    /// Kernel for direct boot.
    pub vmlinuz: PathBuf,
    /// Initramfs for direct boot.
    pub initramfs: PathBuf,
    /// Kernel command line for direct boot.
    pub cmdline: PathBuf,
    /// The manifest.
    pub manifest: PathBuf,
    /// The UKI (also inside the image).
    pub uki: PathBuf,
    /// False when the existing outputs were up to date and kept.
    pub rebuilt: bool,
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[derive(Serialize)]
struct FileEntry {
    name: String,
    path: String,
    size: u64,
    sha256: String,
}

#[derive(Serialize)]
struct PackageEntry {
    package: String,
    version: String,
    arch: String,
    sha256: String,
}

impl From<&deb::Package> for PackageEntry {
    fn from(p: &deb::Package) -> Self {
        PackageEntry {
            package: p.name.clone(),
            version: p.version.clone(),
            arch: p.arch.clone(),
            sha256: p.sha256.clone(),
        }
    }
}

#[derive(Serialize)]
struct Manifest {
    cairn_version: String,
    arch: String,
    source_date_epoch: u64,
    cmdline: String,
    kernel: PackageEntry,
    kernel_release: String,
    stub: PackageEntry,
    binaries: Vec<FileEntry>,
    modules: Vec<FileEntry>,
    builtin_modules_requested: Vec<String>,
    firmware: Vec<FileEntry>,
    models: Vec<FileEntry>,
    partitions: Vec<disk::Placed>,
    artifacts: Vec<FileEntry>,
    host_tools: Vec<String>,
}

fn file_entry(name: &str, path: &str, data: &[u8]) -> FileEntry {
    FileEntry {
        name: name.into(),
        path: path.into(),
        size: data.len() as u64,
        sha256: sha256(data),
    }
}

fn find_vmlinuz(root: &Path) -> Result<(PathBuf, String)> {
    let boot = root.join("boot");
    for e in std::fs::read_dir(&boot).with_context(|| format!("{} has no boot/", root.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rel) = name.strip_prefix("vmlinuz-") {
            return Ok((e.path(), rel.to_string()));
        }
    }
    bail!("no vmlinuz in {}", boot.display())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Builds every artifact for one architecture.
pub fn build(inputs: &Inputs) -> Result<Outputs> {
    let t = &inputs.target;
    let epoch = inputs.source_date_epoch;
    std::fs::create_dir_all(&inputs.out_dir)?;

    // Kernel and modules.
    let kernel_pkg = match &inputs.kernel_deb {
        Some(p) => deb::from_file(p)?,
        None => {
            let name = deb::resolve_kernel(&t.kernel_package, &t.debian_arch)?;
            deb::download(&name, &t.debian_arch)?
        }
    };
    if kernel_pkg.arch != t.debian_arch {
        bail!(
            "kernel package {} is for {}, not {}",
            kernel_pkg.path.display(),
            kernel_pkg.arch,
            t.debian_arch
        );
    }
    let kroot = deb::extract(&kernel_pkg)?;
    let (vmlinuz_path, release) = find_vmlinuz(&kroot)?;
    let vmlinuz = std::fs::read(&vmlinuz_path)?;
    let tree = modules::ModuleTree::open(&kroot.join("lib/modules").join(&release))?;
    let selection = modules::select(&tree, &t.modules.drivers, &t.modules.boot)?;

    // UKI stub.
    let stub_pkg = deb::download(&t.stub_package, &t.debian_arch)?;
    let stub_root = deb::extract(&stub_pkg)?;
    let stub = std::fs::read(stub_root.join(&t.stub_path))
        .with_context(|| format!("{} lacks {}", stub_pkg.name, t.stub_path))?;

    let init = std::fs::read(&inputs.init_bin)
        .with_context(|| format!("reading {}", inputs.init_bin.display()))?;
    let cairn = std::fs::read(&inputs.cairn_bin)
        .with_context(|| format!("reading {}", inputs.cairn_bin.display()))?;
    let out = |n: &str| inputs.out_dir.join(n);
    let outputs = |rebuilt| Outputs {
        image: out("cairn.img"),
        vmlinuz: out("vmlinuz"),
        initramfs: out("initramfs"),
        cmdline: out("cmdline"),
        manifest: out("manifest.json"),
        uki: out("cairn.efi"),
        rebuilt,
    };

    // Everything the bytes depend on; unchanged inputs keep the existing outputs.
    let recorded = serde_json::json!({
        "builder": env!("CARGO_PKG_VERSION"),
        "version": inputs.version,
        "arch": inputs.arch.name(),
        "source_date_epoch": epoch,
        "data_mib": inputs.data_mib,
        "init_bin": inputs.init_bin,
        "init_sha256": sha256(&init),
        "cairn_bin": inputs.cairn_bin,
        "cairn_sha256": sha256(&cairn),
        "kernel_deb": kernel_pkg.path,
        "kernel_sha256": kernel_pkg.sha256,
        "stub_sha256": stub_pkg.sha256,
        "target": t,
        "example_config": sha256(include_str!("../cairn.toml.example").as_bytes()),
        "models": inputs.models,
    });
    let recorded_text = serde_json::to_vec_pretty(&recorded)?;
    let stamp = out("build-inputs.json");
    let up_to_date = !inputs.force
        && std::fs::read(&stamp).is_ok_and(|old| old == recorded_text)
        && [
            "cairn.img",
            "vmlinuz",
            "initramfs",
            "cmdline",
            "manifest.json",
            "cairn.efi",
        ]
        .iter()
        .all(|n| out(n).exists());
    if up_to_date {
        return Ok(outputs(false));
    }
    let _ = std::fs::remove_file(&stamp);

    // Initramfs.
    let mut fs = Tree::new();
    fs.file("init", init.clone(), 0o755)?;
    fs.file("bin/cairn", cairn.clone(), 0o755)?;
    fs.add(
        cairn_init::layout::MODPROBE_HELPER,
        Node::Symlink("/init".into()),
    )?;
    fs.add("dev/console", Node::CharDev(5, 1))?;
    fs.add("dev/null", Node::CharDev(1, 3))?;
    for d in [
        "proc",
        "sys",
        "run",
        "tmp",
        "data",
        "boot",
        "models",
        "etc/cairn",
    ] {
        fs.add(d, Node::Dir)?;
    }
    let osrel = uki::os_release(&inputs.version, inputs.arch.name());
    fs.file("etc/os-release", osrel.clone().into_bytes(), 0o644)?;
    fs.file(
        "etc/hosts",
        b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
        0o644,
    )?;
    fs.add(
        "etc/resolv.conf",
        Node::Symlink("/run/cairn/resolv.conf".into()),
    )?;
    let build_info = serde_json::json!({
        "version": inputs.version,
        "arch": inputs.arch.name(),
        "kernel": release,
        "source_date_epoch": epoch,
    });
    fs.file(
        "etc/cairn/build.json",
        serde_json::to_vec_pretty(&build_info)?,
        0o644,
    )?;
    let mod_base = format!("lib/modules/{release}");
    let mut module_entries = Vec::new();
    for m in &selection.index.modules {
        let data = std::fs::read(tree.root.join(&m.path))?;
        module_entries.push(file_entry(
            &m.name,
            &format!("/{mod_base}/{}", m.path),
            &data,
        ));
        fs.file(&format!("{mod_base}/{}", m.path), data, 0o644)?;
    }
    fs.file(
        &format!("{mod_base}/{}", cairn_init::modindex::FILE_NAME),
        selection.index.render().into_bytes(),
        0o644,
    )?;
    let cpio = fs.to_cpio(epoch.min(u32::MAX as u64) as u32)?;
    let initrd = initramfs::gzip(&cpio)?;

    // UKI and ESP.
    let uname = release.clone();
    let uki_bytes = uki::add_sections(
        &stub,
        &[
            (".osrel", osrel.as_bytes()),
            (".cmdline", t.cmdline.as_bytes()),
            (".uname", uname.as_bytes()),
            (".linux", &vmlinuz),
            (".initrd", &initrd),
        ],
    )?;
    let example = include_str!("../cairn.toml.example");
    let digest = Sha256::digest(&uki_bytes);
    let volume_id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let esp_img = esp::build(
        &[
            (t.efi_boot_path.as_str(), &uki_bytes),
            ("cairn.toml.example", example.as_bytes()),
        ],
        volume_id,
        epoch,
    )?;

    // Data partition.
    let data_tmp = inputs.out_dir.join("data.ext4.tmp");
    let data_uuid = disk::derived_guid("cairn-data-fs", &[&digest])
        .to_string()
        .to_lowercase();
    ext4::make(
        &data_tmp,
        inputs.data_mib << 20,
        cairn_init::layout::DATA_FS_LABEL,
        &data_uuid,
        epoch,
    )?;

    // Model partition.
    let models_tmp = inputs.out_dir.join("models.ext4.tmp");
    let model_entries = if inputs.models.is_empty() {
        Vec::new()
    } else {
        let uuid = disk::derived_guid("cairn-models-fs", &[&digest])
            .to_string()
            .to_lowercase();
        stage_models(
            &inputs.models,
            &inputs.out_dir.join("models.stage"),
            epoch,
            |stage| ext4::make_from_dir(&models_tmp, stage, "cairn-models", &uuid, epoch),
        )?
    };

    // Disk.
    let image = inputs.out_dir.join("cairn.img");
    let models_part = (!inputs.models.is_empty()).then_some(models_tmp.as_path());
    let placed = disk::assemble(&image, &esp_img, models_part, &data_tmp, &digest)?;
    std::fs::remove_file(&data_tmp)?;
    if models_part.is_some() {
        std::fs::remove_file(&models_tmp)?;
    }

    // Direct-boot files and manifest.
    write_atomic(&out("vmlinuz"), &vmlinuz)?;
    write_atomic(&out("initramfs"), &initrd)?;
    write_atomic(&out("cmdline"), format!("{}\n", t.cmdline).as_bytes())?;
    write_atomic(&out("cairn.efi"), &uki_bytes)?;
    let image_sha = deb::sha256_file(&image)?;
    let manifest = Manifest {
        cairn_version: inputs.version.clone(),
        arch: inputs.arch.name().into(),
        source_date_epoch: epoch,
        cmdline: t.cmdline.clone(),
        kernel: (&kernel_pkg).into(),
        kernel_release: release.clone(),
        stub: (&stub_pkg).into(),
        binaries: vec![
            file_entry("cairn-init", "/init", &init),
            file_entry("cairn", "/bin/cairn", &cairn),
        ],
        modules: module_entries,
        builtin_modules_requested: selection.builtin.clone(),
        firmware: Vec::new(),
        models: model_entries,
        partitions: placed,
        artifacts: vec![
            FileEntry {
                name: "cairn.img".into(),
                path: "cairn.img".into(),
                size: std::fs::metadata(&image)?.len(),
                sha256: image_sha,
            },
            file_entry("uki", "cairn.efi", &uki_bytes),
            file_entry("vmlinuz", "vmlinuz", &vmlinuz),
            file_entry("initramfs", "initramfs", &initrd),
        ],
        host_tools: vec![
            "apt-get".into(),
            "dpkg-deb".into(),
            "mke2fs".into(),
            "debugfs".into(),
        ],
    };
    write_atomic(
        &out("manifest.json"),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    write_atomic(&stamp, &recorded_text)?;
    let _ = image;
    Ok(outputs(true))
}

/// Sets a staged path's access and modification times (mke2fs copies both into the inode).
fn set_times(p: &Path, when: std::time::SystemTime) -> Result<()> {
    let times = std::fs::FileTimes::new()
        .set_accessed(when)
        .set_modified(when);
    std::fs::File::open(p)?
        .set_times(times)
        .with_context(|| format!("setting the times of {}", p.display()))
}

/// Copies the models into `stage/<id>/<file>` with access and modification times set to
/// `epoch` (mke2fs copies them into the inodes), runs `make` on it, and removes it. Returns the manifest entries.
fn stage_models(
    models: &[ModelInput],
    stage: &Path,
    epoch: u64,
    make: impl FnOnce(&Path) -> Result<()>,
) -> Result<Vec<FileEntry>> {
    let _ = std::fs::remove_dir_all(stage);
    std::fs::create_dir_all(stage)?;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let mut entries = Vec::new();
    let mut sorted: Vec<&ModelInput> = models.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut dirs = vec![stage.to_path_buf()];
    for m in sorted {
        if m.id.is_empty() || m.id.contains(['/', '\\']) || m.id.starts_with('.') {
            bail!("model id {:?} is not a plain folder name", m.id);
        }
        let dir = stage.join(&m.id);
        std::fs::create_dir(&dir)
            .with_context(|| format!("model {} is listed twice or cannot be staged", m.id))?;
        let mut files: Vec<&ModelFile> = m.files.iter().collect();
        files.sort_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
        for f in files {
            let name = f
                .path
                .file_name()
                .with_context(|| format!("{} has no file name", f.path.display()))?;
            let dst = dir.join(name);
            std::fs::copy(&f.path, &dst)
                .with_context(|| format!("copying {}", f.path.display()))?;
            set_times(&dst, when)?;
            entries.push(FileEntry {
                name: format!("{}/{}", m.id, name.to_string_lossy()),
                path: format!(
                    "{}/{}/{}",
                    cairn_init::layout::MODELS_MOUNT,
                    m.id,
                    name.to_string_lossy()
                ),
                size: std::fs::metadata(&dst)?.len(),
                sha256: f.sha256.clone(),
            });
        }
        dirs.push(dir);
    }
    for d in dirs.iter().rev() {
        set_times(d, when)?;
    }
    let made = make(stage);
    let _ = std::fs::remove_dir_all(stage);
    made?;
    Ok(entries)
}

/// Reads the inputs recorded by the last build in `out_dir` (`build-inputs.json`).
pub fn recorded_inputs(out_dir: &Path) -> Result<serde_json::Value> {
    let p = out_dir.join("build-inputs.json");
    let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

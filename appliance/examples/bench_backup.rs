//! Backup and restore cost, the backup part of `cargo xtask bench update`:
//! `cargo run --release -p cairn --example bench_backup -- [--records N] [--runs R]`.
//!
//! Fills a data directory with `N` memory records (text and a 384-dimension embedding each,
//! imported as JSON Lines), then per run measures, with the same scrypt work factor on both
//! sides:
//! - ours, on the open store: `backup::create` (a one-transaction snapshot of every table, then
//!   the encrypted archive), and a restore onto an empty directory (`backup::stage`, which
//!   decrypts and checks everything, `apply_staged`, then opening the store and memory as a
//!   start does);
//! - the peer, what `tar -c DATA | age -p` and back does: the store closed first (a copy of a
//!   live database file is not a backup), the data directory's files in a tar stream encrypted
//!   by the same age code, and back into an empty directory, opened the same way.
//!
//! Prints one JSON object: medians in seconds and the archives' sizes in bytes.

use cairn::backup::{Source, apply_staged, create, stage};
use cairn::memory::{Access, Memory};
use cairn::store::Store;
use serde_json::json;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

const PASSPHRASE: &str = "benchmark passphrase";
const DIMS: usize = 384;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A deterministic pseudo-random unit vector.
fn vector(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..DIMS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

fn fill(data: &Path, records: usize) -> Result<(), String> {
    let store = Store::open(data).map_err(|e| e.to_string())?;
    let m =
        Memory::open_database(store.database(), store.path(), None).map_err(|e| e.to_string())?;
    let words = [
        "valve",
        "pump",
        "pressure",
        "north",
        "station",
        "filter",
        "replaced",
        "inspection",
        "quartz",
        "supplier",
        "night",
        "shift",
        "alarm",
        "sensor",
        "flow",
        "manual",
    ];
    let mut at = 0;
    while at < records {
        let n = (records - at).min(50_000);
        let mut body = String::new();
        for i in at..at + n {
            let text: Vec<&str> = (0..24)
                .map(|k| words[(i * 7 + k * 3) % words.len()])
                .collect();
            let line = json!({"tier": "semantic", "namespace": "shared",
                "text": format!("record {i}: {}", text.join(" ")), "embedding": vector(i as u64)});
            body.push_str(&line.to_string());
            body.push('\n');
        }
        let r = m
            .import(&Access::admin(), &body)
            .map_err(|e| e.to_string())?;
        if r.imported != n {
            return Err(format!(
                "imported {} of {n}: {:?}",
                r.imported,
                r.rejected.first()
            ));
        }
        at += n;
    }
    m.flush().map_err(|e| e.to_string())?;
    Ok(())
}

/// Opens the store and memory as a start does (the restore is only done when this works).
fn open(data: &Path) -> Result<(), String> {
    let store = Store::open(data).map_err(|e| e.to_string())?;
    Memory::open_database(store.database(), store.path(), None).map_err(|e| e.to_string())?;
    Ok(())
}

/// The peer's backup: every file of `data` (closed) in a tar stream through age.
fn peer_backup(data: &Path, out: &Path) -> Result<(), String> {
    let mut r =
        age::scrypt::Recipient::new(age::secrecy::SecretString::from(PASSPHRASE.to_string()));
    r.set_work_factor(cairn::backup::WORK_FACTOR);
    let enc =
        age::Encryptor::with_recipients(std::iter::once(&r as _)).map_err(|e| e.to_string())?;
    let file = std::fs::File::create(out).map_err(|e| e.to_string())?;
    let w = enc
        .wrap_output(BufWriter::new(file))
        .map_err(|e| e.to_string())?;
    let mut tar = tar::Builder::new(w);
    tar.append_dir_all(".", data).map_err(|e| e.to_string())?;
    let w = tar.into_inner().map_err(|e| e.to_string())?;
    w.finish()
        .and_then(|mut f| f.flush())
        .map_err(|e| e.to_string())
}

fn peer_restore(file: &Path, into: &Path) -> Result<(), String> {
    let f = BufReader::new(std::fs::File::open(file).map_err(|e| e.to_string())?);
    let d = age::Decryptor::new(f).map_err(|e| e.to_string())?;
    let id = age::scrypt::Identity::new(age::secrecy::SecretString::from(PASSPHRASE.to_string()));
    let plain = d
        .decrypt(std::iter::once(&id as _))
        .map_err(|e| e.to_string())?;
    tar::Archive::new(plain)
        .unpack(into)
        .map_err(|e| e.to_string())?;
    for f in std::fs::read_dir(into).map_err(|e| e.to_string())? {
        let f = f.map_err(|e| e.to_string())?;
        if f.path().is_file() {
            std::fs::File::open(f.path())
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let (mut records, mut runs) = (10_000usize, 3usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--records" => records = v.parse().map_err(|e| format!("--records: {e}"))?,
            "--runs" => runs = v.parse().map_err(|e| format!("--runs: {e}"))?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let t = Instant::now();
    fill(&data, records)?;
    eprintln!(
        "bench_backup: {records} records in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let data_bytes: u64 = std::fs::read_dir(&data)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let (mut backup, mut restore, mut peer_b, mut peer_r) = (vec![], vec![], vec![], vec![]);
    let (mut size, mut peer_size) = (0u64, 0u64);
    for run in 0..runs {
        let archive = dir.path().join(format!("ours-{run}.tar.age"));
        {
            let store = Store::open(&data).map_err(|e| e.to_string())?;
            let _memory = Memory::open_database(store.database(), store.path(), None)
                .map_err(|e| e.to_string())?;
            let work = dir.path().join(format!("work-{run}"));
            std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
            let t = Instant::now();
            let out = BufWriter::new(std::fs::File::create(&archive).map_err(|e| e.to_string())?);
            let src = Source {
                db: &store.database(),
                data_dir: data.clone(),
                tls: false,
                hostname: "bench".into(),
            };
            create(&src, PASSPHRASE, &work, out).map_err(|e| e.to_string())?;
            std::fs::File::open(&archive)
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())?;
            backup.push(t.elapsed().as_secs_f64());
            size = std::fs::metadata(&archive)
                .map_err(|e| e.to_string())?
                .len();
        }
        let fresh = dir.path().join(format!("restored-{run}"));
        std::fs::create_dir_all(&fresh).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let f = BufReader::new(std::fs::File::open(&archive).map_err(|e| e.to_string())?);
        stage(&fresh, f, PASSPHRASE).map_err(|e| e.to_string())?;
        apply_staged(&fresh).map_err(|e| e.to_string())?;
        open(&fresh)?;
        restore.push(t.elapsed().as_secs_f64());

        let peer_file = dir.path().join(format!("peer-{run}.tar.age"));
        let t = Instant::now();
        peer_backup(&data, &peer_file)?;
        peer_b.push(t.elapsed().as_secs_f64());
        peer_size = std::fs::metadata(&peer_file)
            .map_err(|e| e.to_string())?
            .len();
        let peer_fresh = dir.path().join(format!("peer-restored-{run}"));
        std::fs::create_dir_all(&peer_fresh).map_err(|e| e.to_string())?;
        let t = Instant::now();
        peer_restore(&peer_file, &peer_fresh)?;
        open(&peer_fresh)?;
        peer_r.push(t.elapsed().as_secs_f64());
        for p in [&archive, &peer_file] {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&fresh);
        let _ = std::fs::remove_dir_all(&peer_fresh);
    }
    println!(
        "{}",
        json!({
            "records": records, "runs": runs, "data_bytes": data_bytes,
            "backup_s": median(backup), "restore_s": median(restore), "backup_bytes": size,
            "peer_backup_s": median(peer_b), "peer_restore_s": median(peer_r),
            "peer_backup_bytes": peer_size,
        })
    );
    Ok(())
}

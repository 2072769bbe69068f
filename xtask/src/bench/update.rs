//! `cargo xtask bench update`: what keeping a box for years costs. Today: whole-box backup and
//! restore per 10,000 memory records (`bench_backup` example), next to the plain way of saving
//! a data directory, `tar` of the stopped directory through `age` with the same scrypt cost:
//! backup time (ours runs on the open store, the peer needs the service stopped), restore time
//! to an opened store, and archive size. The A/B update figures of the issue (bundle size next
//! to the image, apply time, downtime next to a plain reboot) come with A/B updates and are
//! listed under `not_measured` until then.

use super::inference::{cores, cpu_model};
use anyhow::Result;
use serde_json::{Value, json};

/// Runs the backup measurements at `records` memory records, `runs` times each; the report.
pub fn run(records: usize, runs: usize) -> Result<Value> {
    eprintln!("bench update: backup and restore of {records} memory records, {runs} runs");
    let m = super::agents::run_example(
        "cairn",
        "bench_backup",
        &[
            "--records".as_ref(),
            records.to_string().as_ref(),
            "--runs".as_ref(),
            runs.to_string().as_ref(),
        ],
    )?;
    let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    let per = 10_000.0 / records as f64;
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let peer = "tar of the stopped data directory through age (same scrypt cost)";
    let figures = vec![
        json!({"name": "backup_time_per_10k_records", "unit": "s", "value": r3(f("backup_s") * per),
               "peer": peer, "peer_value": r3(f("peer_backup_s") * per),
               "ratio": r3(f("backup_s") / f("peer_backup_s")), "better": "lower",
               "note": "ours on the running store (one-transaction snapshot); the peer needs the service stopped"}),
        json!({"name": "restore_time_per_10k_records", "unit": "s", "value": r3(f("restore_s") * per),
               "peer": peer, "peer_value": r3(f("peer_restore_s") * per),
               "ratio": r3(f("restore_s") / f("peer_restore_s")), "better": "lower",
               "note": "decrypt, check every file and the database, swap in, open store and memory"}),
        json!({"name": "backup_size_per_10k_records", "unit": "MiB", "value": r3(mib(f("backup_bytes")) * per),
               "peer": peer, "peer_value": r3(mib(f("peer_backup_bytes")) * per),
               "ratio": r3(f("backup_bytes") / f("peer_backup_bytes")), "better": "lower"}),
    ];
    Ok(json!({
        "area": "update",
        "peer": peer,
        "machine": {"cpu": cpu_model(), "cores": cores()},
        "runs": runs,
        "records": records,
        "figures": figures,
        "not_measured": {
            "figures": ["bundle_size_vs_image", "apply_time", "downtime_vs_reboot"],
            "why": "signed A/B updates are not implemented yet (issue Field lifecycle, open)",
        },
        "raw": m,
    }))
}

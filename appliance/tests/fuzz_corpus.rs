//! The fuzz targets of `fuzz/` replayed on their committed corpora, in the normal test build:
//! the same target code (`fuzz/src/<target>.rs`, which the cargo-fuzz binaries call) runs on
//! every file of `fuzz/corpus/<target>/`, so a seed that crashes a target fails `cargo xtask
//! test` without the instrumented fuzz build (long runs: `cargo xtask fuzz`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

#[path = "../../fuzz/src/agent_package.rs"]
mod agent_package;
#[path = "../../fuzz/src/backup_archive.rs"]
mod backup_archive;
#[path = "../../fuzz/src/config.rs"]
mod config;
#[path = "../../fuzz/src/gguf.rs"]
mod gguf;
#[path = "../../fuzz/src/gpt.rs"]
mod gpt;
#[path = "../../fuzz/src/http_api.rs"]
mod http_api;
#[path = "../../fuzz/src/kernel_cmdline.rs"]
mod kernel_cmdline;
#[path = "../../fuzz/src/memory_import.rs"]
mod memory_import;
#[path = "../../fuzz/src/memory_journal.rs"]
mod memory_journal;
#[path = "../../fuzz/src/models_catalog.rs"]
mod models_catalog;
#[path = "../../fuzz/src/module_index.rs"]
mod module_index;
#[path = "../../fuzz/src/provider_answer.rs"]
mod provider_answer;
#[path = "../../fuzz/src/workflow.rs"]
mod workflow;

/// Runs `run` on every file of `fuzz/corpus/<target>/`, in name order; fails on an empty or
/// missing corpus (a replay of nothing checks nothing) and names the file that panicked.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus {} has no inputs: the target would be checked on nothing",
        dir.display()
    );
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            panic!(
                "fuzz target {target} panicked on {} (the panic is printed above; reproduce: \
                 cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {target} corpus/{target}/{})",
                file.display(),
                file.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
}

#[test]
fn agent_package_corpus() {
    replay("agent_package", agent_package::run);
}

#[test]
fn backup_archive_corpus() {
    replay("backup_archive", backup_archive::run);
}

#[test]
fn config_corpus() {
    replay("config", config::run);
}

#[test]
fn gguf_corpus() {
    replay("gguf", gguf::run);
}

#[test]
fn gpt_corpus() {
    replay("gpt", gpt::run);
}

#[test]
fn http_api_corpus() {
    replay("http_api", http_api::run);
}

#[test]
fn kernel_cmdline_corpus() {
    replay("kernel_cmdline", kernel_cmdline::run);
}

#[test]
fn memory_import_corpus() {
    replay("memory_import", memory_import::run);
}

#[test]
fn memory_journal_corpus() {
    replay("memory_journal", memory_journal::run);
}

#[test]
fn models_catalog_corpus() {
    replay("models_catalog", models_catalog::run);
}

#[test]
fn module_index_corpus() {
    replay("module_index", module_index::run);
}

#[test]
fn provider_answer_corpus() {
    replay("provider_answer", provider_answer::run);
}

#[test]
fn workflow_corpus() {
    replay("workflow", workflow::run);
}

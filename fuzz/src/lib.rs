//! The fuzz targets' code, one module per target, each with `pub fn run(data: &[u8])`.
//!
//! `fuzz_targets/<target>.rs` hands libFuzzer's input to `run`; the appliance's test
//! `appliance/tests/fuzz_corpus.rs` includes the same modules and replays the committed
//! corpora through them, so `cargo xtask test` runs every target on its corpus without an
//! instrumented build.
pub mod agent_package;
pub mod backup_archive;
pub mod config;
pub mod gguf;
pub mod gpt;
pub mod http_api;
pub mod kernel_cmdline;
pub mod memory_import;
pub mod memory_journal;
pub mod models_catalog;
pub mod module_index;
pub mod provider_answer;
pub mod workflow;

//! The end-to-end tests: the real images booted in QEMU and driven as a user would
//! (`cargo xtask test` builds the images and runs them with `--ignored`).
//!
//! One test binary, so `--test-threads` schedules every boot of both architectures together:
//! separate binaries run one after the other, each waiting for its slowest test.

#[path = "../../../agents/tests/common/mod.rs"]
mod common;

mod boot;
mod console;
mod lifecycle;
mod memory;
mod reproducible;

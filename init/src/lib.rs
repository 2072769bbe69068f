//! cairn-init: PID 1 of the Cairn appliance.
//!
//! It only manages the machine: mounts, kernel modules, disks, network, clock, entropy, the
//! appliance process and power. The library exposes the boot contract the image builder and
//! the appliance share (`layout`, `gpt`, `modindex`, `bootinfo`), plus the host-testable parts
//! of init itself. The written promises this crate keeps are in `docs/init.md`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod bootinfo;
pub mod bytes;
pub mod cmdline;
pub mod config;
pub mod gpt;
pub mod layout;
pub mod modindex;

#[cfg(target_os = "linux")]
pub mod banner;
#[cfg(target_os = "linux")]
pub mod boot;
#[cfg(target_os = "linux")]
pub mod clock;
#[cfg(target_os = "linux")]
pub mod coldplug;
#[cfg(target_os = "linux")]
pub mod console;
#[cfg(target_os = "linux")]
pub mod disk;
#[cfg(target_os = "linux")]
pub mod entropy;
#[cfg(target_os = "linux")]
pub mod net;
#[cfg(target_os = "linux")]
pub mod owner;
#[cfg(target_os = "linux")]
pub mod power;
#[cfg(target_os = "linux")]
pub mod supervise;
#[cfg(target_os = "linux")]
pub mod sys;

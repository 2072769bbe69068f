//! Cairn, the agent operating system: the appliance process.
//!
//! It runs as the single service of the bootable image (started and supervised by
//! cairn-init) or hosted on a normal Linux machine with `cairn serve --data DIR`. This crate
//! holds the HTTPS API, the persistent store and the TLS identity; later components (agent
//! runtime, model router, memory, console) join it as modules.

pub mod agents;
pub mod api;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod conn;
pub mod console;
pub mod control;
pub mod events;
pub mod inference;
pub mod logbuf;
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod remote;
pub mod router;
pub mod sandbox;
pub mod serve;
pub mod store;
pub mod sysinfo;
pub mod text;
pub mod tls;

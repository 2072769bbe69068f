//! Cairn's agent runtime: signed WebAssembly component agents (`wit/agent.wit`) run under
//! wasmtime with explicit capabilities, fuel, epoch preemption and memory limits, managed
//! through install / start / stop / pause / resume / checkpoint / kill, supervised and
//! scheduled. See `docs/agents.md`.

pub mod db;
pub mod egress;
pub mod engine;
mod files;
pub mod host;
pub mod manifest;
pub mod package;
pub mod runtime;
pub mod services;
pub mod workflow;

pub use runtime::{AgentError, Runtime, RuntimeConfig, StartOptions};
pub use workflow::{Workflow, WorkflowRun};

//! The wasmtime engine: pooling allocator, fuel, epoch interruption, async host calls, and a
//! cache of precompiled components keyed by the engine's configuration.

use crate::manifest::MAX_MEMORY_MB;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; a running guest yields to other tasks at each tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the engine. `max_instances` sizes the pool: component instances that may exist at
/// once (idle agents included). An async store keeps its fiber stack while it lives, so the
/// pool holds a stack per instance, not per running task.
pub fn build(max_instances: u32, max_running: u32) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances.saturating_mul(4))
        .total_memories(max_instances.saturating_mul(2))
        .total_tables(max_instances.saturating_mul(4))
        .total_stacks(max_instances.max(max_running))
        .max_memory_size((MAX_MEMORY_MB as usize) << 20)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .table_elements(10_000);
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        .wasm_component_model(true)
        // Explicit bounds checks within a 256 MiB reservation keep 10,000 idle agents
        // within the address space; memory grows in place up to the agent's limit.
        .memory_reservation((MAX_MEMORY_MB as u64) << 20)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0)
        .max_wasm_stack(512 << 10)
        .async_stack_size(1 << 20)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config)?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("agent-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map_err(|e| wasmtime::Error::msg(format!("epoch thread: {e}")))?;
    Ok(engine)
}

/// A precompiled-component cache in a directory.
pub struct Cache {
    dir: PathBuf,
    tag: String,
}

impl Cache {
    /// A cache for `engine` in `dir`.
    pub fn new(engine: &Engine, dir: &Path) -> Cache {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Cache {
            dir: dir.to_path_buf(),
            tag: format!("{:016x}", h.finish()),
        }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.tag))
    }

    /// The component from the cache, or compiled (and then cached).
    pub fn load(&self, engine: &Engine, sha256: &str, wasm: &[u8]) -> wasmtime::Result<Component> {
        let path = self.path(sha256);
        if let Ok(bytes) = std::fs::read(&path)
            && bytes.len() > 32
        {
            let (body, sum) = bytes.split_at(bytes.len() - 32);
            if Sha256::digest(body).as_slice() == sum {
                // SAFETY: `body` was produced by `Component::serialize` of an engine with the
                // same compatibility hash (it is in the file name), written by this cache
                // into the appliance's own data directory, and its SHA-256 trailer matches,
                // so it is not truncated or corrupted.
                if let Ok(c) = unsafe { Component::deserialize(engine, body) } {
                    return Ok(c);
                }
            }
            tracing::warn!(path = %path.display(), "discarding a damaged component cache entry");
        }
        let component = Component::new(engine, wasm)?;
        if let Ok(mut bytes) = component.serialize() {
            let sum = Sha256::digest(&bytes);
            bytes.extend_from_slice(&sum);
            let tmp = path.with_extension("tmp");
            let written = std::fs::create_dir_all(&self.dir)
                .and_then(|_| std::fs::write(&tmp, &bytes))
                .and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not cache a compiled component");
            }
        }
        Ok(component)
    }

    /// Removes entries of other components or other engine configurations.
    pub fn prune(&self, keep: &[String]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let wanted = keep
                .iter()
                .any(|sha| name == format!("{sha}-{}.cwasm", self.tag));
            if !wanted {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

//! Run-time CPU feature detection and selection of the kernel level.
//!
//! The best level the CPU supports is detected once. It can be overridden for the whole
//! process with the environment variable `CAIRN_CPU` (`portable`, `avx2`, `avxvnni`, `avx512`,
//! `avx512vnni`, `neon`, `dotprod`, `i8mm`) or [`force_level`], and for the calling thread
//! with [`with_level`] (what the tests use). A level the CPU lacks is never selected, so no
//! kernel can raise SIGILL. Kernel entry points read [`level`] once on the calling thread and
//! pass it to their worker tasks.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use super::KernelError;

/// An instruction-set level a kernel can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Portable scalar code; runs on any CPU.
    Portable = 0,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2 = 1,
    /// x86-64 AVX2 plus AVX-VNNI (256-bit `vpdpbusd`).
    AvxVnni = 2,
    /// x86-64 AVX-512 F/BW/VL (plus AVX2, FMA, F16C).
    Avx512 = 3,
    /// x86-64 AVX-512 with VNNI.
    Avx512Vnni = 4,
    /// aarch64 Advanced SIMD.
    Neon = 5,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    Dotprod = 6,
    /// aarch64 NEON with dotprod and the int8 matrix-multiply extension (`smmla`).
    I8mm = 7,
}

/// Every level, in declaration order.
pub const ALL_LEVELS: [Level; 8] = [
    Level::Portable,
    Level::Avx2,
    Level::AvxVnni,
    Level::Avx512,
    Level::Avx512Vnni,
    Level::Neon,
    Level::Dotprod,
    Level::I8mm,
];

impl Level {
    /// Whether this CPU can run kernels of this level.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Level::AvxVnni => {
                Level::Avx2.is_supported() && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => {
                Level::Avx512.is_supported() && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Level::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Level::Dotprod => {
                Level::Neon.is_supported() && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[cfg(target_arch = "aarch64")]
            Level::I8mm => {
                Level::Dotprod.is_supported() && std::arch::is_aarch64_feature_detected!("i8mm")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The lower-case name used by `CAIRN_CPU`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::AvxVnni => "avxvnni",
            Level::Avx512 => "avx512",
            Level::Avx512Vnni => "avx512vnni",
            Level::Neon => "neon",
            Level::Dotprod => "dotprod",
            Level::I8mm => "i8mm",
        }
    }

    /// Parses a `CAIRN_CPU` name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Level> {
        let name = name.trim().to_ascii_lowercase();
        ALL_LEVELS.into_iter().find(|l| l.name() == name)
    }

    /// Whether the level has the x86-64 AVX2 instruction set (all x86 SIMD levels do).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn has_avx2(self) -> bool {
        matches!(
            self,
            Level::Avx2 | Level::AvxVnni | Level::Avx512 | Level::Avx512Vnni
        )
    }

    /// Whether the level has aarch64 NEON.
    #[cfg(target_arch = "aarch64")]
    pub(crate) fn has_neon(self) -> bool {
        matches!(self, Level::Neon | Level::Dotprod | Level::I8mm)
    }

    /// Whether the level has aarch64 `sdot`.
    #[cfg(target_arch = "aarch64")]
    pub(crate) fn has_dotprod(self) -> bool {
        matches!(self, Level::Dotprod | Level::I8mm)
    }
}

/// Every level this CPU supports, from portable to the best.
pub fn supported_levels() -> Vec<Level> {
    ALL_LEVELS
        .into_iter()
        .filter(|l| l.is_supported())
        .collect()
}

/// The best level this CPU supports (detected once).
pub fn detected() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        ALL_LEVELS
            .into_iter()
            .rev()
            .find(|l| l.is_supported())
            .unwrap_or(Level::Portable)
    })
}

const UNSET: u8 = u8::MAX;
static GLOBAL: AtomicU8 = AtomicU8::new(UNSET);

thread_local! {
    static OVERRIDE: Cell<Option<Level>> = const { Cell::new(None) };
}

fn from_u8(v: u8) -> Level {
    ALL_LEVELS
        .get(v as usize)
        .copied()
        .unwrap_or(Level::Portable)
}

fn initial_level() -> Level {
    match std::env::var("CAIRN_CPU") {
        Ok(name) if !name.trim().is_empty() => match Level::from_name(&name) {
            Some(l) if l.is_supported() => l,
            Some(l) => {
                tracing::warn!(
                    "CAIRN_CPU={} is not supported by this CPU; using {}",
                    l.name(),
                    detected().name()
                );
                detected()
            }
            None => {
                tracing::warn!(
                    "CAIRN_CPU={name:?} is not a known level; using {}",
                    detected().name()
                );
                detected()
            }
        },
        _ => detected(),
    }
}

/// The level kernels called on this thread use now.
pub fn level() -> Level {
    if let Some(l) = OVERRIDE.with(Cell::get) {
        return l;
    }
    let v = GLOBAL.load(Ordering::Relaxed);
    if v != UNSET {
        return from_u8(v);
    }
    let l = initial_level();
    // A racing first call computes the same value; either store is fine.
    GLOBAL.store(l as u8, Ordering::Relaxed);
    l
}

/// Forces `level` for the whole process; fails if the CPU does not support it.
pub fn force_level(level: Level) -> Result<(), KernelError> {
    if !level.is_supported() {
        return Err(KernelError::Unsupported(level));
    }
    GLOBAL.store(level as u8, Ordering::Relaxed);
    Ok(())
}

/// Runs `f` with `level` in force on the calling thread only; fails if the CPU lacks it.
pub fn with_level<R>(level: Level, f: impl FnOnce() -> R) -> Result<R, KernelError> {
    if !level.is_supported() {
        return Err(KernelError::Unsupported(level));
    }
    struct Restore(Option<Level>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(level))));
    Ok(f())
}

//! CPU kernels for local LLM inference: quantized matrix multiplication over raw GGUF blocks,
//! the element-wise ops of a llama-style forward pass, and the thread pool they run on.
//!
//! Every kernel exists as portable scalar code and as SIMD variants (x86-64 AVX2/AVX-512,
//! aarch64 NEON/dotprod) selected once at run time by [`dispatch`], so one binary is fast on
//! new CPUs and still correct on old ones.
//!
//! Entry points:
//! - [`QMatrix`] wraps the bytes of one GGUF weight tensor (validated by [`QMatrix::new`]);
//!   a [`PackedMatrix`] made from it once at load (for AVX-512 VNNI) can be attached.
//! - [`matmul`] / [`matmul_many`] compute `out[n × rows] = x[n × cols] · Wᵀ` on a [`Pool`].
//! - [`ops`] holds rms_norm, rope, silu_mul, softmax and KV-cache attention.

pub mod dispatch;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod pool;
pub mod quant;

mod arch;
mod buf;

pub use dispatch::{Level, force_level, level, with_level};
pub use matmul::{matmul, matmul_many};
pub use packed::PackedMatrix;
pub use pool::Pool;
pub use quant::{QMatrix, QType};

/// Errors returned by the kernel entry points (they never panic on bad shapes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A weight tensor's byte length does not match its type and shape.
    #[error("{ty:?} matrix {rows}x{cols}: expected {expected} bytes, got {got}")]
    DataLength {
        /// Block type.
        ty: QType,
        /// Rows (output features).
        rows: usize,
        /// Columns (input features).
        cols: usize,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// The column count is not a multiple of the block size.
    #[error("{ty:?}: {cols} columns is not a multiple of the block size {block}")]
    BlockAlignment {
        /// Block type.
        ty: QType,
        /// Columns (input features).
        cols: usize,
        /// Elements per block.
        block: usize,
    },
    /// A slice argument has the wrong length.
    #[error("{what}: expected {expected} elements, got {got}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// Elements the shapes need.
        expected: usize,
        /// Elements supplied.
        got: usize,
    },
    /// Arguments are inconsistent with each other.
    #[error("invalid arguments: {0}")]
    Invalid(&'static str),
    /// The requested instruction-set level is not available on this CPU.
    #[error("CPU level {0:?} is not supported on this machine")]
    Unsupported(Level),
    /// A GGML type this crate has no kernel for.
    #[error("unsupported GGML type id {0}")]
    UnsupportedType(u32),
}

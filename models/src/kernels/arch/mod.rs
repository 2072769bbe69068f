//! Per-level kernel implementations and the functions that pick one for a [`Level`].
//!
//! A `Level` only ever reaches these functions after `dispatch` checked that the CPU
//! supports it, which is what makes calling the `#[target_feature]` variants sound.

use super::buf::AlignedF32;
use super::dispatch::Level;
use super::matmul::{Acts, OutPtr};
use super::ops::RopeLayout;
use super::packed::PackedMatrix;
use super::quant::{self, Packed32, Q8Acts, Q8KActs, Q8RowsMut, QMatrix};

pub(crate) mod portable;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

/// Quantizes `n` rows of `x` (`n × cols`) into `a` (already reset).
pub(crate) fn quantize_q8(level: Level, x: &[f32], n: usize, cols: usize, a: &mut Q8RowsMut<'_>) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::quantize_q8(x, n, cols, a) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::quantize_q8(x, n, cols, a) };
    }
    let _ = level;
    portable::quantize_q8(x, n, cols, a)
}

/// Quantizes `n` rows of `x` into Q8_K activations `a` (already reset).
pub(crate) fn quantize_q8k(level: Level, x: &[f32], n: usize, cols: usize, a: &mut Q8KActs) {
    let _ = level;
    portable::quantize_q8k(x, n, cols, a)
}

/// Rows `r0..r1` of a Q4_0/Q4_1/Q8_0 matrix times activation row `c`.
pub(crate) fn gemv_q32(
    level: Level,
    w: &QMatrix<'_>,
    r0: usize,
    r1: usize,
    a: &Q8Acts,
    c: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::gemv_q32(w, r0, r1, a, c, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        if level.has_dotprod() {
            // SAFETY: `level` was validated by `dispatch`, so NEON and dotprod are available.
            return unsafe { neon::gemv_q32::<true>(w, r0, r1, a, c, out) };
        }
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::gemv_q32::<false>(w, r0, r1, a, c, out) };
    }
    let _ = level;
    portable::gemv_q32(w, r0, r1, a, c, out)
}

/// Unpacks rows `r0..r1` of a 32-block matrix for the GEMM.
pub(crate) fn pack_q32(level: Level, w: &QMatrix<'_>, r0: usize, r1: usize, p: &mut Packed32) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::pack_q32(w, r0, r1, p) };
    }
    let _ = level;
    quant::pack_q32(w, r0, r1, p)
}

/// Packed weight rows times activation rows `c0..c1` into `out[c·ldo + roff + i]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_q32(
    level: Level,
    p: &Packed32,
    a: &Q8Acts,
    c0: usize,
    c1: usize,
    out: OutPtr,
    ldo: usize,
    roff: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::gemm_q32(p, a, c0, c1, out, ldo, roff) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        if level.has_dotprod() {
            // SAFETY: `level` was validated by `dispatch`, so NEON and dotprod are available.
            return unsafe { neon::gemm_q32::<true>(p, a, c0, c1, out, ldo, roff) };
        }
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::gemm_q32::<false>(p, a, c0, c1, out, ldo, roff) };
    }
    let _ = level;
    portable::gemm_q32(p, a, c0, c1, out, ldo, roff)
}

/// Panels `p0..p1` of a packed matrix times activation rows `c0..c1` into
/// `out[c·ldo + 16·panel + i]`; returns false (and does nothing) unless `level` is the
/// packing's level and has packed kernels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed(
    level: Level,
    w: &PackedMatrix,
    p0: usize,
    p1: usize,
    a: &Q8Acts,
    c0: usize,
    c1: usize,
    out: OutPtr,
    ldo: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512Vnni && w.level() == level {
        // SAFETY: `level` was validated by `dispatch`, so AVX-512 F/BW/VL, VNNI, AVX2, FMA
        // and F16C are available.
        unsafe { avx512::gemm_packed(w, p0, p1, a, c0, c1, out, ldo) };
        return true;
    }
    let _ = (level, w, p0, p1, a, c0, c1, out, ldo);
    false
}

/// Rows `r0..r1` of a K-quant matrix times Q8_K activation row `c`.
pub(crate) fn gemv_k(
    level: Level,
    w: &QMatrix<'_>,
    r0: usize,
    r1: usize,
    a: &Q8KActs,
    c: usize,
    out: &mut [f32],
) {
    let _ = level;
    portable::gemv_k(w, r0, r1, a, c, out)
}

/// Rows `r0..r1` of an F32/F16 matrix times the padded f32 row `x`.
pub(crate) fn gemv_f(
    level: Level,
    w: &QMatrix<'_>,
    r0: usize,
    r1: usize,
    x: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::gemv_f(w, r0, r1, x, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::gemv_f(w, r0, r1, x, out) };
    }
    let _ = level;
    portable::gemv_f(w, r0, r1, x, out)
}

/// f32 weight rows times f32 activation rows `c0..c1`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f(
    level: Level,
    fw: &AlignedF32,
    rows: usize,
    acts: &Acts,
    c0: usize,
    c1: usize,
    out: OutPtr,
    ldo: usize,
    roff: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::gemm_f(fw, rows, acts, c0, c1, out, ldo, roff) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::gemm_f(fw, rows, acts, c0, c1, out, ldo, roff) };
    }
    let _ = level;
    portable::gemm_f(fw, rows, acts, c0, c1, out, ldo, roff)
}

/// RMS norm of one row.
pub(crate) fn rms_norm_row(level: Level, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::rms_norm_row(x, w, eps, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::rms_norm_row(x, w, eps, out) };
    }
    let _ = level;
    portable::rms_norm_row(x, w, eps, out)
}

/// Rotary embedding of one head in place.
pub(crate) fn rope_head(level: Level, v: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::rope_head(v, cos, sin, layout) };
    }
    let _ = level;
    portable::rope_head(v, cos, sin, layout)
}

/// Integer dot product of two int8 vectors of equal length.
pub(crate) fn dot_i8(level: Level, a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::dot_i8(a, b) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::dot_i8(a, b) };
    }
    let _ = level;
    portable::dot_i8(a, b)
}

/// `out = silu(a) · b`.
pub(crate) fn silu_mul(level: Level, a: &[f32], b: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::silu_mul(a, b, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::silu_mul(a, b, out) };
    }
    let _ = level;
    portable::silu_mul(a, b, out)
}

/// Softmax of one row in place.
pub(crate) fn softmax_row(level: Level, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::softmax_row(x) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::softmax_row(x) };
    }
    let _ = level;
    portable::softmax_row(x)
}

/// Attention of one query over `len` positions of one KV head.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    level: Level,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    len: usize,
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() && hd.is_multiple_of(8) {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::attend(q, k, v, len, hd, scale, scores, out) };
    }
    let _ = level;
    portable::attend(q, k, v, len, hd, scale, scores, out)
}

/// Layer norm of one row.
pub(crate) fn layer_norm_row(
    level: Level,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::layer_norm_row(x, gamma, beta, eps, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::layer_norm_row(x, gamma, beta, eps, out) };
    }
    let _ = level;
    portable::layer_norm_row(x, gamma, beta, eps, out)
}

/// GELU (erf form) in place.
pub(crate) fn gelu(level: Level, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        // SAFETY: `level` was validated by `dispatch`, so AVX2, FMA and F16C are available.
        return unsafe { avx2::gelu(x) };
    }
    #[cfg(target_arch = "aarch64")]
    if level.has_neon() {
        // SAFETY: `level` was validated by `dispatch`, so NEON is available.
        return unsafe { neon::gelu(x) };
    }
    let _ = level;
    portable::gelu(x)
}

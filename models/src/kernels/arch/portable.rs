//! Portable scalar kernels: the reference every SIMD level must match, and the fallback for
//! CPUs without a supported vector extension.

use crate::kernels::buf::AlignedF32;
use crate::kernels::matmul::{Acts, OutPtr};
use crate::kernels::quant::{
    self, Packed32, Q8Acts, Q8KActs, Q8RowsMut, QK, QK_K, QMatrix, QType, f16_at, kquant_block,
};

/// Quantizes `n` rows of `x` into `a` (already reset).
pub(crate) fn quantize_q8(x: &[f32], n: usize, cols: usize, a: &mut Q8RowsMut<'_>) {
    for c in 0..n {
        quant::quantize_q8_row_portable(&x[c * cols..(c + 1) * cols], a, c);
    }
}

/// Quantizes `n` rows of `x` into `a` (already reset).
pub(crate) fn quantize_q8k(x: &[f32], n: usize, cols: usize, a: &mut Q8KActs) {
    for c in 0..n {
        quant::quantize_q8k_row_portable(&x[c * cols..(c + 1) * cols], a, c);
    }
}

/// Integer dot product of 32-block `b` of a raw weight row with the activations `xq`.
#[inline(always)]
fn block_isum(ty: QType, blk: &[u8], xq: &[i8], b: usize) -> i32 {
    let base = (b / 2) * 64 + (b % 2) * 16;
    let mut s = 0i32;
    match ty {
        QType::Q8_0 => {
            for j in 0..16 {
                s += blk[2 + j] as i8 as i32 * xq[base + j] as i32;
                s += blk[18 + j] as i8 as i32 * xq[base + 32 + j] as i32;
            }
        }
        _ => {
            let nib = if ty == QType::Q4_1 {
                &blk[4..20]
            } else {
                &blk[2..18]
            };
            for j in 0..16 {
                s += (nib[j] & 15) as i32 * xq[base + j] as i32;
                s += (nib[j] >> 4) as i32 * xq[base + 32 + j] as i32;
            }
        }
    }
    s
}

/// Rows `r0..r1` of `w` (Q4_0/Q4_1/Q8_0) times activation row `c`, into `out`.
pub(crate) fn gemv_q32(
    w: &QMatrix<'_>,
    r0: usize,
    r1: usize,
    a: &Q8Acts,
    c: usize,
    out: &mut [f32],
) {
    let ty = w.ty();
    let ts = ty.type_size();
    let xq = a.qs_row(c);
    for (o, r) in out.iter_mut().zip(r0..r1) {
        let row = w.row(r);
        // Products first, then the block offsets: the GEMM's order of operations, so a
        // token's result does not depend on how many tokens share the call.
        let mut sum = 0f32;
        for b in 0..a.nb {
            let blk = &row[b * ts..(b + 1) * ts];
            let isum = block_isum(ty, blk, xq, b);
            sum += f16_at(blk, 0) * a.d(c, b) * isum as f32;
        }
        for b in 0..a.nb {
            let blk = &row[b * ts..(b + 1) * ts];
            let m = match ty {
                QType::Q4_1 => f16_at(blk, 2),
                QType::Q4_0 => -8.0 * f16_at(blk, 0),
                _ => continue,
            };
            sum += m * a.s(c, b);
        }
        *o = sum;
    }
}

/// Packed rows × activation rows `c0..c1` into `out[c·ldo + roff + i]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_q32(
    p: &Packed32,
    a: &Q8Acts,
    c0: usize,
    c1: usize,
    out: OutPtr,
    ldo: usize,
    roff: usize,
) {
    let np = p.npairs;
    let wq = p.qs.as_slice();
    let wd = p.dv.as_slice();
    let wm = p.m.as_slice();
    let xd = a.dv.as_slice();
    let xs = a.s.as_slice();
    for c in c0..c1 {
        let xq = a.qs_row(c);
        // SAFETY: the task owns rows roff..roff+p.rows of every token row in c0..c1.
        let o = unsafe { out.slice(c * ldo + roff, p.rows) };
        for (i, o) in o.iter_mut().enumerate() {
            let q = &wq[i * np * 64..(i + 1) * np * 64];
            let mut sum = 0f32;
            for k in 0..np {
                for h in 0..2 {
                    let mut isum = 0i32;
                    for half in 0..2 {
                        let off = k * 64 + half * 32 + h * 16;
                        for j in 0..16 {
                            let wv = if p.signed {
                                q[off + j] as i8 as i32
                            } else {
                                q[off + j] as i32
                            };
                            isum += wv * xq[off + j] as i32;
                        }
                    }
                    let dw = wd[i * np * 8 + k * 8 + h * 4];
                    let dx = xd[c * np * 8 + k * 8 + h * 4];
                    sum += dw * dx * isum as f32;
                }
            }
            for b in 0..p.sstride {
                sum += wm[i * p.sstride + b] * xs[c * a.sstride + b];
            }
            *o = sum;
        }
    }
}

/// Rows `r0..r1` of `w` (K-quant) times activation row `c`, into `out`.
pub(crate) fn gemv_k(
    w: &QMatrix<'_>,
    r0: usize,
    r1: usize,
    a: &Q8KActs,
    c: usize,
    out: &mut [f32],
) {
    let ty = w.ty();
    let ts = ty.type_size();
    let nsb = a.nsb;
    let mut q = [0i8; QK_K];
    let mut sc = [0f32; 16];
    let mut mn = [0f32; 16];
    for (o, r) in out.iter_mut().zip(r0..r1) {
        let row = w.row(r);
        let mut sum = 0f32;
        for sb in 0..nsb {
            let per = kquant_block(ty, &row[sb * ts..(sb + 1) * ts], &mut q, &mut sc, &mut mn);
            let xq = &a.qs[(c * nsb + sb) * QK_K..(c * nsb + sb + 1) * QK_K];
            let bs = &a.bsums[(c * nsb + sb) * 16..(c * nsb + sb + 1) * 16];
            let dx = a.d[c * nsb + sb];
            let mut acc = 0f32;
            for j in 0..QK_K / per {
                let isum: i32 = (j * per..(j + 1) * per)
                    .map(|i| q[i] as i32 * xq[i] as i32)
                    .sum();
                let xsum: i32 = bs[j * per / 16..(j + 1) * per / 16]
                    .iter()
                    .map(|&v| v as i32)
                    .sum();
                acc += sc[j] * isum as f32 - mn[j] * xsum as f32;
            }
            sum += dx * acc;
        }
        *o = sum;
    }
}

/// Rows `r0..r1` of `w` (F32/F16) times the f32 row `x` (padded), into `out`.
pub(crate) fn gemv_f(w: &QMatrix<'_>, r0: usize, r1: usize, x: &[f32], out: &mut [f32]) {
    let cols = w.cols();
    let mut buf = [0f32; 256];
    for (o, r) in out.iter_mut().zip(r0..r1) {
        let row = w.row(r);
        let es = w.ty().type_size();
        let mut sum = 0f32;
        let mut k = 0;
        while k < cols {
            let len = (cols - k).min(256);
            quant::dequantize(w.ty(), &row[k * es..(k + len) * es], &mut buf[..len]);
            for (j, &v) in buf[..len].iter().enumerate() {
                sum += v * x[k + j];
            }
            k += len;
        }
        *o = sum;
    }
}

/// f32 weight rows `fw` (`rows` × `acts.fstride`) times activation rows `c0..c1`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f(
    fw: &AlignedF32,
    rows: usize,
    acts: &Acts,
    c0: usize,
    c1: usize,
    out: OutPtr,
    ldo: usize,
    roff: usize,
) {
    let fs = acts.fstride;
    let w = fw.as_slice();
    let x = acts.f.as_slice();
    for c in c0..c1 {
        let xr = &x[c * fs..(c + 1) * fs];
        // SAFETY: the task owns rows roff..roff+rows of every token row in c0..c1.
        let o = unsafe { out.slice(c * ldo + roff, rows) };
        for (i, o) in o.iter_mut().enumerate() {
            let wr = &w[i * fs..(i + 1) * fs];
            *o = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
        }
    }
}

#[allow(dead_code)]
const _: () = assert!(QK == 32);

/// RMS norm of one row.
pub(crate) fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let scale = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// Rotary embedding of one head in place.
pub(crate) fn rope_head(
    v: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    layout: crate::kernels::ops::RopeLayout,
) {
    let half = v.len() / 2;
    for i in 0..half {
        let (a, b) = match layout {
            crate::kernels::ops::RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            crate::kernels::ops::RopeLayout::Neox => (i, i + half),
        };
        let (x0, x1) = (v[a], v[b]);
        v[a] = x0 * cos[i] - x1 * sin[i];
        v[b] = x0 * sin[i] + x1 * cos[i];
    }
}

/// `out = silu(a) · b`.
pub(crate) fn silu_mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x / (1.0 + (-x).exp()) * y;
    }
}

/// Softmax of one row in place.
pub(crate) fn softmax_row(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Attention of one query vector over `len` cached positions of one KV head.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    len: usize,
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    for (j, s) in scores.iter_mut().enumerate().take(len) {
        let kj = &k[j * hd..(j + 1) * hd];
        *s = q.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
    }
    softmax_row(&mut scores[..len]);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate().take(len) {
        for (o, &x) in out.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
            *o += p * x;
        }
    }
}

/// Layer norm of one row: `out = (x − mean) / sqrt(var + eps) · gamma + beta`.
pub(crate) fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = (v - mean) * rstd * g + b;
    }
}

/// Coefficients of the erfc approximation of Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7):
/// `erfc(z) ≈ t·(A1 + t·(A2 + t·(A3 + t·(A4 + t·A5))))·e^(−z²)`, `t = 1/(1 + P·z)`, z ≥ 0.
pub(crate) const ERF_P: f32 = 0.327_591_1;
/// See [`ERF_P`].
pub(crate) const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_7,
    -1.453_152,
    1.061_405_4,
];

/// GELU with the exact erf form, `x·Φ(x) = x/2·(1 + erf(x/√2))`, for one value.
///
/// `1 + erf(z)` is computed as `erfc(|z|)` for negative `z` and `2 − erfc(z)` otherwise, so
/// small negative outputs keep their relative accuracy.
#[inline(always)]
pub(crate) fn gelu_one(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + ERF_P * z);
    let p = ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4])));
    let q = t * p * (-z * z).exp();
    let one_plus_erf = if x >= 0.0 { 2.0 - q } else { q };
    0.5 * x * one_plus_erf
}

/// GELU (erf form) in place.
pub(crate) fn gelu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu_one(*v);
    }
}

/// Integer dot product of two int8 vectors of equal length.
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum()
}

//! aarch64 NEON kernels, with `sdot` (dotprod) variants.
//!
//! NEON is part of the aarch64 baseline; the `DOT` const parameter selects the dot-product
//! extension, whose instructions are emitted with inline assembly (the `vdotq_s32` intrinsic
//! is not stable) inside `#[target_feature(enable = "dotprod")]` functions that run only when
//! `dispatch` detected the feature.

use std::arch::aarch64::*;
use std::arch::asm;

use crate::kernels::buf::AlignedF32;
use crate::kernels::matmul::{Acts, OutPtr};
use crate::kernels::quant::{Packed32, Q8Acts, Q8RowsMut, QK, QMatrix, QType, f16_at};

/// `acc + Σ a·b` over each group of 4 int8 lanes (`sdot`).
///
/// # Safety
/// The CPU must support the dotprod extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: a register-only instruction; the caller guarantees dotprod support.
    unsafe {
        asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack)
        );
    }
    acc
}

/// `acc + Σ a·b` over each group of 4 int8 lanes, with plain NEON widening multiplies.
#[inline]
#[target_feature(enable = "neon")]
fn dot_neon(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// Dot-product step for the selected variant.
///
/// # Safety
/// With `DOT`, the CPU must support the dotprod extension.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot<const DOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DOT {
        // SAFETY: forwarded contract.
        unsafe { sdot(acc, a, b) }
    } else {
        dot_neon(acc, a, b)
    }
}

/// Quantizes `n` rows of `x` into `a` (already reset for `n × cols`).
#[target_feature(enable = "neon")]
pub(crate) fn quantize_q8(x: &[f32], n: usize, cols: usize, a: &mut Q8RowsMut<'_>) {
    let nb = a.nb;
    assert!(x.len() >= n * cols && cols == nb * QK);
    for c in 0..n {
        let mut row = a.row_mut(c);
        let xr = &x[c * cols..(c + 1) * cols];
        for b in 0..nb {
            let xb = &xr[b * QK..(b + 1) * QK];
            // SAFETY: `xb` holds 32 floats, read as eight 4-float vectors.
            let v: [float32x4_t; 8] =
                std::array::from_fn(|i| unsafe { vld1q_f32(xb.as_ptr().add(4 * i)) });
            let mut m = vabsq_f32(v[0]);
            for vi in &v[1..] {
                m = vmaxq_f32(m, vabsq_f32(*vi));
            }
            let amax = vmaxvq_f32(m);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            // Round half to even, like the portable quantizer.
            let q: [int32x4_t; 8] = std::array::from_fn(|i| vcvtnq_s32_f32(vmulq_n_f32(v[i], id)));
            let mut sum = vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3]));
            sum = vaddq_s32(sum, vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7])));
            let isum = vaddvq_s32(sum);
            let h: [int16x8_t; 4] = std::array::from_fn(|i| {
                vcombine_s16(vqmovn_s32(q[2 * i]), vqmovn_s32(q[2 * i + 1]))
            });
            let lo = vcombine_s8(vqmovn_s16(h[0]), vqmovn_s16(h[1]));
            let hi = vcombine_s8(vqmovn_s16(h[2]), vqmovn_s16(h[3]));
            let base = (b / 2) * 64 + (b % 2) * 16;
            assert!(base + 48 <= row.qs.len());
            // SAFETY: `base + 48 <= qs.len()` (asserted).
            unsafe {
                vst1q_s8(row.qs.as_mut_ptr().add(base), lo);
                vst1q_s8(row.qs.as_mut_ptr().add(base + 32), hi);
            }
            row.store_block(b, d, isum);
        }
        if nb % 2 == 1 {
            let base = (nb / 2) * 64 + 16;
            row.qs[base..base + 16].fill(0);
            row.qs[base + 32..base + 48].fill(0);
            row.store_block(nb, 0.0, 0);
        }
        row.pad_sums(nb);
    }
}

/// Rows `r0..r1` of `w` (Q4_0/Q4_1/Q8_0) times activation row `c`, into `out`.
///
/// # Safety
/// With `DOT`, the CPU must support the dotprod extension.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemv_q32<const DOT: bool>(
    w: &QMatrix<'_>,
    r0: usize,
    r1: usize,
    a: &Q8Acts,
    c: usize,
    out: &mut [f32],
) {
    assert!(r0 <= r1 && r1 <= w.rows() && out.len() == r1 - r0 && c < a.n);
    assert!(a.nb == w.cols() / QK);
    let ty = w.ty();
    let ts = ty.type_size();
    let nb = a.nb;
    let xq = a.qs_row(c).as_ptr();
    let mask = vdupq_n_u8(0x0F);
    for (o, r) in out.iter_mut().zip(r0..r1) {
        let row = w.row(r);
        let rp = row.as_ptr();
        let mut acc = vdupq_n_f32(0.0);
        for b in 0..nb {
            let blk = &row[b * ts..(b + 1) * ts];
            let base = (b / 2) * 64 + (b % 2) * 16;
            let d = f16_at(blk, 0) * a.d(c, b);
            // SAFETY: block b lies within the row (b < nb); activation offsets base..base+48
            // lie within the row's np·64 values.
            let isum = unsafe {
                let xl = vld1q_s8(xq.add(base));
                let xh = vld1q_s8(xq.add(base + 32));
                match ty {
                    QType::Q8_0 => {
                        let wl = vld1q_s8(rp.add(b * ts + 2).cast());
                        let wh = vld1q_s8(rp.add(b * ts + 18).cast());
                        dot::<DOT>(dot::<DOT>(vdupq_n_s32(0), wl, xl), wh, xh)
                    }
                    _ => {
                        let off = if ty == QType::Q4_1 { 4 } else { 2 };
                        let v = vld1q_u8(rp.add(b * ts + off));
                        let wl = vreinterpretq_s8_u8(vandq_u8(v, mask));
                        let wh = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
                        dot::<DOT>(dot::<DOT>(vdupq_n_s32(0), wl, xl), wh, xh)
                    }
                }
            };
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), d);
        }
        // The block offsets (Q4_1 `m`, Q4_0 `−8d`) times the activations' block sums, 4
        // blocks at a time after the products: the GEMM's exact order of operations, so a
        // token's result does not depend on how many tokens share the call.
        if ty != QType::Q8_0 {
            let mut j = 0;
            while j < a.sstride {
                let mut m = [0f32; 4];
                for (l, v) in m.iter_mut().enumerate().take(nb.saturating_sub(j).min(4)) {
                    let blk = &row[(j + l) * ts..(j + l + 1) * ts];
                    *v = if ty == QType::Q4_1 {
                        f16_at(blk, 2)
                    } else {
                        -8.0 * f16_at(blk, 0)
                    };
                }
                let xs = &a.s.as_slice()[c * a.sstride + j..c * a.sstride + j + 4];
                // SAFETY: both arrays hold 4 floats.
                acc = unsafe { vfmaq_f32(acc, vld1q_f32(m.as_ptr()), vld1q_f32(xs.as_ptr())) };
                j += 4;
            }
        }
        *o = vaddvq_f32(acc);
    }
}

/// Packed rows × activation rows `c0..c1` into `out[c·ldo + roff + i]`.
///
/// # Safety
/// With `DOT`, the CPU must support the dotprod extension.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_q32<const DOT: bool>(
    p: &Packed32,
    a: &Q8Acts,
    c0: usize,
    c1: usize,
    out: OutPtr,
    ldo: usize,
    roff: usize,
) {
    let np = p.npairs;
    let ss = p.sstride;
    assert!(np == a.npairs && ss == a.sstride && c1 <= a.n);
    assert!(p.qs.as_slice().len() >= p.rows * np * 64 && p.dv.as_slice().len() >= p.rows * np * 8);
    assert!(p.m.as_slice().len() >= p.rows * ss);
    assert!(c1 == c0 || (c1 - 1) * ldo + roff + p.rows <= out.len);
    let wq = p.qs.as_i8().as_ptr();
    let wd = p.dv.as_slice().as_ptr();
    let wm = p.m.as_slice().as_ptr();
    let xq = a.qs.as_i8().as_ptr();
    let xd = a.dv.as_slice().as_ptr();
    let xs = a.s.as_slice().as_ptr();
    const RT: usize = 4;
    const CT: usize = 2;
    let mut c = c0;
    while c < c1 {
        let ct = (c1 - c).min(CT);
        let mut r = 0;
        while r < p.rows {
            let rt = (p.rows - r).min(RT);
            let mut acc = [[vdupq_n_f32(0.0); CT]; RT];
            // SAFETY: rows r..r+rt of the packed weights and tokens c..c+ct of the
            // activations exist (asserted sizes); every offset below stays inside them; the
            // output elements are in bounds (asserted) and owned by this task.
            unsafe {
                for k in 0..np {
                    for i in 0..rt {
                        let wr = wq.add((r + i) * np * 64 + k * 64);
                        let w: [int8x16_t; 4] = std::array::from_fn(|j| vld1q_s8(wr.add(16 * j)));
                        let dw0 = vld1q_f32(wd.add((r + i) * np * 8 + k * 8));
                        let dw1 = vld1q_f32(wd.add((r + i) * np * 8 + k * 8 + 4));
                        for j in 0..ct {
                            let xr = xq.add((c + j) * np * 64 + k * 64);
                            let z = vdupq_n_s32(0);
                            let b0 = dot::<DOT>(
                                dot::<DOT>(z, w[0], vld1q_s8(xr)),
                                w[2],
                                vld1q_s8(xr.add(32)),
                            );
                            let b1 = dot::<DOT>(
                                dot::<DOT>(z, w[1], vld1q_s8(xr.add(16))),
                                w[3],
                                vld1q_s8(xr.add(48)),
                            );
                            let dx0 = vld1q_f32(xd.add((c + j) * np * 8 + k * 8));
                            let dx1 = vld1q_f32(xd.add((c + j) * np * 8 + k * 8 + 4));
                            let a0 = vfmaq_f32(acc[i][j], vcvtq_f32_s32(b0), vmulq_f32(dw0, dx0));
                            acc[i][j] = vfmaq_f32(a0, vcvtq_f32_s32(b1), vmulq_f32(dw1, dx1));
                        }
                    }
                }
                if !p.signed {
                    let mut jj = 0;
                    while jj < ss {
                        for i in 0..rt {
                            let m = vld1q_f32(wm.add((r + i) * ss + jj));
                            for j in 0..ct {
                                let s = vld1q_f32(xs.add((c + j) * ss + jj));
                                acc[i][j] = vfmaq_f32(acc[i][j], m, s);
                            }
                        }
                        jj += 4;
                    }
                }
                for i in 0..rt {
                    for j in 0..ct {
                        *out.ptr.add((c + j) * ldo + roff + r + i) = vaddvq_f32(acc[i][j]);
                    }
                }
            }
            r += rt;
        }
        c += ct;
    }
}

/// Rows `r0..r1` of `w` (F32/F16) times the padded f32 row `x`, into `out`.
#[target_feature(enable = "neon")]
pub(crate) fn gemv_f(w: &QMatrix<'_>, r0: usize, r1: usize, x: &[f32], out: &mut [f32]) {
    let cols = w.cols();
    let f16 = w.ty() == QType::F16;
    // `x` is an activation row padded with zeros to a multiple of 16 (as the GEMM's rows).
    assert!(r1 <= w.rows() && out.len() == r1 - r0 && x.len() >= cols.div_ceil(4) * 4);
    for (o, r) in out.iter_mut().zip(r0..r1) {
        let row = w.row(r);
        // One accumulator, 4 columns a step, the tail zero-padded: the GEMM's exact order of
        // operations, so the result does not depend on the batch.
        let mut acc = vdupq_n_f32(0.0);
        let mut k = 0;
        while k < cols {
            let mut t = [0f32; 4];
            for (j, v) in t.iter_mut().enumerate().take(cols - k) {
                *v = if f16 {
                    f16_at(row, (k + j) * 2)
                } else {
                    let i = (k + j) * 4;
                    f32::from_le_bytes([row[i], row[i + 1], row[i + 2], row[i + 3]])
                };
            }
            // SAFETY: `t` holds 4 floats and k + 4 <= x.len() (asserted padding).
            acc = unsafe { vfmaq_f32(acc, vld1q_f32(t.as_ptr()), vld1q_f32(x.as_ptr().add(k))) };
            k += 4;
        }
        *o = vaddvq_f32(acc);
    }
}

/// f32 weight rows `fw` (`rows` × `acts.fstride`) times activation rows `c0..c1`.
#[target_feature(enable = "neon")]
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
    assert!(w.len() >= rows * fs && x.len() >= c1 * fs && fs.is_multiple_of(4));
    assert!(c1 == c0 || (c1 - 1) * ldo + roff + rows <= out.len);
    for c in c0..c1 {
        for r in 0..rows {
            let mut acc = vdupq_n_f32(0.0);
            // SAFETY: row r < rows and token c < c1 hold `fs` floats (asserted); the output
            // index is in bounds (asserted) and owned by this task.
            unsafe {
                let mut k = 0;
                while k < fs {
                    acc = vfmaq_f32(
                        acc,
                        vld1q_f32(w.as_ptr().add(r * fs + k)),
                        vld1q_f32(x.as_ptr().add(c * fs + k)),
                    );
                    k += 4;
                }
                *out.ptr.add(c * ldo + roff + r) = vaddvq_f32(acc);
            }
        }
    }
}

/// e^x for 4 floats (inputs clamped to about ±88; relative error ~2e-7).
#[inline]
#[target_feature(enable = "neon")]
fn exp4(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0)), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_145_75));
    let r = vfmsq_f32(r, n, vdupq_n_f32(1.428_606_8e-6));
    let mut p = vdupq_n_f32(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let e = vshlq_n_s32(vcvtq_s32_f32(n), 23);
    vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(p), e))
}

/// `out = silu(a) · b`.
#[target_feature(enable = "neon")]
pub(crate) fn silu_mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = a.len();
    assert!(b.len() == n && out.len() == n);
    let one = vdupq_n_f32(1.0);
    let mut i = 0;
    // SAFETY: accesses at i..i+4 <= n.
    unsafe {
        while i + 4 <= n {
            let x = vld1q_f32(a.as_ptr().add(i));
            let s = vdivq_f32(x, vaddq_f32(one, exp4(vnegq_f32(x))));
            vst1q_f32(
                out.as_mut_ptr().add(i),
                vmulq_f32(s, vld1q_f32(b.as_ptr().add(i))),
            );
            i += 4;
        }
    }
    for j in i..n {
        out[j] = a[j] / (1.0 + (-a[j]).exp()) * b[j];
    }
}

/// Softmax of one row in place.
#[target_feature(enable = "neon")]
pub(crate) fn softmax_row(x: &mut [f32]) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut max = f32::NEG_INFINITY;
    let mut i = 0;
    // SAFETY: accesses at i..i+4 <= n.
    unsafe {
        let mut m = vdupq_n_f32(f32::NEG_INFINITY);
        while i + 4 <= n {
            m = vmaxq_f32(m, vld1q_f32(p.add(i)));
            i += 4;
        }
        max = max.max(vmaxvq_f32(m));
    }
    for &v in &x[i..] {
        max = max.max(v);
    }
    let mut sum = 0f32;
    let mut i = 0;
    // SAFETY: accesses at i..i+4 <= n.
    unsafe {
        let mv = vdupq_n_f32(max);
        let mut s = vdupq_n_f32(0.0);
        while i + 4 <= n {
            let e = exp4(vsubq_f32(vld1q_f32(p.add(i)), mv));
            vst1q_f32(p.add(i), e);
            s = vaddq_f32(s, e);
            i += 4;
        }
        sum += vaddvq_f32(s);
    }
    for v in &mut x[i..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// RMS norm of one row.
#[target_feature(enable = "neon")]
pub(crate) fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    assert!(w.len() == n && out.len() == n);
    let mut ss = 0f32;
    let mut i = 0;
    // SAFETY: accesses at i..i+8 <= n.
    unsafe {
        let mut a0 = vdupq_n_f32(0.0);
        let mut a1 = vdupq_n_f32(0.0);
        while i + 8 <= n {
            let v0 = vld1q_f32(x.as_ptr().add(i));
            let v1 = vld1q_f32(x.as_ptr().add(i + 4));
            a0 = vfmaq_f32(a0, v0, v0);
            a1 = vfmaq_f32(a1, v1, v1);
            i += 8;
        }
        ss += vaddvq_f32(vaddq_f32(a0, a1));
    }
    for &v in &x[i..] {
        ss += v * v;
    }
    let scale = 1.0 / (ss / n as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// Layer norm of one row: `out = (x − mean) / sqrt(var + eps) · gamma + beta`.
#[target_feature(enable = "neon")]
pub(crate) fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    assert!(gamma.len() == n && beta.len() == n && out.len() == n);
    let xp = x.as_ptr();
    let mut sum = 0f32;
    let mut i = 0;
    // SAFETY: every access below is at i..i+4 <= n of slices of length n.
    unsafe {
        let mut a = vdupq_n_f32(0.0);
        while i + 4 <= n {
            a = vaddq_f32(a, vld1q_f32(xp.add(i)));
            i += 4;
        }
        sum += vaddvq_f32(a);
    }
    for &v in &x[i..] {
        sum += v;
    }
    let mean = sum / n as f32;
    let mut ss = 0f32;
    let mut i = 0;
    // SAFETY: as above.
    unsafe {
        let mv = vdupq_n_f32(mean);
        let mut a = vdupq_n_f32(0.0);
        while i + 4 <= n {
            let d = vsubq_f32(vld1q_f32(xp.add(i)), mv);
            a = vfmaq_f32(a, d, d);
            i += 4;
        }
        ss += vaddvq_f32(a);
    }
    for &v in &x[i..] {
        ss += (v - mean) * (v - mean);
    }
    let rstd = 1.0 / (ss / n as f32 + eps).sqrt();
    let mut i = 0;
    // SAFETY: as above; `out`, `gamma` and `beta` have length n.
    unsafe {
        let mv = vdupq_n_f32(mean);
        while i + 4 <= n {
            let d = vmulq_n_f32(vsubq_f32(vld1q_f32(xp.add(i)), mv), rstd);
            let g = vld1q_f32(gamma.as_ptr().add(i));
            let b = vld1q_f32(beta.as_ptr().add(i));
            vst1q_f32(out.as_mut_ptr().add(i), vfmaq_f32(b, d, g));
            i += 4;
        }
    }
    for j in i..n {
        out[j] = (x[j] - mean) * rstd * gamma[j] + beta[j];
    }
}

/// GELU (erf form) in place; the same formula as `portable::gelu_one`.
#[target_feature(enable = "neon")]
pub(crate) fn gelu(x: &mut [f32]) {
    use super::portable::{ERF_A, ERF_P};
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: accesses at i..i+4 <= n.
    unsafe {
        let one = vdupq_n_f32(1.0);
        while i + 4 <= n {
            let v = vld1q_f32(p.add(i));
            let z = vmulq_n_f32(vabsq_f32(v), std::f32::consts::FRAC_1_SQRT_2);
            let t = vdivq_f32(one, vfmaq_n_f32(one, z, ERF_P));
            let mut q = vdupq_n_f32(ERF_A[4]);
            for c in [ERF_A[3], ERF_A[2], ERF_A[1], ERF_A[0]] {
                q = vfmaq_f32(vdupq_n_f32(c), q, t);
            }
            let e = exp4(vnegq_f32(vmulq_f32(z, z)));
            let q = vmulq_f32(vmulq_f32(t, q), e);
            let pos = vcgeq_f32(v, vdupq_n_f32(0.0));
            let r = vbslq_f32(pos, vsubq_f32(vdupq_n_f32(2.0), q), q);
            vst1q_f32(p.add(i), vmulq_f32(vmulq_n_f32(v, 0.5), r));
            i += 4;
        }
    }
    for v in &mut x[i..] {
        *v = super::portable::gelu_one(*v);
    }
}

/// Integer dot product of two int8 vectors of equal length: widening multiplies into i16,
/// pairwise-accumulated into i32 lanes.
#[target_feature(enable = "neon")]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len();
    assert!(b.len() == n);
    let mut acc = vdupq_n_s32(0);
    let mut i = 0;
    // SAFETY: every load reads i..i+16 <= n bytes.
    unsafe {
        while i + 16 <= n {
            let x = vld1q_s8(a.as_ptr().add(i));
            let y = vld1q_s8(b.as_ptr().add(i));
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
            acc = vpadalq_s16(acc, vmull_high_s8(x, y));
            i += 16;
        }
    }
    let mut total = vaddvq_s32(acc);
    for j in i..n {
        total += i32::from(a[j]) * i32::from(b[j]);
    }
    total
}

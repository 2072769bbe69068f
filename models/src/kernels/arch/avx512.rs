//! x86-64 AVX-512 VNNI kernels over [`PackedMatrix`] panels.
//!
//! Every function here is `#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,
//! avx2,fma,f16c")]` and may only be called after [`crate::kernels::dispatch`] has confirmed
//! [`crate::kernels::Level::Avx512Vnni`].
//!
//! One tile is `P` panels (16 weight rows each, one register of 16 i32 lanes per panel and
//! token) × `T` tokens. Per 32-block, each lane sums its row's 32 products exactly in i32
//! (`vpdpbusd`: 4 packed weights × 4 broadcast activations per lane and instruction), then
//! folds them into an f32 accumulator with one FMA: `acc = fma(Σ, d_w·d_x, acc)`, block by
//! block; for Q4_0/Q4_1 the blocks' offsets `m·s_x` follow, block by block. That order does
//! not depend on `P` or `T`, so one token's result is the same bit for bit whether it is
//! computed alone (decode) or in a batch (prompt).

// Register-tile loops index several accumulator arrays in lockstep; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::kernels::matmul::OutPtr;
use crate::kernels::packed::{PANEL, PackedMatrix, qs_block, sc_block};
use crate::kernels::quant::{Q8Acts, QType};

/// Kind of packed weights, as a const parameter of the tile kernel.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// Operands of one tile.
#[derive(Clone, Copy)]
struct Tile {
    /// Packed weights of the tile's first panel, block 0.
    qs: *const u8,
    /// Packed f16 scales of the tile's first panel, block 0.
    sc: *const u8,
    /// Bytes between consecutive panels in `qs` / `sc`.
    pq: usize,
    ps: usize,
    /// 32-blocks per row.
    nb: usize,
    /// The first token's int8 activations (pair-interleaved), scales per pair `[d0 ×4, d1
    /// ×4]`, block sums `s = d·Σq` and integer block sums `Σq`.
    xq: *const i8,
    xd: *const f32,
    xs: *const f32,
    xsum: *const i32,
    /// Strides between tokens of `xq` (bytes), `xd`, and `xs`/`xsum` (elements).
    xqs: usize,
    xds: usize,
    xss: usize,
    /// Output of the first token's first row; tokens are `ldo` apart.
    out: *mut f32,
    ldo: usize,
    /// Valid rows of the tile's last panel (1..=16).
    last_rows: usize,
}

/// Broadcasts the 4 bytes at `p` to every i32 lane.
///
/// # Safety
/// `p` must be valid for reading 4 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bcast4(p: *const i8) -> __m512i {
    // SAFETY: per the contract.
    _mm512_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
}

/// One `P × T` tile.
///
/// # Safety
/// `t.qs`/`t.sc` must point at `P` consecutive panels of a packed matrix of kind `K` with
/// `t.nb` blocks (strides `t.pq`, `t.ps`, 64-byte aligned `qs`), `t.xq`..`t.xsum` at `T`
/// consecutive activation rows of a [`Q8Acts`] with `t.nb` blocks, and
/// `out[tok·ldo + 16·panel + lane]` must be writable for every token, panel and lane below
/// `16` (`last_rows` in the last panel).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<const K: u8, const P: usize, const T: usize>(t: &Tile) {
    let zero = _mm512_setzero_si512();
    let nib = _mm512_set1_epi8(0x0F);
    let mut facc = [[_mm512_setzero_ps(); T]; P];
    let qb = if K == Q8_0 { 512 } else { 256 };
    let sb = if K == Q4_1 { 64 } else { 32 };
    // SAFETY: every pointer below stays within the panels, blocks and activation rows the
    // caller vouches for.
    unsafe {
        for b in 0..t.nb {
            // Element e of block b sits at xo + (e / 16)·32 + e % 16 of a token's row.
            let xo = (b / 2) * 64 + (b % 2) * 16;
            let mut iacc = [[zero; T]; P];
            if K == Q8_0 {
                // Start at −128·Σx: the weights are stored as q + 128.
                for ti in 0..T {
                    let s = _mm512_set1_epi32(*t.xsum.add(ti * t.xss + b));
                    let init = _mm512_sub_epi32(zero, _mm512_slli_epi32::<7>(s));
                    for pi in 0..P {
                        iacc[pi][ti] = init;
                    }
                }
                for g in 0..8 {
                    let off = xo + (g / 4) * 32 + (g % 4) * 4;
                    let w: [__m512i; P] = std::array::from_fn(|pi| {
                        _mm512_load_si512(t.qs.add(pi * t.pq + b * qb + g * 64).cast())
                    });
                    for ti in 0..T {
                        let x = bcast4(t.xq.add(ti * t.xqs + off));
                        for pi in 0..P {
                            iacc[pi][ti] = _mm512_dpbusd_epi32(iacc[pi][ti], w[pi], x);
                        }
                    }
                }
            } else {
                for g in 0..4 {
                    let v: [__m512i; P] = std::array::from_fn(|pi| {
                        _mm512_load_si512(t.qs.add(pi * t.pq + b * qb + g * 64).cast())
                    });
                    let lo: [__m512i; P] = std::array::from_fn(|pi| _mm512_and_si512(v[pi], nib));
                    let hi: [__m512i; P] = std::array::from_fn(|pi| {
                        _mm512_and_si512(_mm512_srli_epi16::<4>(v[pi]), nib)
                    });
                    for ti in 0..T {
                        // Weights 4g.. (low nibbles) and 16 + 4g.. (high nibbles).
                        let xl = bcast4(t.xq.add(ti * t.xqs + xo + 4 * g));
                        let xh = bcast4(t.xq.add(ti * t.xqs + xo + 32 + 4 * g));
                        for pi in 0..P {
                            iacc[pi][ti] = _mm512_dpbusd_epi32(iacc[pi][ti], lo[pi], xl);
                            iacc[pi][ti] = _mm512_dpbusd_epi32(iacc[pi][ti], hi[pi], xh);
                        }
                    }
                }
            }
            let xd: [__m512; T] = std::array::from_fn(|ti| {
                _mm512_set1_ps(*t.xd.add(ti * t.xds + (b / 2) * 8 + (b % 2) * 4))
            });
            for pi in 0..P {
                let d = _mm512_cvtph_ps(_mm256_load_si256(t.sc.add(pi * t.ps + b * sb).cast()));
                for ti in 0..T {
                    facc[pi][ti] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(iacc[pi][ti]),
                        _mm512_mul_ps(d, xd[ti]),
                        facc[pi][ti],
                    );
                }
            }
        }
        if K != Q8_0 {
            let minus8 = _mm512_set1_ps(-8.0);
            for b in 0..t.nb {
                for pi in 0..P {
                    let m = if K == Q4_1 {
                        _mm512_cvtph_ps(_mm256_load_si256(t.sc.add(pi * t.ps + b * sb + 32).cast()))
                    } else {
                        let d =
                            _mm512_cvtph_ps(_mm256_load_si256(t.sc.add(pi * t.ps + b * sb).cast()));
                        _mm512_mul_ps(d, minus8)
                    };
                    for ti in 0..T {
                        let s = _mm512_set1_ps(*t.xs.add(ti * t.xss + b));
                        facc[pi][ti] = _mm512_fmadd_ps(m, s, facc[pi][ti]);
                    }
                }
            }
        }
        let last: __mmask16 = if t.last_rows >= PANEL {
            0xFFFF
        } else {
            (1u16 << t.last_rows) - 1
        };
        for ti in 0..T {
            for pi in 0..P {
                let o = t.out.add(ti * t.ldo + pi * PANEL);
                if pi + 1 < P {
                    _mm512_storeu_ps(o, facc[pi][ti]);
                } else {
                    _mm512_mask_storeu_ps(o, last, facc[pi][ti]);
                }
            }
        }
    }
}

/// Calls the `P × T` instantiation of [`tile`].
///
/// # Safety
/// As for [`tile`] with `P = p`, `T = tt` (`p` in 1..=4, `tt` in 1..=6).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_dispatch<const K: u8>(t: &Tile, p: usize, tt: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        match (p, tt) {
            (4, 1) => tile::<K, 4, 1>(t),
            (4, 2) => tile::<K, 4, 2>(t),
            (3, 1) => tile::<K, 3, 1>(t),
            (3, 2) => tile::<K, 3, 2>(t),
            (2, 1) => tile::<K, 2, 1>(t),
            (2, 2) => tile::<K, 2, 2>(t),
            (2, 3) => tile::<K, 2, 3>(t),
            (2, 4) => tile::<K, 2, 4>(t),
            (2, 5) => tile::<K, 2, 5>(t),
            (2, 6) => tile::<K, 2, 6>(t),
            (1, 1) => tile::<K, 1, 1>(t),
            (1, 2) => tile::<K, 1, 2>(t),
            (1, 3) => tile::<K, 1, 3>(t),
            (1, 4) => tile::<K, 1, 4>(t),
            (1, 5) => tile::<K, 1, 5>(t),
            _ => tile::<K, 1, 6>(t),
        }
    }
}

/// Panels `p0..p1` of `w` times activation rows `c0..c1` into `out[c·ldo + 16·panel + i]`
/// (rows past `w.rows()` are not written).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed(
    w: &PackedMatrix,
    p0: usize,
    p1: usize,
    a: &Q8Acts,
    c0: usize,
    c1: usize,
    out: OutPtr,
    ldo: usize,
) {
    let ty = w.ty();
    let nb = w.blocks();
    let (qb, sb) = (qs_block(ty), sc_block(ty));
    assert!(p0 <= p1 && p1 <= w.panels() && c0 <= c1 && c1 <= a.n && a.nb == nb);
    assert!(w.qs().len() >= w.panels() * nb * qb && w.sc().len() >= w.panels() * nb * sb);
    assert!(a.qsum.len() >= a.n * a.sstride && a.s.as_slice().len() >= a.n * a.sstride);
    assert!(a.npairs == nb.div_ceil(2) && a.sstride >= nb);
    assert!(
        a.qs.as_slice().len() >= a.n * a.npairs * 64 && a.dv.as_slice().len() >= a.n * a.npairs * 8
    );
    assert!(c1 == c0 || p1 == p0 || (c1 - 1) * ldo + w.rows().min(p1 * PANEL) <= out.len);
    let ntok = c1 - c0;
    // Decode: more panels share each broadcast activation; prompt: more tokens share each
    // panel load.
    let (pmax, tmax) = if ntok <= 2 { (4, ntok.max(1)) } else { (2, 6) };
    let np = a.npairs;
    let mut p = p0;
    while p < p1 {
        let pn = (p1 - p).min(pmax);
        let last_rows = (w.rows() - (p + pn - 1) * PANEL).min(PANEL);
        let mut c = c0;
        while c < c1 {
            let tn = (c1 - c).min(tmax);
            // SAFETY: every offset is in bounds: panel p < panels and block 0, token c < a.n, as
            // asserted above.
            let (qs, sc, xq, xd, xs, xsum, o) = unsafe {
                (
                    w.qs().as_ptr().add(p * nb * qb),
                    w.sc().as_ptr().add(p * nb * sb),
                    a.qs.as_i8().as_ptr().add(c * np * 64),
                    a.dv.as_slice().as_ptr().add(c * np * 8),
                    a.s.as_slice().as_ptr().add(c * a.sstride),
                    a.qsum.as_ptr().add(c * a.sstride),
                    out.ptr.add(c * ldo + p * PANEL),
                )
            };
            let t = Tile {
                qs,
                sc,
                pq: nb * qb,
                ps: nb * sb,
                nb,
                xq,
                xd,
                xs,
                xsum,
                xqs: np * 64,
                xds: np * 8,
                xss: a.sstride,
                out: o,
                ldo,
                last_rows,
            };
            // SAFETY: the tile covers panels p..p+pn < p1 and tokens c..c+tn < c1, all inside
            // the buffers checked above; the output elements are this task's.
            unsafe {
                match ty {
                    QType::Q4_0 => tile_dispatch::<Q4_0>(&t, pn, tn),
                    QType::Q4_1 => tile_dispatch::<Q4_1>(&t, pn, tn),
                    _ => tile_dispatch::<Q8_0>(&t, pn, tn),
                }
            }
            c += tn;
        }
        p += pn;
    }
}

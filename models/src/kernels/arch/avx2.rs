//! x86-64 AVX2 + FMA + F16C kernels.
//!
//! Every function here is `#[target_feature(enable = "avx2,fma,f16c")]` and may only be called
//! after [`crate::kernels::dispatch`] has confirmed those features (any level with
//! `has_avx2()`).

// Register-tile loops index several accumulator arrays in lockstep; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::kernels::buf::AlignedF32;
use crate::kernels::matmul::{Acts, OutPtr};
use crate::kernels::quant::{Packed32, Q8Acts, Q8RowsMut, QK, QMatrix, QType};

/// Horizontal sum of 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Horizontal sums of 4 vectors, as one vector `[Σa, Σb, Σc, Σd]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let ab = _mm256_hadd_ps(a, b);
    let cd = _mm256_hadd_ps(c, d);
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
}

/// Horizontal max of 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Quantizes `n` rows of `x` into `a` (already reset for `n × cols`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_q8(x: &[f32], n: usize, cols: usize, a: &mut Q8RowsMut<'_>) {
    let nb = a.nb;
    assert!(x.len() >= n * cols && cols == nb * QK);
    let sign = _mm256_set1_ps(-0.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for c in 0..n {
        let mut row = a.row_mut(c);
        let xr = &x[c * cols..(c + 1) * cols];
        for b in 0..nb {
            let xb = &xr[b * QK..(b + 1) * QK];
            // SAFETY: `xb` holds 32 floats, read as four unaligned 8-float vectors.
            let v = unsafe {
                [
                    _mm256_loadu_ps(xb.as_ptr()),
                    _mm256_loadu_ps(xb.as_ptr().add(8)),
                    _mm256_loadu_ps(xb.as_ptr().add(16)),
                    _mm256_loadu_ps(xb.as_ptr().add(24)),
                ]
            };
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let amax = hmax(m);
            let d = amax / 127.0;
            // Same arithmetic as the portable quantizer (d = amax/127, id = 1/d, round half to
            // even), so every level produces identical int8 activations.
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], id));
            let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id));
            let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id));
            let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id));
            let sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
            let sum = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let sum = _mm_hadd_epi32(sum, sum);
            let sum = _mm_hadd_epi32(sum, sum);
            let isum = _mm_cvtsi128_si32(sum);
            let p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            let p = _mm256_permutevar8x32_epi32(p, perm);
            let base = (b / 2) * 64 + (b % 2) * 16;
            assert!(base + 48 <= row.qs.len());
            // SAFETY: `base + 48 <= qs.len()` (asserted), so both 16-byte stores are in bounds.
            unsafe {
                _mm_storeu_si128(
                    row.qs.as_mut_ptr().add(base).cast(),
                    _mm256_castsi256_si128(p),
                );
                _mm_storeu_si128(
                    row.qs.as_mut_ptr().add(base + 32).cast(),
                    _mm256_extracti128_si256(p, 1),
                );
            }
            row.store_block(b, d, isum);
        }
        if nb % 2 == 1 {
            let b = nb;
            let base = (b / 2) * 64 + 16;
            row.qs[base..base + 16].fill(0);
            row.qs[base + 32..base + 48].fill(0);
            row.store_block(b, 0.0, 0);
        }
        row.pad_sums(nb);
    }
}

/// Rows `r0..r1` of `w` (Q4_0/Q4_1/Q8_0) times activation row `c`, into `out`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn gemv_q32(
    w: &QMatrix<'_>,
    r0: usize,
    r1: usize,
    a: &Q8Acts,
    c: usize,
    out: &mut [f32],
) {
    assert!(r0 <= r1 && r1 <= w.rows() && out.len() == r1 - r0 && c < a.n);
    assert!(a.nb == w.cols() / QK);
    match w.ty() {
        QType::Q4_1 => gemv_q4::<true>(w, r0, r1, a, c, out),
        QType::Q4_0 => gemv_q4::<false>(w, r0, r1, a, c, out),
        _ => gemv_q8_0(w, r0, r1, a, c, out),
    }
}

/// Q4_1 (`HAS_M`) or Q4_0 matrix-vector product, 4 rows at a time.
#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_q4<const HAS_M: bool>(
    w: &QMatrix<'_>,
    r0: usize,
    r1: usize,
    a: &Q8Acts,
    c: usize,
    out: &mut [f32],
) {
    let ts = if HAS_M { 20 } else { 18 };
    let qoff = if HAS_M { 4 } else { 2 };
    let nb = a.nb;
    let np = a.npairs;
    let rb = w.row_bytes();
    let data = w.data().as_ptr();
    let xq = a.qs_row(c).as_ptr();
    let xd = a.dv.as_slice()[c * np * 8..].as_ptr();
    let ss = a.sstride;
    let xs = a.s.as_slice()[c * ss..(c + 1) * ss].as_ptr();
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let idx = if HAS_M {
        _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)
    } else {
        _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)
    };
    let full = nb / 2;

    // One block pair of one row: accumulates the scaled products into `acc`.
    // SAFETY (for callers of this closure): `b0` points at a whole block of the row and, when
    // `two`, at two consecutive whole blocks; `k < np`, so the activation reads are in bounds.
    // `mo` receives the pair's block offsets (Q4_1 `m`, Q4_0 `−8d`), added after all products.
    let pair = |b0: *const u8, k: usize, two: bool, acc: &mut __m256, mo: &mut [f32]| {
        // SAFETY: see the closure's contract above; all loads are unaligned-safe intrinsics.
        unsafe {
            let lo = _mm_loadu_si128(b0.add(qoff).cast());
            let (hi, bits1) = if two {
                (
                    _mm_loadu_si128(b0.add(ts + qoff).cast()),
                    (b0.add(ts) as *const u32).read_unaligned(),
                )
            } else {
                (_mm_setzero_si128(), 0)
            };
            let bits0 = (b0 as *const u32).read_unaligned();
            let v = _mm256_set_m128i(hi, lo);
            let wa = _mm256_and_si256(v, mask);
            let wb = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
            let xa = _mm256_load_si256(xq.add(k * 64).cast());
            let xb = _mm256_load_si256(xq.add(k * 64 + 32).cast());
            let p = _mm256_add_epi16(_mm256_maddubs_epi16(wa, xa), _mm256_maddubs_epi16(wb, xb));
            let f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
            let dm = if HAS_M {
                // [d0, m0, d1, m1]
                _mm_cvtph_ps(_mm_set_epi32(0, 0, bits1 as i32, bits0 as i32))
            } else {
                // [d0, d1, 0, 0]
                _mm_cvtph_ps(_mm_set_epi32(
                    0,
                    0,
                    0,
                    ((bits0 & 0xFFFF) | (bits1 << 16)) as i32,
                ))
            };
            let sc = _mm256_mul_ps(
                _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dm), idx),
                _mm256_load_ps(xd.add(k * 8)),
            );
            *acc = _mm256_fmadd_ps(f, sc, *acc);
            let mut t = [0f32; 4];
            _mm_storeu_ps(t.as_mut_ptr(), dm);
            let (m0, m1) = if HAS_M {
                (t[1], t[3])
            } else {
                (t[0] * -8.0, t[1] * -8.0)
            };
            mo[2 * k] = m0;
            if two {
                mo[2 * k + 1] = m1;
            }
        }
    };

    // The block offsets (Q4_1 `m`, Q4_0 `−8d`) times the activations' block sums, added 8
    // blocks at a time after the products and reduced with `hsum`: the GEMM's exact order of
    // operations, so a token's result does not depend on how many tokens share the call.
    let finish = |mo: &[f32], mut acc: __m256| -> f32 {
        let mut j = 0;
        while j < ss {
            // SAFETY: j + 8 <= ss = mo.len() and keeps the block sums in row c of `s`.
            acc = unsafe {
                _mm256_fmadd_ps(
                    _mm256_loadu_ps(mo.as_ptr().add(j)),
                    _mm256_loadu_ps(xs.add(j)),
                    acc,
                )
            };
            j += 8;
        }
        hsum(acc)
    };
    // Block offsets of the 4 rows in flight; entries past `nb` stay zero, as in the GEMM.
    let mut mbuf = vec![0f32; 4 * ss];

    let mut r = r0;
    while r + 4 <= r1 {
        // SAFETY: rows r..r+4 are < w.rows(), so each row pointer and its nb blocks lie
        // within `w.data()` (length rows · row_bytes, checked by QMatrix::new).
        let rows = unsafe {
            [
                data.add(r * rb),
                data.add((r + 1) * rb),
                data.add((r + 2) * rb),
                data.add((r + 3) * rb),
            ]
        };
        let mut acc = [_mm256_setzero_ps(); 4];
        for k in 0..full {
            for j in 0..4 {
                // Prefetch the same blocks of the row 4 rows ahead (never faults; the
                // address is only computed, not dereferenced, when past the matrix).
                _mm_prefetch::<_MM_HINT_T0>(rows[j].wrapping_add(4 * rb + 2 * k * ts).cast());
                // SAFETY: blocks 2k and 2k+1 < nb are inside row j.
                pair(
                    unsafe { rows[j].add(2 * k * ts) },
                    k,
                    true,
                    &mut acc[j],
                    &mut mbuf[j * ss..(j + 1) * ss],
                );
            }
        }
        if nb % 2 == 1 {
            for j in 0..4 {
                // SAFETY: block nb-1 is inside row j; `two = false` reads only that block.
                pair(
                    unsafe { rows[j].add(2 * full * ts) },
                    full,
                    false,
                    &mut acc[j],
                    &mut mbuf[j * ss..(j + 1) * ss],
                );
            }
        }
        for j in 0..4 {
            out[r - r0 + j] = finish(&mbuf[j * ss..(j + 1) * ss], acc[j]);
        }
        r += 4;
    }
    while r < r1 {
        // SAFETY: row r < w.rows() lies within `w.data()`.
        let row = unsafe { data.add(r * rb) };
        let mut acc = _mm256_setzero_ps();
        for k in 0..full {
            // SAFETY: blocks 2k and 2k+1 < nb are inside the row.
            pair(
                unsafe { row.add(2 * k * ts) },
                k,
                true,
                &mut acc,
                &mut mbuf[..ss],
            );
        }
        if nb % 2 == 1 {
            // SAFETY: block nb-1 is inside the row; only it is read.
            pair(
                unsafe { row.add(2 * full * ts) },
                full,
                false,
                &mut acc,
                &mut mbuf[..ss],
            );
        }
        out[r - r0] = finish(&mbuf[..ss], acc);
        r += 1;
    }
}

/// Q8_0 matrix-vector product.
#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_q8_0(w: &QMatrix<'_>, r0: usize, r1: usize, a: &Q8Acts, c: usize, out: &mut [f32]) {
    const TS: usize = 34;
    let nb = a.nb;
    let np = a.npairs;
    let rb = w.row_bytes();
    let data = w.data().as_ptr();
    let xq = a.qs_row(c).as_ptr();
    let xd = a.dv.as_slice()[c * np * 8..].as_ptr();
    let ones = _mm256_set1_epi16(1);
    let idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    let full = nb / 2;

    // SAFETY (closure contract): `b0` points at a whole block and, when `two`, at two
    // consecutive whole blocks of the row; `k < np`.
    let pair = |b0: *const u8, k: usize, two: bool, acc: &mut __m256| {
        // SAFETY: see the closure's contract.
        unsafe {
            let (h0, h1, bits1) = if two {
                (
                    _mm_loadu_si128(b0.add(TS + 2).cast()),
                    _mm_loadu_si128(b0.add(TS + 18).cast()),
                    (b0.add(TS) as *const u16).read_unaligned(),
                )
            } else {
                (_mm_setzero_si128(), _mm_setzero_si128(), 0)
            };
            let lo = _mm256_set_m128i(h0, _mm_loadu_si128(b0.add(2).cast()));
            let hi = _mm256_set_m128i(h1, _mm_loadu_si128(b0.add(18).cast()));
            let bits0 = (b0 as *const u16).read_unaligned();
            let xa = _mm256_load_si256(xq.add(k * 64).cast());
            let xb = _mm256_load_si256(xq.add(k * 64 + 32).cast());
            let pa = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(xa, lo)),
                ones,
            );
            let pb = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(hi, hi), _mm256_sign_epi8(xb, hi)),
                ones,
            );
            let f = _mm256_cvtepi32_ps(_mm256_add_epi32(pa, pb));
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(
                (bits0 as u32 | ((bits1 as u32) << 16)) as i32,
            ));
            let sc = _mm256_mul_ps(
                _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dd), idx),
                _mm256_load_ps(xd.add(k * 8)),
            );
            *acc = _mm256_fmadd_ps(f, sc, *acc);
        }
    };

    let mut r = r0;
    while r + 4 <= r1 {
        // SAFETY: rows r..r+4 are < w.rows() and lie within `w.data()`.
        let rows = unsafe {
            [
                data.add(r * rb),
                data.add((r + 1) * rb),
                data.add((r + 2) * rb),
                data.add((r + 3) * rb),
            ]
        };
        let mut acc = [_mm256_setzero_ps(); 4];
        for k in 0..full {
            for j in 0..4 {
                // Prefetch the same blocks 4 rows ahead (an address hint only; never faults).
                _mm_prefetch::<_MM_HINT_T0>(rows[j].wrapping_add(4 * rb + 2 * k * TS).cast());
                _mm_prefetch::<_MM_HINT_T0>(rows[j].wrapping_add(4 * rb + 2 * k * TS + 64).cast());
                // SAFETY: blocks 2k, 2k+1 < nb are inside row j.
                pair(unsafe { rows[j].add(2 * k * TS) }, k, true, &mut acc[j]);
            }
        }
        if nb % 2 == 1 {
            for j in 0..4 {
                // SAFETY: block nb-1 is inside row j; only it is read.
                pair(
                    unsafe { rows[j].add(2 * full * TS) },
                    full,
                    false,
                    &mut acc[j],
                );
            }
        }
        // `hsum` per row, as the GEMM reduces (see `gemv_q4`).
        for j in 0..4 {
            out[r - r0 + j] = hsum(acc[j]);
        }
        r += 4;
    }
    while r < r1 {
        // SAFETY: row r < w.rows() lies within `w.data()`.
        let row = unsafe { data.add(r * rb) };
        let mut acc = _mm256_setzero_ps();
        for k in 0..full {
            // SAFETY: blocks 2k, 2k+1 < nb are inside the row.
            pair(unsafe { row.add(2 * k * TS) }, k, true, &mut acc);
        }
        if nb % 2 == 1 {
            // SAFETY: block nb-1 is inside the row; only it is read.
            pair(unsafe { row.add(2 * full * TS) }, full, false, &mut acc);
        }
        out[r - r0] = hsum(acc);
        r += 1;
    }
}

/// Unpacks rows `r0..r1` of a 32-block matrix into `p` (the layout of [`Packed32`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn pack_q32(w: &QMatrix<'_>, r0: usize, r1: usize, p: &mut Packed32) {
    let ty = w.ty();
    let nb = w.cols() / QK;
    let np = nb.div_ceil(2);
    let ss = nb.div_ceil(8) * 8;
    let rows = r1 - r0;
    assert!(r0 <= r1 && r1 <= w.rows());
    p.rows = rows;
    p.npairs = np;
    p.sstride = ss;
    p.signed = ty == QType::Q8_0;
    p.qs.resize(rows * np * 64);
    p.dv.resize(rows * np * 8);
    p.m.resize(rows * ss);
    let ts = ty.type_size();
    let rb = w.row_bytes();
    let mask = _mm256_set1_epi8(0x0F);
    let idx_dm = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    let idx_d = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    let qs = p.qs.as_mut_slice().as_mut_ptr();
    let dv = p.dv.as_mut_slice().as_mut_ptr();
    let m = p.m.as_mut_slice();
    m.fill(0.0);
    let m = m.as_mut_ptr();
    let data = w.data().as_ptr();
    for i in 0..rows {
        // SAFETY: row r0+i < rows of `w` lies within its data (QMatrix invariant); a pair
        // reads block b0 and, if `b0 + 1 < nb`, block b0+1, both inside the row. Output
        // offsets are within the sizes just resized: qs i·np·64 + k·64 + 64 ≤ rows·np·64,
        // dv (i·np + k)·8 + 8 ≤ rows·np·8, m i·ss + 2k + 2 ≤ rows·ss (2·np ≤ ss).
        unsafe {
            let row = data.add((r0 + i) * rb);
            for k in 0..np {
                let b0 = row.add(2 * k * ts);
                let two = 2 * k + 1 < nb;
                let oq = qs.add((i * np + k) * 64);
                let od = dv.add((i * np + k) * 8);
                let om = m.add(i * ss + 2 * k);
                let bits0 = (b0 as *const u32).read_unaligned();
                let bits1 = if two {
                    (b0.add(ts) as *const u32).read_unaligned()
                } else {
                    0
                };
                match ty {
                    QType::Q8_0 => {
                        let (h0, h1) = if two {
                            (
                                _mm_loadu_si128(b0.add(ts + 2).cast()),
                                _mm_loadu_si128(b0.add(ts + 18).cast()),
                            )
                        } else {
                            (_mm_setzero_si128(), _mm_setzero_si128())
                        };
                        let lo = _mm256_set_m128i(h0, _mm_loadu_si128(b0.add(2).cast()));
                        let hi = _mm256_set_m128i(h1, _mm_loadu_si128(b0.add(18).cast()));
                        _mm256_store_si256(oq.cast(), lo);
                        _mm256_store_si256(oq.add(32).cast(), hi);
                        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(
                            ((bits0 & 0xFFFF) | (bits1 << 16)) as i32,
                        ));
                        _mm256_store_ps(
                            od,
                            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dd), idx_d),
                        );
                    }
                    QType::Q4_1 => {
                        let h = if two {
                            _mm_loadu_si128(b0.add(ts + 4).cast())
                        } else {
                            _mm_setzero_si128()
                        };
                        let v = _mm256_set_m128i(h, _mm_loadu_si128(b0.add(4).cast()));
                        _mm256_store_si256(oq.cast(), _mm256_and_si256(v, mask));
                        _mm256_store_si256(
                            oq.add(32).cast(),
                            _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                        );
                        let dm = _mm_cvtph_ps(_mm_set_epi32(0, 0, bits1 as i32, bits0 as i32));
                        _mm256_store_ps(
                            od,
                            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dm), idx_dm),
                        );
                        // [d0, m0, d1, m1] -> m0, m1
                        let mm = _mm_shuffle_ps(dm, dm, 0b11_01_11_01);
                        _mm_storel_pd(om.cast(), _mm_castps_pd(mm));
                    }
                    _ => {
                        let h = if two {
                            _mm_loadu_si128(b0.add(ts + 2).cast())
                        } else {
                            _mm_setzero_si128()
                        };
                        let v = _mm256_set_m128i(h, _mm_loadu_si128(b0.add(2).cast()));
                        _mm256_store_si256(oq.cast(), _mm256_and_si256(v, mask));
                        _mm256_store_si256(
                            oq.add(32).cast(),
                            _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                        );
                        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(
                            ((bits0 & 0xFFFF) | (bits1 << 16)) as i32,
                        ));
                        _mm256_store_ps(
                            od,
                            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dd), idx_d),
                        );
                        let mm = _mm_mul_ps(dd, _mm_set1_ps(-8.0));
                        _mm_storel_pd(om.cast(), _mm_castps_pd(mm));
                    }
                }
            }
        }
    }
}

/// Pointers and strides of a tile's operands.
#[derive(Clone, Copy)]
struct TileArgs {
    wq: *const u8,
    wd: *const f32,
    wm: *const f32,
    xq: *const i8,
    xd: *const f32,
    xs: *const f32,
    np: usize,
    wss: usize,
    xss: usize,
    out: *mut f32,
    ldo: usize,
}

/// An RT × CT tile of the 32-block GEMM: rows `wq` (packed) × tokens `xq`.
///
/// # Safety
/// `wq/wd/wm` must point at RT consecutive packed rows (strides np·64, np·8, wss) and
/// `xq/xd/xs` at CT consecutive activation rows (strides np·64, np·8, xss), all 32-byte
/// aligned for the `qs` and `dv` parts; `wss == xss`; `out[c·ldo + r]` must be writable for
/// r < RT, c < CT.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q32<const SIGNED: bool, const RT: usize, const CT: usize>(t: TileArgs) {
    let ones = _mm256_set1_epi16(1);
    let np = t.np;
    let mut acc = [[_mm256_setzero_ps(); CT]; RT];
    // SAFETY: all offsets stay within the RT/CT rows described in the contract.
    unsafe {
        for k in 0..np {
            for r in 0..RT {
                let wa = _mm256_load_si256(t.wq.add(r * np * 64 + k * 64).cast());
                let wb = _mm256_load_si256(t.wq.add(r * np * 64 + k * 64 + 32).cast());
                let wd = _mm256_load_ps(t.wd.add(r * np * 8 + k * 8));
                let (wa_abs, wb_abs) = if SIGNED {
                    (_mm256_sign_epi8(wa, wa), _mm256_sign_epi8(wb, wb))
                } else {
                    (wa, wb)
                };
                for c in 0..CT {
                    let xa = _mm256_load_si256(t.xq.add(c * np * 64 + k * 64).cast());
                    let xb = _mm256_load_si256(t.xq.add(c * np * 64 + k * 64 + 32).cast());
                    let xd = _mm256_load_ps(t.xd.add(c * np * 8 + k * 8));
                    let i = if SIGNED {
                        let pa = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(wa_abs, _mm256_sign_epi8(xa, wa)),
                            ones,
                        );
                        let pb = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(wb_abs, _mm256_sign_epi8(xb, wb)),
                            ones,
                        );
                        _mm256_add_epi32(pa, pb)
                    } else {
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(wa, xa),
                            _mm256_maddubs_epi16(wb, xb),
                        );
                        _mm256_madd_epi16(p, ones)
                    };
                    acc[r][c] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(wd, xd), acc[r][c]);
                }
            }
        }
        if !SIGNED {
            let mut j = 0;
            while j < t.wss {
                for r in 0..RT {
                    let m = _mm256_loadu_ps(t.wm.add(r * t.wss + j));
                    for c in 0..CT {
                        let s = _mm256_loadu_ps(t.xs.add(c * t.xss + j));
                        acc[r][c] = _mm256_fmadd_ps(m, s, acc[r][c]);
                    }
                }
                j += 8;
            }
        }
        for c in 0..CT {
            for r in 0..RT {
                *t.out.add(c * t.ldo + r) = hsum(acc[r][c]);
            }
        }
    }
}

/// Tile rows of the GEMM micro-kernel.
const RT: usize = 4;
/// Tile tokens of the GEMM micro-kernel.
const CT: usize = 2;

/// Packed rows × activation rows `c0..c1` into `out[c·ldo + roff + i]`.
#[target_feature(enable = "avx2,fma,f16c")]
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
    assert!(np == a.npairs && p.sstride == a.sstride && c1 <= a.n);
    assert!(p.qs.as_slice().len() >= p.rows * np * 64 && p.dv.as_slice().len() >= p.rows * np * 8);
    assert!(c1 == c0 || (c1 - 1) * ldo + roff + p.rows <= out.len);
    let wq = p.qs.as_slice().as_ptr();
    let wd = p.dv.as_slice().as_ptr();
    let wm = p.m.as_slice().as_ptr();
    let xq = a.qs.as_i8().as_ptr();
    let xd = a.dv.as_slice().as_ptr();
    let xs = a.s.as_slice().as_ptr();
    let ss = p.sstride;
    let mut c = c0;
    while c < c1 {
        let ct = (c1 - c).min(CT);
        let mut r = 0;
        while r < p.rows {
            let rt = (p.rows - r).min(RT);
            // SAFETY: rows r..r+rt of the packed buffer and tokens c..c+ct of the
            // activations exist (asserted sizes), and the output elements
            // (c..c+ct)·ldo + roff + (r..r+rt) are in bounds and owned by this task.
            unsafe {
                let t = TileArgs {
                    wq: wq.add(r * np * 64),
                    wd: wd.add(r * np * 8),
                    wm: wm.add(r * ss),
                    xq: xq.add(c * np * 64),
                    xd: xd.add(c * np * 8),
                    xs: xs.add(c * ss),
                    np,
                    wss: ss,
                    xss: ss,
                    out: out.ptr.add(c * ldo + roff + r),
                    ldo,
                };
                if p.signed {
                    tile_dispatch::<true>(t, rt, ct);
                } else {
                    tile_dispatch::<false>(t, rt, ct);
                }
            }
            r += rt;
        }
        c += ct;
    }
}

/// Calls the `rt × ct` instantiation of the tile kernel.
///
/// # Safety
/// As for [`tile_q32`] with RT = `rt`, CT = `ct`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_dispatch<const S: bool>(t: TileArgs, rt: usize, ct: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        match (rt, ct) {
            (4, 2) => tile_q32::<S, 4, 2>(t),
            (3, 2) => tile_q32::<S, 3, 2>(t),
            (2, 2) => tile_q32::<S, 2, 2>(t),
            (1, 2) => tile_q32::<S, 1, 2>(t),
            (4, 1) => tile_q32::<S, 4, 1>(t),
            (3, 1) => tile_q32::<S, 3, 1>(t),
            (2, 1) => tile_q32::<S, 2, 1>(t),
            _ => tile_q32::<S, 1, 1>(t),
        }
    }
}

/// Rows `r0..r1` of `w` (F32/F16) times the padded f32 row `x`, into `out`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn gemv_f(w: &QMatrix<'_>, r0: usize, r1: usize, x: &[f32], out: &mut [f32]) {
    let cols = w.cols();
    let f16 = w.ty() == QType::F16;
    let es = w.ty().type_size();
    // `x` is an activation row padded with zeros to a multiple of 16 (as the GEMM's rows).
    assert!(r1 <= w.rows() && out.len() == r1 - r0 && x.len() >= cols.div_ceil(8) * 8);
    for (o, r) in out.iter_mut().zip(r0..r1) {
        let row = w.row(r);
        // One accumulator, 8 columns a step, the tail zero-padded, reduced with `hsum`: the
        // GEMM's exact order of operations, so the result does not depend on the batch.
        let mut acc = _mm256_setzero_ps();
        let mut k = 0;
        while k < cols {
            let wv = if k + 8 <= cols {
                // SAFETY: k + 8 <= cols keeps the 8 weight values (es bytes each) in `row`.
                unsafe {
                    if f16 {
                        _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(k * es).cast()))
                    } else {
                        _mm256_loadu_ps(row.as_ptr().add(k * es).cast())
                    }
                }
            } else {
                let mut t = [0f32; 8];
                for (j, v) in t.iter_mut().enumerate().take(cols - k) {
                    *v = if f16 {
                        crate::kernels::quant::f16_at(row, (k + j) * 2)
                    } else {
                        let i = (k + j) * 4;
                        f32::from_le_bytes([row[i], row[i + 1], row[i + 2], row[i + 3]])
                    };
                }
                // SAFETY: `t` holds 8 floats.
                unsafe { _mm256_loadu_ps(t.as_ptr()) }
            };
            // SAFETY: k + 8 <= x.len() (asserted padding).
            acc = unsafe { _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(k)), acc) };
            k += 8;
        }
        *o = hsum(acc);
    }
}

/// f32 weight rows `fw` (`rows` × `acts.fstride`) times activation rows `c0..c1`.
#[target_feature(enable = "avx2,fma,f16c")]
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
    assert!(w.len() >= rows * fs && x.len() >= c1 * fs && fs.is_multiple_of(8));
    assert!(c1 == c0 || (c1 - 1) * ldo + roff + rows <= out.len);
    let mut c = c0;
    while c < c1 {
        let ct = (c1 - c).min(4);
        let mut r = 0;
        while r < rows {
            let rt = (rows - r).min(2);
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            // SAFETY: rows r..r+rt < rows and tokens c..c+ct < c1 hold `fs` floats each
            // (asserted); output indices are in bounds (asserted) and owned by this task.
            unsafe {
                let mut k = 0;
                while k < fs {
                    for i in 0..rt {
                        let wv = _mm256_load_ps(w.as_ptr().add((r + i) * fs + k));
                        for j in 0..ct {
                            let xv = _mm256_load_ps(x.as_ptr().add((c + j) * fs + k));
                            acc[i][j] = _mm256_fmadd_ps(wv, xv, acc[i][j]);
                        }
                    }
                    k += 8;
                }
                for i in 0..rt {
                    for j in 0..ct {
                        *out.ptr.add((c + j) * ldo + roff + r + i) = hsum(acc[i][j]);
                    }
                }
            }
            r += rt;
        }
        c += ct;
    }
}

/// e^x for 8 floats (inputs clamped to about ±88; relative error ~2e-7).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn exp256(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
    _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e))
}

/// RMS norm of one row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    assert!(w.len() == n && out.len() == n);
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: every access below is at i..i+8 (or i+16) <= n of slices of length n.
    unsafe {
        while i + 16 <= n {
            let v0 = _mm256_loadu_ps(x.as_ptr().add(i));
            let v1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
            a0 = _mm256_fmadd_ps(v0, v0, a0);
            a1 = _mm256_fmadd_ps(v1, v1, a1);
            i += 16;
        }
    }
    let mut ss = hsum(_mm256_add_ps(a0, a1));
    for &v in &x[i..] {
        ss += v * v;
    }
    let scale = 1.0 / (ss / n as f32 + eps).sqrt();
    let sv = _mm256_set1_ps(scale);
    let mut i = 0;
    // SAFETY: as above.
    unsafe {
        while i + 8 <= n {
            let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), sv);
            let g = _mm256_loadu_ps(w.as_ptr().add(i));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(v, g));
            i += 8;
        }
    }
    for j in i..n {
        out[j] = x[j] * scale * w[j];
    }
}

/// Rotary embedding of one head in place.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn rope_head(
    v: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    layout: crate::kernels::ops::RopeLayout,
) {
    let half = v.len() / 2;
    assert!(cos.len() >= half && sin.len() >= half);
    let p = v.as_mut_ptr();
    let mut i = 0;
    match layout {
        crate::kernels::ops::RopeLayout::Interleaved => {
            let dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
            let sign = _mm256_setr_ps(-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0);
            // SAFETY: 4 pairs = 8 values at 2i..2i+8 <= 2·half <= v.len(); cos/sin read
            // 4 values at i..i+4 <= half.
            unsafe {
                while i + 4 <= half {
                    let c = _mm256_permutevar8x32_ps(
                        _mm256_castps128_ps256(_mm_loadu_ps(cos.as_ptr().add(i))),
                        dup,
                    );
                    let s = _mm256_mul_ps(
                        _mm256_permutevar8x32_ps(
                            _mm256_castps128_ps256(_mm_loadu_ps(sin.as_ptr().add(i))),
                            dup,
                        ),
                        sign,
                    );
                    let x = _mm256_loadu_ps(p.add(2 * i));
                    let xs = _mm256_permute_ps::<0b10_11_00_01>(x);
                    _mm256_storeu_ps(p.add(2 * i), _mm256_fmadd_ps(x, c, _mm256_mul_ps(xs, s)));
                    i += 4;
                }
            }
            for j in i..half {
                let (x0, x1) = (v[2 * j], v[2 * j + 1]);
                v[2 * j] = x0 * cos[j] - x1 * sin[j];
                v[2 * j + 1] = x0 * sin[j] + x1 * cos[j];
            }
        }
        crate::kernels::ops::RopeLayout::Neox => {
            // SAFETY: reads/writes at i..i+8 <= half and half+i..half+i+8 <= v.len().
            unsafe {
                while i + 8 <= half {
                    let c = _mm256_loadu_ps(cos.as_ptr().add(i));
                    let s = _mm256_loadu_ps(sin.as_ptr().add(i));
                    let x0 = _mm256_loadu_ps(p.add(i));
                    let x1 = _mm256_loadu_ps(p.add(half + i));
                    _mm256_storeu_ps(p.add(i), _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
                    _mm256_storeu_ps(
                        p.add(half + i),
                        _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)),
                    );
                    i += 8;
                }
            }
            for j in i..half {
                let (x0, x1) = (v[j], v[j + half]);
                v[j] = x0 * cos[j] - x1 * sin[j];
                v[j + half] = x0 * sin[j] + x1 * cos[j];
            }
        }
    }
}

/// `out = silu(a) · b`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn silu_mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = a.len();
    assert!(b.len() == n && out.len() == n);
    let one = _mm256_set1_ps(1.0);
    let neg = _mm256_set1_ps(-0.0);
    let mut i = 0;
    // SAFETY: accesses at i..i+8 <= n.
    unsafe {
        while i + 8 <= n {
            let x = _mm256_loadu_ps(a.as_ptr().add(i));
            let e = exp256(_mm256_xor_ps(x, neg));
            let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
            let y = _mm256_loadu_ps(b.as_ptr().add(i));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(s, y));
            i += 8;
        }
    }
    for j in i..n {
        out[j] = a[j] / (1.0 + (-a[j]).exp()) * b[j];
    }
}

/// Softmax of one row in place.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn softmax_row(x: &mut [f32]) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    // SAFETY: accesses at i..i+8 <= n.
    unsafe {
        while i + 8 <= n {
            m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
            i += 8;
        }
    }
    let mut max = hmax(m);
    for &v in &x[i..] {
        max = max.max(v);
    }
    let mv = _mm256_set1_ps(max);
    let mut s = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: accesses at i..i+8 <= n.
    unsafe {
        while i + 8 <= n {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            _mm256_storeu_ps(p.add(i), e);
            s = _mm256_add_ps(s, e);
            i += 8;
        }
    }
    let mut sum = hsum(s);
    for v in &mut x[i..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = _mm256_set1_ps(1.0 / sum);
    let mut i = 0;
    // SAFETY: accesses at i..i+8 <= n.
    unsafe {
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
            i += 8;
        }
    }
    for v in &mut x[i..] {
        *v *= 1.0 / sum;
    }
}

/// Attention of one query over `len` cached positions of one KV head (`hd` multiple of 8).
#[target_feature(enable = "avx2,fma,f16c")]
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
    assert!(hd.is_multiple_of(8) && q.len() == hd && out.len() == hd);
    assert!(k.len() >= len * hd && v.len() >= len * hd && scores.len() >= len);
    let qp = q.as_ptr();
    let kp = k.as_ptr();
    let vp = v.as_ptr();
    let mut j = 0;
    // SAFETY: key rows j..j+4 < len lie within k (len·hd <= k.len()); q has hd values.
    unsafe {
        while j + 4 <= len {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut d = 0;
            while d < hd {
                let qv = _mm256_loadu_ps(qp.add(d));
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kp.add((j + u) * hd + d)), *a);
                }
                d += 8;
            }
            let s = _mm_mul_ps(hsum4(acc[0], acc[1], acc[2], acc[3]), _mm_set1_ps(scale));
            _mm_storeu_ps(scores.as_mut_ptr().add(j), s);
            j += 4;
        }
        while j < len {
            let mut a = _mm256_setzero_ps();
            let mut d = 0;
            while d < hd {
                a = _mm256_fmadd_ps(
                    _mm256_loadu_ps(qp.add(d)),
                    _mm256_loadu_ps(kp.add(j * hd + d)),
                    a,
                );
                d += 8;
            }
            scores[j] = hsum(a) * scale;
            j += 1;
        }
    }
    softmax_row(&mut scores[..len]);
    let op = out.as_mut_ptr();
    let mut d0 = 0;
    // SAFETY: value rows j < len lie within v; output slabs d0..d0+64 (or the remainder)
    // are within hd = out.len().
    unsafe {
        while d0 < hd {
            let w = (hd - d0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for (jj, &p) in scores[..len].iter().enumerate() {
                let pv = _mm256_set1_ps(p);
                let row = vp.add(jj * hd + d0);
                for (u, a) in acc.iter_mut().enumerate().take(w) {
                    *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(row.add(u * 8)), *a);
                }
            }
            for (u, a) in acc.iter().enumerate().take(w) {
                _mm256_storeu_ps(op.add(d0 + u * 8), *a);
            }
            d0 += w * 8;
        }
    }
}

/// Layer norm of one row: `out = (x − mean) / sqrt(var + eps) · gamma + beta`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    assert!(gamma.len() == n && beta.len() == n && out.len() == n);
    let xp = x.as_ptr();
    let mut a = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: every access below is at i..i+8 <= n of slices of length n.
    unsafe {
        while i + 8 <= n {
            a = _mm256_add_ps(a, _mm256_loadu_ps(xp.add(i)));
            i += 8;
        }
    }
    let mut sum = hsum(a);
    for &v in &x[i..] {
        sum += v;
    }
    let mean = sum / n as f32;
    let mv = _mm256_set1_ps(mean);
    let mut a = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: as above.
    unsafe {
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(xp.add(i)), mv);
            a = _mm256_fmadd_ps(d, d, a);
            i += 8;
        }
    }
    let mut ss = hsum(a);
    for &v in &x[i..] {
        ss += (v - mean) * (v - mean);
    }
    let rstd = 1.0 / (ss / n as f32 + eps).sqrt();
    let rv = _mm256_set1_ps(rstd);
    let mut i = 0;
    // SAFETY: as above; `out`, `gamma` and `beta` have length n.
    unsafe {
        while i + 8 <= n {
            let d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xp.add(i)), mv), rv);
            let g = _mm256_loadu_ps(gamma.as_ptr().add(i));
            let b = _mm256_loadu_ps(beta.as_ptr().add(i));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(d, g, b));
            i += 8;
        }
    }
    for j in i..n {
        out[j] = (x[j] - mean) * rstd * gamma[j] + beta[j];
    }
}

/// GELU (erf form) of 8 values; the same formula as `portable::gelu_one`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn gelu256(x: __m256) -> __m256 {
    use super::portable::{ERF_A, ERF_P};
    let sign = _mm256_set1_ps(-0.0);
    let z = _mm256_mul_ps(
        _mm256_andnot_ps(sign, x),
        _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
    );
    let one = _mm256_set1_ps(1.0);
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), z, one));
    let mut p = _mm256_set1_ps(ERF_A[4]);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[3]));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[2]));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[1]));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[0]));
    let e = exp256(_mm256_xor_ps(_mm256_mul_ps(z, z), sign));
    let q = _mm256_mul_ps(_mm256_mul_ps(t, p), e);
    let pos = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_setzero_ps());
    let r = _mm256_blendv_ps(q, _mm256_sub_ps(_mm256_set1_ps(2.0), q), pos);
    _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), x), r)
}

/// GELU (erf form) in place.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn gelu(x: &mut [f32]) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: accesses at i..i+8 <= n.
    unsafe {
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), gelu256(_mm256_loadu_ps(p.add(i))));
            i += 8;
        }
    }
    for v in &mut x[i..] {
        *v = super::portable::gelu_one(*v);
    }
}

/// Integer dot product of two int8 vectors of equal length: 16 lanes sign-extended to i16,
/// `vpmaddwd` into i32 (products of int8 cannot overflow an i32 pair sum).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len();
    assert!(b.len() == n);
    let mut acc0 = _mm256_setzero_si256();
    let mut acc1 = _mm256_setzero_si256();
    let mut i = 0;
    // SAFETY: every load reads i..i+16 (or i+16..i+32) <= n bytes.
    unsafe {
        while i + 32 <= n {
            let a0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.as_ptr().add(i).cast()));
            let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(i).cast()));
            let a1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.as_ptr().add(i + 16).cast()));
            let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(i + 16).cast()));
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, b0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(a1, b1));
            i += 32;
        }
        if i + 16 <= n {
            let a0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.as_ptr().add(i).cast()));
            let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(i).cast()));
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, b0));
            i += 16;
        }
    }
    let acc = _mm256_add_epi32(acc0, acc1);
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256(acc, 1),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    let mut total = _mm_cvtsi128_si32(s);
    for j in i..n {
        total += i32::from(a[j]) * i32::from(b[j]);
    }
    total
}

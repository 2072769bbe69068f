//! Property tests of the CPU kernels against candle's reference implementations, run at every
//! dispatch level this machine supports.
//!
//! Matmul: random f32 weights are quantized with candle's `GgmlType::from_float`, the raw block
//! bytes become a `QMatrix`, and the result is compared with an f64 product of candle's
//! dequantized weights (`to_float`) and the f32 activations.
//!
//! Tolerance of the quantized matmuls: the kernels quantize each activation block of `B`
//! values (B = 32, or 256 for the K formats) to int8 with step `d = max|x_B|/127`, so every
//! activation moves by at most `d/2`; the exact error of one output is therefore bounded by
//! `Σ_blocks (max|x_B|/254)·Σ_{k∈B}|w_k|`. On top of that the f32 accumulation (and the f32
//! products of scales) contributes a relative error well below `1e-5·Σ|w_k·x_k|`. The tests
//! assert `|out − ref| ≤ 1.01·quant_bound + 1e-5·Σ|w·x| + 1e-6`. F16/F32 weights are not
//! quantized: `|out − ref| ≤ 1e-5·Σ|w·x| + 1e-6`.

use cairn_models::kernels::{
    self, Level, PackedMatrix, Pool, QMatrix, QType, dispatch, matmul, matmul_many, with_level,
};
use candle_core::quantized::k_quants::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8_0, GgmlType,
};
use proptest::prelude::*;

/// Levels to test: every one this CPU supports.
fn levels() -> Vec<Level> {
    dispatch::supported_levels()
}

/// Quantizes `w` with candle's block type `B`; returns the raw GGUF bytes and candle's
/// dequantized weights.
fn quantize_with<B: GgmlType>(w: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let nblocks = w.len() / B::BLCK_SIZE;
    let mut blocks = vec![B::zeros(); nblocks];
    B::from_float(w, &mut blocks);
    let mut deq = vec![0f32; w.len()];
    B::to_float(&blocks, &mut deq);
    // SAFETY: candle's block types are `#[repr(C)]` structs of plain integers/halves whose
    // size candle asserts equals the GGML block size (no padding), so their memory is exactly
    // the GGUF byte layout; we only read it.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            blocks.as_ptr().cast::<u8>(),
            std::mem::size_of_val(&blocks[..]),
        )
    }
    .to_vec();
    (bytes, deq)
}

/// Raw bytes and dequantized values of `w` stored as `ty`.
fn make_weights(ty: QType, w: &[f32]) -> (Vec<u8>, Vec<f32>) {
    match ty {
        QType::Q4_0 => quantize_with::<BlockQ4_0>(w),
        QType::Q4_1 => quantize_with::<BlockQ4_1>(w),
        QType::Q8_0 => quantize_with::<BlockQ8_0>(w),
        QType::Q4K => quantize_with::<BlockQ4K>(w),
        QType::Q5K => quantize_with::<BlockQ5K>(w),
        QType::Q6K => quantize_with::<BlockQ6K>(w),
        QType::F32 => (w.iter().flat_map(|v| v.to_le_bytes()).collect(), w.to_vec()),
        QType::F16 => {
            let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            (
                h.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
    }
}

/// Activation block length of the kernels' int8 quantization (0: none).
fn act_block(ty: QType) -> usize {
    match ty {
        QType::F32 | QType::F16 => 0,
        QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => 32,
        QType::Q4K | QType::Q5K | QType::Q6K => 256,
    }
}

/// Deterministic pseudo-random values in [-scale, scale).
fn rand_vec(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The activation `x` after the kernels' int8 quantization (blocks of `ab`): `d = max|x|/127`,
/// `q = round_half_even(x · (1/d))` in f32, value `q·d`. All levels quantize exactly like this.
fn quantize_acts(x: &[f32], ab: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for xb in x.chunks(ab) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for &v in xb {
            let q = (v * id).round_ties_even().clamp(-127.0, 127.0);
            out.push(q as f64 * d as f64);
        }
    }
    out
}

/// Checks `out` (n × rows) two ways (see the file header):
/// 1. against the exact f64 product with candle's dequantized weights, within the proven
///    bound of int8 activation quantization;
/// 2. against the f64 product with the activations quantized as the kernels do, which leaves
///    only f32 rounding: `|out − ref_q| ≤ 1e-5·Σ_B 2·max|w_B|·Σ|x̂_B|` (block scales and
///    offsets are applied in f32 per block and summed in f32).
#[allow(clippy::too_many_arguments)]
fn check_matmul(
    ty: QType,
    deq: &[f32],
    x: &[f32],
    n: usize,
    rows: usize,
    cols: usize,
    out: &[f32],
    what: &str,
) {
    let ab = act_block(ty);
    for c in 0..n {
        let xr = &x[c * cols..(c + 1) * cols];
        let xq = if ab > 0 {
            quantize_acts(xr, ab)
        } else {
            xr.iter().map(|&v| v as f64).collect()
        };
        for r in 0..rows {
            let wr = &deq[r * cols..(r + 1) * cols];
            let got = out[c * rows + r] as f64;
            // 1. Against float math.
            let exact: f64 = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
            let mag: f64 = wr
                .iter()
                .zip(xr)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            let mut qbound = 0f64;
            if ab > 0 {
                for (wb, xb) in wr.chunks(ab).zip(xr.chunks(ab)) {
                    let amax = xb.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
                    let wsum: f64 = wb.iter().map(|&v| (v as f64).abs()).sum();
                    qbound += amax / 254.0 * wsum;
                }
            }
            let tol = 1.01 * qbound + 1e-5 * mag + 1e-6;
            assert!(
                (got - exact).abs() <= tol,
                "{what}: {ty:?} n={n} rows={rows} cols={cols} at (c={c}, r={r}): got {got}, want {exact} ± {tol}"
            );
            // 2. Against the same int8 activations.
            let refq: f64 = wr.iter().zip(&xq).map(|(&a, &b)| a as f64 * b).sum();
            let blk = if ab > 0 { ab } else { 32 };
            let qmag: f64 = wr
                .chunks(blk)
                .zip(xq.chunks(blk))
                .map(|(wb, xb)| {
                    let wmax = wb.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
                    2.0 * wmax * xb.iter().map(|v| v.abs()).sum::<f64>()
                })
                .sum();
            let tol = 1e-5 * qmag + 1e-6;
            assert!(
                (got - refq).abs() <= tol,
                "{what}: {ty:?} n={n} rows={rows} cols={cols} at (c={c}, r={r}): got {got}, want {refq} ± {tol} (same int8 activations)"
            );
        }
    }
}

fn run_case(ty: QType, rows: usize, cols: usize, n: usize, seed: u64) {
    let w = rand_vec(seed, rows * cols, 1.0);
    let x = rand_vec(seed ^ 0xABCD, n * cols, 2.0);
    let (bytes, deq) = make_weights(ty, &w);
    let m = QMatrix::new(ty, rows, cols, &bytes).expect("valid matrix");
    for pool in [Pool::new(1), Pool::new(3)] {
        for level in levels() {
            let packed = pack(&m, level);
            for (mat, how) in variants(m, &packed) {
                let mut out = vec![f32::NAN; n * rows];
                with_level(level, || matmul(&pool, &mat, &x, n, &mut out))
                    .expect("supported level")
                    .expect("matmul");
                check_matmul(
                    ty,
                    &deq,
                    &x,
                    n,
                    rows,
                    cols,
                    &out,
                    &format!("{level:?}/{how}/{}t", pool.threads()),
                );
            }
        }
    }
}

/// `m` repacked for `level`, where that level has packed kernels for its type.
fn pack(m: &QMatrix<'_>, level: Level) -> Option<PackedMatrix> {
    PackedMatrix::new(m, level).expect("supported level")
}

/// The raw matrix, and the same matrix with its packed copy attached when there is one.
fn variants<'a>(
    m: QMatrix<'a>,
    packed: &'a Option<PackedMatrix>,
) -> Vec<(QMatrix<'a>, &'static str)> {
    let mut v = vec![(m, "raw")];
    if let Some(p) = packed {
        v.push((m.with_packed(p).expect("same shape"), "packed"));
    }
    v
}

const Q32_TYPES: [QType; 3] = [QType::Q4_0, QType::Q4_1, QType::Q8_0];
const K_TYPES: [QType; 3] = [QType::Q4K, QType::Q5K, QType::Q6K];
const F_TYPES: [QType; 2] = [QType::F32, QType::F16];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matmul_q32_matches_candle(ti in 0usize..3, rows in 1usize..40, kb in 1usize..12,
                                 n in prop_oneof![Just(1usize), Just(2), 3usize..12], seed in any::<u64>()) {
        run_case(Q32_TYPES[ti], rows, kb * 32, n, seed);
    }

    #[test]
    fn matmul_kquants_match_candle(ti in 0usize..3, rows in 1usize..20, kb in 1usize..4,
                                   n in prop_oneof![Just(1usize), 2usize..6], seed in any::<u64>()) {
        run_case(K_TYPES[ti], rows, kb * 256, n, seed);
    }

    #[test]
    fn matmul_float_matches(ti in 0usize..2, rows in 1usize..30, cols in 1usize..100,
                            n in prop_oneof![Just(1usize), 2usize..7], seed in any::<u64>()) {
        run_case(F_TYPES[ti], rows, cols, n, seed);
    }
}

#[test]
fn matmul_larger_shapes() {
    // Shapes of the default model (trimmed rows) and a tall prompt, at every level.
    for &(ty, rows, cols, n) in &[
        (QType::Q4_1, 67, 576, 1),
        (QType::Q4_1, 67, 576, 37),
        (QType::Q4_1, 33, 1536, 130),
        (QType::Q8_0, 41, 576, 1),
        (QType::Q8_0, 41, 576, 19),
        (QType::Q4_0, 29, 544, 9),
        // A prompt whose activations are quantized in parts by the 3-thread pool, with an odd
        // number of blocks per row (the pad block of each part's rows).
        (QType::Q4_0, 29, 544, 23),
    ] {
        run_case(ty, rows, cols, n, rows as u64 * 31 + n as u64);
    }
}

#[test]
fn matmul_many_matches_single() {
    let cols = 96;
    let n = 5;
    let x = rand_vec(7, n * cols, 1.5);
    let specs = [
        (QType::Q4_1, 40),
        (QType::Q8_0, 13),
        (QType::Q6K, 0),
        (QType::F16, 9),
        (QType::Q4_0, 1),
    ];
    let mut data = Vec::new();
    for (i, &(ty, rows)) in specs.iter().enumerate() {
        let cols = if act_block(ty) == 256 { 256 } else { cols };
        let (b, _) = make_weights(ty, &rand_vec(100 + i as u64, rows * cols, 1.0));
        data.push((ty, rows, b));
    }
    // Only the weights with matching cols go together.
    let mats: Vec<QMatrix<'_>> = data
        .iter()
        .filter(|(ty, _, _)| act_block(*ty) != 256)
        .map(|(ty, rows, b)| QMatrix::new(*ty, *rows, cols, b).unwrap())
        .collect();
    let pool = Pool::new(2);
    for level in levels() {
        // Packed where the level has packed kernels, so a group mixes packed and raw weights.
        let packed: Vec<Option<PackedMatrix>> = mats.iter().map(|m| pack(m, level)).collect();
        let mats: Vec<QMatrix<'_>> = mats
            .iter()
            .zip(&packed)
            .map(|(m, p)| p.as_ref().map_or(*m, |p| m.with_packed(p).unwrap()))
            .collect();
        with_level(level, || {
            let refs: Vec<&QMatrix<'_>> = mats.iter().collect();
            let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0; n * m.rows()]).collect();
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            matmul_many(&pool, &refs, &x, n, &mut views).unwrap();
            for (m, o) in mats.iter().zip(&outs) {
                let mut single = vec![0.0; n * m.rows()];
                matmul(&pool, m, &x, n, &mut single).unwrap();
                assert_eq!(o, &single, "{level:?} {:?}", m.ty());
            }
        })
        .unwrap();
    }
}

#[test]
fn odd_inputs_do_not_panic() {
    let pool = Pool::new(2);
    for level in levels() {
        with_level(level, || {
            for ty in Q32_TYPES.into_iter().chain(K_TYPES).chain(F_TYPES) {
                let cols = ty.block_size().max(32) * 2;
                // Zero rows.
                let m = QMatrix::new(ty, 0, cols, &[]).unwrap();
                let mut out = vec![];
                matmul(&pool, &m, &vec![1.0; 3 * cols], 3, &mut out).unwrap();
                // n = 0.
                let (b, _) = make_weights(ty, &rand_vec(1, 4 * cols, 1.0));
                let m = QMatrix::new(ty, 4, cols, &b).unwrap();
                matmul(&pool, &m, &[], 0, &mut []).unwrap();
                // NaN and infinities in x: no panic, any values.
                let packed = pack(&m, level);
                for (m, _) in variants(m, &packed) {
                    for n in [1, 5] {
                        let mut x = rand_vec(2, n * cols, 1.0);
                        x[3] = f32::NAN;
                        x[cols - 1] = f32::INFINITY;
                        let mut out = vec![0.0; n * 4];
                        matmul(&pool, &m, &x, n, &mut out).unwrap();
                    }
                }
                // Wrong lengths are errors, not panics.
                assert!(matmul(&pool, &m, &[0.0; 3], 1, &mut [0.0; 4]).is_err());
                assert!(matmul(&pool, &m, &vec![0.0; cols], 1, &mut [0.0; 3]).is_err());
            }
        })
        .unwrap();
    }
    // Invalid matrices are rejected.
    assert!(QMatrix::new(QType::Q4_1, 2, 33, &[0; 40]).is_err());
    assert!(QMatrix::new(QType::Q4_1, 2, 32, &[0; 39]).is_err());
    assert!(QMatrix::new(QType::Q6K, usize::MAX, 256, &[]).is_err());
    assert!(QMatrix::new(QType::Q4_1, 2, 32, &[0; 40]).is_ok());
}

#[test]
fn packed_matrices_are_checked_and_used_only_at_their_level() {
    let (b, deq) = make_weights(QType::Q4_1, &rand_vec(9, 40 * 64, 1.0));
    let m = QMatrix::new(QType::Q4_1, 40, 64, &b).unwrap();
    let (b2, _) = make_weights(QType::Q4_1, &rand_vec(9, 39 * 64, 1.0));
    let other = QMatrix::new(QType::Q4_1, 39, 64, &b2).unwrap();
    for level in dispatch::ALL_LEVELS {
        if !level.is_supported() {
            assert!(PackedMatrix::new(&m, level).is_err(), "{level:?}");
            continue;
        }
        let packed = PackedMatrix::new(&m, level).unwrap();
        assert_eq!(
            packed.is_some(),
            PackedMatrix::supports(level, QType::Q4_1),
            "{level:?}"
        );
        let Some(p) = packed else { continue };
        assert_eq!(
            (p.rows(), p.cols(), p.panels(), p.level()),
            (40, 64, 3, level)
        );
        // A packed copy of another shape is refused.
        assert!(other.with_packed(&p).is_err());
        // At every other level the packed copy is ignored and the raw blocks give the answer.
        let with = m.with_packed(&p).unwrap();
        let x = rand_vec(3, 5 * 64, 1.0);
        for run_at in levels() {
            let mut out = vec![f32::NAN; 5 * 40];
            with_level(run_at, || matmul(&Pool::new(2), &with, &x, 5, &mut out))
                .unwrap()
                .unwrap();
            check_matmul(
                QType::Q4_1,
                &deq,
                &x,
                5,
                40,
                64,
                &out,
                &format!("{level:?} at {run_at:?}"),
            );
        }
    }
    // Types without packed kernels are left as they are.
    for level in levels() {
        let (b, _) = make_weights(QType::Q6K, &rand_vec(1, 2 * 256, 1.0));
        let k = QMatrix::new(QType::Q6K, 2, 256, &b).unwrap();
        assert!(PackedMatrix::new(&k, level).unwrap().is_none());
    }
}

#[test]
fn levels_are_consistent() {
    let ls = levels();
    assert_eq!(ls[0], Level::Portable);
    assert!(ls.contains(&dispatch::detected()));
    for l in dispatch::ALL_LEVELS {
        assert_eq!(Level::from_name(l.name()), Some(l));
        if !l.is_supported() {
            assert!(with_level(l, || ()).is_err());
            assert!(kernels::force_level(l).is_err());
        }
    }
}

#[test]
fn pool_runs_every_task_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for threads in [1, 2, 4] {
        let pool = Pool::new(threads);
        for n_tasks in [0, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n_tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each(n_tasks, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        // Nested use runs inline instead of deadlocking.
        let total = AtomicUsize::new(0);
        pool.for_each(4, |_| {
            pool.for_each(3, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
    }
}

#[test]
fn pool_chunks_cover_the_slice_once() {
    for threads in [1, 2, 3] {
        let pool = Pool::new(threads);
        for (len, chunk) in [(0, 4), (1, 0), (10, 3), (10, 10), (10, 64), (1000, 7)] {
            let mut v = vec![0usize; len];
            pool.for_chunks_mut(&mut v, chunk, |i, piece| {
                for (j, x) in piece.iter_mut().enumerate() {
                    *x += i * chunk.max(1) + j + 1;
                }
            });
            let want: Vec<usize> = (1..=len).collect();
            assert_eq!(v, want, "{threads} threads, len {len}, chunk {chunk}");
        }
    }
}

#[test]
fn pool_propagates_panics() {
    let pool = Pool::new(2);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.for_each(16, |i| {
            if i == 9 {
                panic!("task 9");
            }
        })
    }));
    assert!(r.is_err());
    // The pool still works afterwards.
    let count = std::sync::atomic::AtomicUsize::new(0);
    pool.for_each(10, |_| {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 10);
}

// ---------------------------------------------------------------------------------------------
// Element-wise ops and attention.
// ---------------------------------------------------------------------------------------------

use cairn_models::kernels::ops::{self, AttnShape, RopeLayout, RopeTable};
use candle_core::{Device, Tensor};

fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Runs `f` at every supported level.
fn at_levels(mut f: impl FnMut(Level)) {
    for level in levels() {
        with_level(level, || f(level)).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Tolerance: both sides sum positive squares in f32 (relative error ≤ dim·2⁻²⁴ in the
    /// worst case, far less in practice), then one rsqrt and two products, so
    /// |got − want| ≤ 2e-5·|want| + 1e-7.
    #[test]
    fn rms_norm_matches_candle(rows in 0usize..4, dim in 1usize..100, seed in any::<u64>()) {
        let x = rand_vec(seed, rows * dim, 3.0);
        let w = rand_vec(seed ^ 1, dim, 1.5);
        let eps = 1e-5f32;
        let want = flat(&candle_nn::ops::rms_norm(&tensor(&x, &[rows, dim]), &tensor(&w, &[dim]), eps).unwrap());
        at_levels(|level| {
            let mut out = vec![0.0; rows * dim];
            ops::rms_norm(&x, &w, eps, &mut out).unwrap();
            for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
                assert!((g - e).abs() <= 2e-5 * e.abs() + 1e-7, "{level:?} [{i}] {g} vs {e}");
            }
        });
    }

    /// Tolerance: e^x is a degree-6 polynomial with relative error ≤ 2e-7 after range
    /// reduction, plus f32 sums of ≤ 100 terms: |got − want| ≤ 1e-5·|want| + 1e-7.
    #[test]
    fn softmax_matches_candle(rows in 0usize..4, dim in 1usize..100, seed in any::<u64>()) {
        let x = rand_vec(seed, rows * dim, 8.0);
        let want = flat(&candle_nn::ops::softmax_last_dim(&tensor(&x, &[rows, dim])).unwrap());
        at_levels(|level| {
            let mut out = x.clone();
            ops::softmax(&mut out, dim).unwrap();
            for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
                assert!((g - e).abs() <= 1e-5 * e.abs() + 1e-7, "{level:?} [{i}] {g} vs {e}");
            }
        });
    }

    /// Exact: integer arithmetic at every level.
    #[test]
    fn dot_i8_is_exact(len in 0usize..600, seed in any::<u64>()) {
        let a: Vec<i8> = rand_vec(seed, len, 128.0).iter().map(|x| x.clamp(-128.0, 127.0) as i8).collect();
        let b: Vec<i8> = rand_vec(seed ^ 5, len, 128.0).iter().map(|x| x.clamp(-128.0, 127.0) as i8).collect();
        let want: i32 = a.iter().zip(&b).map(|(x, y)| *x as i32 * *y as i32).sum();
        at_levels(|level| {
            assert_eq!(ops::dot_i8(&a, &b).unwrap(), want, "{level:?} len {len}");
        });
    }

    /// Tolerance: silu needs one e^x (relative error ≤ 2e-7) and a division, so
    /// |got − want| ≤ 1e-5·|a·b| + 1e-30.
    #[test]
    fn silu_mul_matches_candle(len in 0usize..100, seed in any::<u64>()) {
        let a = rand_vec(seed, len, 12.0);
        let b = rand_vec(seed ^ 2, len, 2.0);
        let want = flat(&(candle_nn::ops::silu(&tensor(&a, &[len])).unwrap() * tensor(&b, &[len])).unwrap());
        at_levels(|level| {
            let mut out = vec![0.0; len];
            ops::silu_mul(&a, &b, &mut out).unwrap();
            for i in 0..len {
                let tol = 1e-5 * (a[i] * b[i]).abs() + 1e-30;
                assert!((out[i] - want[i]).abs() <= tol, "{level:?} [{i}] {} vs {}", out[i], want[i]);
            }
        });
    }

    /// Tolerance: each rotated value is x0·cos ∓ x1·sin in f32 on both sides (with or
    /// without FMA), so |got − want| ≤ 1e-6·(|x0| + |x1|) + 1e-7.
    #[test]
    fn rope_matches_candle(n_tokens in 1usize..5, n_heads in 1usize..4, half in 1usize..40,
                           pos0 in 0usize..50, neox in any::<bool>(), seed in any::<u64>()) {
        let d = 2 * half;
        let base = 100_000f32;
        let table = RopeTable::new(d, 64, base).unwrap();
        let x = rand_vec(seed, n_tokens * n_heads * d, 2.0);
        // candle wants [b, h, t, d] and cos/sin [t, d/2].
        let mut xt = vec![0f32; x.len()];
        for t in 0..n_tokens {
            for h in 0..n_heads {
                for i in 0..d {
                    xt[(h * n_tokens + t) * d + i] = x[(t * n_heads + h) * d + i];
                }
            }
        }
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for t in 0..n_tokens {
            cos.extend_from_slice(table.cos(pos0 + t));
            sin.extend_from_slice(table.sin(pos0 + t));
        }
        let xs = tensor(&xt, &[1, n_heads, n_tokens, d]);
        let (c, s) = (tensor(&cos, &[n_tokens, half]), tensor(&sin, &[n_tokens, half]));
        let want = flat(&if neox {
            candle_nn::rotary_emb::rope(&xs, &c, &s).unwrap()
        } else {
            candle_nn::rotary_emb::rope_i(&xs, &c, &s).unwrap()
        });
        let layout = if neox { RopeLayout::Neox } else { RopeLayout::Interleaved };
        at_levels(|level| {
            let mut got = x.clone();
            ops::rope(&mut got, n_tokens, n_heads, pos0, &table, layout).unwrap();
            for t in 0..n_tokens {
                for h in 0..n_heads {
                    for i in 0..d {
                        let g = got[(t * n_heads + h) * d + i];
                        let e = want[(h * n_tokens + t) * d + i];
                        let j = if neox { if i < half { i + half } else { i - half } } else { i ^ 1 };
                        let mag = x[(t * n_heads + h) * d + i].abs() + x[(t * n_heads + h) * d + j].abs();
                        assert!((g - e).abs() <= 1e-6 * mag + 1e-7, "{level:?} t{t} h{h} i{i}: {g} vs {e}");
                    }
                }
            }
        });
    }

    /// Reference: f64 attention. Tolerance: scores are f32 dots of `head_dim` products
    /// (|δs| ≲ head_dim·2⁻²⁴·Σ|q·k|·scale ≤ 3e-5 here), which moves the softmax-weighted
    /// mean of the values by at most max|δs|·max|v|; e^x adds 2e-7 relative. So
    /// |got − want| ≤ 5e-5·max|v| + 1e-6.
    #[test]
    fn attention_matches_reference(hv in 0usize..4, head_dim in prop_oneof![Just(64usize), Just(8), Just(16), Just(12), Just(72)],
                                   n_kv in 1usize..40, n_q in 1usize..6, seed in any::<u64>()) {
        let (n_heads, n_kv_heads) = [(9, 3), (4, 4), (6, 1), (2, 1)][hv];
        let capacity = n_kv + 3;
        let shape = AttnShape { n_heads, n_kv_heads, head_dim, capacity };
        let q = rand_vec(seed, n_q * n_heads * head_dim, 1.0);
        let k = rand_vec(seed ^ 3, n_kv_heads * capacity * head_dim, 1.0);
        let v = rand_vec(seed ^ 4, n_kv_heads * capacity * head_dim, 1.0);
        // Queries are the last n_q positions (a prompt chunk), some beyond n_kv−1.
        let q_pos: Vec<usize> = (0..n_q).map(|t| (n_kv + t).saturating_sub(n_q)).collect();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let vmax = v.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
        let mut want = vec![0f64; q.len()];
        for (t, &p) in q_pos.iter().enumerate() {
            for h in 0..n_heads {
                let kvh = h / (n_heads / n_kv_heads);
                let len = n_kv.min(p + 1);
                let qv = &q[(t * n_heads + h) * head_dim..][..head_dim];
                let s: Vec<f64> = (0..len).map(|j| {
                    let kj = &k[(kvh * capacity + j) * head_dim..][..head_dim];
                    qv.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale as f64
                }).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    let vj = &v[(kvh * capacity + j) * head_dim..][..head_dim];
                    for i in 0..head_dim {
                        want[(t * n_heads + h) * head_dim + i] += ej / z * vj[i] as f64;
                    }
                }
            }
        }
        for pool in [Pool::new(1), Pool::new(3)] {
            at_levels(|level| {
                let mut out = vec![f32::NAN; q.len()];
                ops::attention(&pool, &q, &q_pos, &k, &v, n_kv, shape, scale, &mut out).unwrap();
                for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
                    assert!((g as f64 - e).abs() <= 5e-5 * vmax + 1e-6, "{level:?} [{i}] {g} vs {e}");
                }
            });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Reference: f64 layer norm of the same f32 inputs. Tolerance: the mean and variance
    /// are f32 sums of ≤ 100 terms (relative error ≲ 1e-6 each, taken over values offset by up
    /// to 4 from zero), then one rsqrt, a product and an FMA per value:
    /// |got − want| ≤ 1e-5·|gamma|·(|x̂| + 1) + 1e-6·|beta| + 1e-6.
    #[test]
    fn layer_norm_matches_reference(rows in 0usize..4, dim in 1usize..100, offset in -4.0f32..4.0,
                                    seed in any::<u64>()) {
        let x: Vec<f32> = rand_vec(seed, rows * dim, 3.0).iter().map(|v| v + offset).collect();
        let g = rand_vec(seed ^ 1, dim, 1.5);
        let b = rand_vec(seed ^ 2, dim, 0.5);
        let eps = 1e-12f32;
        let mut want = vec![0f64; x.len()];
        let mut xhat = vec![0f64; x.len()];
        for r in 0..rows {
            let xr = &x[r * dim..(r + 1) * dim];
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            for i in 0..dim {
                let h = (xr[i] as f64 - mean) / (var + eps as f64).sqrt();
                xhat[r * dim + i] = h;
                want[r * dim + i] = h * g[i] as f64 + b[i] as f64;
            }
        }
        at_levels(|level| {
            let mut out = vec![f32::NAN; x.len()];
            ops::layer_norm(&x, &g, &b, eps, &mut out).unwrap();
            for (i, (&o, &e)) in out.iter().zip(&want).enumerate() {
                let j = i % dim;
                let tol = 1e-5 * (g[j].abs() as f64) * (xhat[i].abs() + 1.0)
                    + 1e-6 * b[j].abs() as f64 + 1e-6;
                assert!((o as f64 - e).abs() <= tol, "{level:?} [{i}] {o} vs {e}");
            }
        });
    }

    /// Reference: candle's exact-erf GELU in f64. Tolerance: erf from Abramowitz & Stegun
    /// 7.1.26 is off by ≤ 1.5e-7 (so x·Φ(x) by ≤ 7.5e-8·|x|), e^x by 2e-7 relative, plus a few
    /// f32 roundings: |got − want| ≤ 5e-7·|x| + 1e-6·|want|.
    #[test]
    fn gelu_matches_candle(len in 0usize..100, scale in prop_oneof![Just(1e-3f32), Just(3.0), Just(12.0)],
                           seed in any::<u64>()) {
        let x = rand_vec(seed, len, scale);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let want = Tensor::from_vec(x64, len, &Device::Cpu).unwrap().gelu_erf().unwrap()
            .to_vec1::<f64>().unwrap();
        at_levels(|level| {
            let mut got = x.clone();
            ops::gelu(&mut got);
            for i in 0..len {
                let tol = 5e-7 * x[i].abs() as f64 + 1e-6 * want[i].abs();
                assert!((got[i] as f64 - want[i]).abs() <= tol, "{level:?} gelu({}) = {} vs {}", x[i], got[i], want[i]);
            }
        });
    }

    /// Reference: f64 attention of each sequence over itself. Tolerance as for
    /// `attention_matches_reference`: |got − want| ≤ 5e-5·max|v| + 1e-6.
    #[test]
    fn packed_attention_matches_reference(lens in prop::collection::vec(0usize..20, 1..5),
                                          n_heads in 1usize..4,
                                          head_dim in prop_oneof![Just(32usize), Just(8), Just(12)],
                                          seed in any::<u64>()) {
        let n: usize = lens.iter().sum();
        let w = n_heads * head_dim;
        let q = rand_vec(seed, n * w, 1.0);
        let k = rand_vec(seed ^ 3, n * w, 1.0);
        let v = rand_vec(seed ^ 4, n * w, 1.0);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let vmax = v.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
        let mut want = vec![0f64; n * w];
        let mut t0 = 0;
        for &l in &lens {
            for i in t0..t0 + l {
                for h in 0..n_heads {
                    let qv = &q[i * w + h * head_dim..][..head_dim];
                    let s: Vec<f64> = (t0..t0 + l).map(|j| {
                        let kj = &k[j * w + h * head_dim..][..head_dim];
                        qv.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale as f64
                    }).collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (jj, ej) in e.iter().enumerate() {
                        let vj = &v[(t0 + jj) * w + h * head_dim..][..head_dim];
                        for d in 0..head_dim {
                            want[i * w + h * head_dim + d] += ej / z * vj[d] as f64;
                        }
                    }
                }
            }
            t0 += l;
        }
        for pool in [Pool::new(1), Pool::new(3)] {
            at_levels(|level| {
                let mut out = vec![f32::NAN; n * w];
                ops::packed_attention(&pool, &q, &k, &v, &lens, n_heads, head_dim, scale, &mut out).unwrap();
                for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
                    assert!((g as f64 - e).abs() <= 5e-5 * vmax + 1e-6, "{level:?} [{i}] {g} vs {e}");
                }
            });
        }
    }
}

#[test]
fn encoder_ops_reject_bad_shapes_without_panicking() {
    at_levels(|_| {
        let mut out = vec![0.0; 5];
        assert!(ops::layer_norm(&[1.0; 6], &[1.0; 3], &[0.0; 3], 1e-5, &mut out).is_err());
        assert!(ops::layer_norm(&[1.0; 5], &[1.0; 3], &[0.0; 3], 1e-5, &mut out).is_err());
        assert!(ops::layer_norm(&[1.0; 6], &[1.0; 3], &[0.0; 2], 1e-5, &mut [0.0; 6]).is_err());
        assert!(ops::layer_norm(&[], &[1.0; 3], &[0.0; 3], 1e-5, &mut []).is_ok());
        // A constant row normalises to beta, not NaN.
        let mut o = vec![f32::NAN; 9];
        ops::layer_norm(&[2.5; 9], &[1.0; 9], &[0.25; 9], 1e-12, &mut o).unwrap();
        assert!(o.iter().all(|&v| v == 0.25), "{o:?}");
        let mut g = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e30,
            -1e30,
            1.0,
            -1.0,
        ];
        ops::gelu(&mut g);
        assert!(g[0].is_nan() && g[1] == f32::INFINITY && g[3] == 0.0 && g[6] == 0.0);
        assert!(g[5] == 1e30 && g[7] > 0.84 && g[8] < -0.15);
        let pool = Pool::new(2);
        let bad = |q: usize, k: usize, lens: &[usize]| {
            ops::packed_attention(
                &pool,
                &vec![0.0; q],
                &vec![0.0; k],
                &vec![0.0; k],
                lens,
                2,
                8,
                1.0,
                &mut vec![0.0; q],
            )
            .is_err()
        };
        assert!(bad(32, 32, &[3]));
        assert!(bad(48, 32, &[3]));
        assert!(!bad(48, 48, &[1, 0, 2]));
        assert!(!bad(0, 0, &[]));
        assert!(bad(16, 16, &[usize::MAX, 2]));
    });
}

#[test]
fn ops_reject_bad_shapes_without_panicking() {
    at_levels(|_| {
        let mut out = vec![0.0; 5];
        assert!(ops::rms_norm(&[1.0; 6], &[1.0; 3], 1e-5, &mut out).is_err());
        assert!(ops::rms_norm(&[1.0; 5], &[1.0; 3], 1e-5, &mut out).is_err());
        assert!(ops::rms_norm(&[], &[1.0; 3], 1e-5, &mut []).is_ok());
        assert!(ops::softmax(&mut [1.0; 5], 3).is_err());
        assert!(ops::softmax(&mut [], 3).is_ok());
        assert!(ops::silu_mul(&[1.0; 5], &[1.0; 4], &mut out).is_err());
        assert!(ops::dot_i8(&[1; 5], &[1; 4]).is_err());
        assert!(RopeTable::new(7, 4, 1e4).is_err());
        let t = RopeTable::new(8, 4, 1e4).unwrap();
        assert!(ops::rope(&mut [0.0; 16], 1, 2, 0, &t, RopeLayout::Interleaved).is_ok());
        assert!(ops::rope(&mut [0.0; 16], 1, 2, 4, &t, RopeLayout::Interleaved).is_err());
        assert!(ops::rope(&mut [0.0; 15], 1, 2, 0, &t, RopeLayout::Neox).is_err());
        let pool = Pool::new(2);
        let shape = AttnShape {
            n_heads: 3,
            n_kv_heads: 2,
            head_dim: 8,
            capacity: 4,
        };
        assert!(
            ops::attention(
                &pool,
                &[0.0; 24],
                &[0],
                &[0.0; 64],
                &[0.0; 64],
                1,
                shape,
                1.0,
                &mut [0.0; 24]
            )
            .is_err()
        );
        let shape = AttnShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 8,
            capacity: 4,
        };
        assert!(
            ops::attention(
                &pool,
                &[0.0; 16],
                &[0],
                &[0.0; 32],
                &[0.0; 32],
                5,
                shape,
                1.0,
                &mut [0.0; 16]
            )
            .is_err()
        );
        // NaN input: no panic.
        let mut x = vec![1.0, f32::NAN, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        ops::softmax(&mut x, 9).unwrap();
        let mut o = vec![0.0; 9];
        ops::rms_norm(&x, &[1.0; 9], 1e-5, &mut o).unwrap();
        ops::silu_mul(&x, &x, &mut o).unwrap();
        // Zero queries and zero valid positions.
        assert!(
            ops::attention(
                &pool,
                &[],
                &[],
                &[0.0; 32],
                &[0.0; 32],
                0,
                shape,
                1.0,
                &mut []
            )
            .is_ok()
        );
        let mut out = vec![1.0; 16];
        ops::attention(
            &pool,
            &[0.5; 16],
            &[3],
            &[0.0; 32],
            &[0.0; 32],
            0,
            shape,
            1.0,
            &mut out,
        )
        .unwrap();
        assert!(out.iter().all(|&v| v == 0.0));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A token's output does not depend on how many tokens share the call (decode path for one
    /// token, blocked GEMM for many): bit for bit, at every level. This is what makes a seeded
    /// reply the same whether or not its prompt came from the KV cache.
    #[test]
    fn one_token_equals_its_row_of_a_batch(ti in 0usize..8, rows in 1usize..24, kb in 1usize..6,
                                           n in 3usize..9, pick in 0usize..8, seed in any::<u64>()) {
        let ty = [QType::Q4_0, QType::Q4_1, QType::Q8_0, QType::Q4K, QType::Q5K, QType::Q6K,
                  QType::F32, QType::F16][ti];
        let cols = match act_block(ty) { 0 => kb * 16 + 3, b => kb * b };
        let (wb, _) = make_weights(ty, &rand_vec(seed, rows * cols, 1.0));
        let w = QMatrix::new(ty, rows, cols, &wb).unwrap();
        let x = rand_vec(seed ^ 0x5555, n * cols, 2.0);
        let c = pick % n;
        let pool = Pool::new(2);
        for level in levels() {
            let packed = pack(&w, level);
            for (w, how) in variants(w, &packed) {
                let (batch, one) = with_level(level, || {
                    let mut batch = vec![0f32; n * rows];
                    matmul(&pool, &w, &x, n, &mut batch).unwrap();
                    let mut one = vec![0f32; rows];
                    matmul(&pool, &w, &x[c * cols..(c + 1) * cols], 1, &mut one).unwrap();
                    (batch, one)
                }).unwrap();
                for r in 0..rows {
                    let (a, b) = (one[r], batch[c * rows + r]);
                    prop_assert!(a == b, "{:?}/{} {:?} {}x{} n={}: row {} token {}: {} vs {}", level, how, ty, rows, cols, n, r, c, a, b);
                }
            }
        }
    }
}

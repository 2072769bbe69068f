//! Element-wise ops and attention of a llama-style forward pass, on f32 slices.
//!
//! Every op validates its slice lengths and returns an error instead of panicking, and runs
//! at the level selected by [`crate::kernels::dispatch`] (portable or SIMD).
//!
//! - [`rms_norm`]: `out = x / sqrt(mean(x²) + eps) · weight`, per row.
//! - [`rope`] with [`RopeTable`]: rotary position embedding, interleaved pairs (llama GGUF,
//!   candle's `rope_i`) or NeoX half-split pairs (candle's `rope`).
//! - [`silu_mul`]: `out = silu(a) · b` (the SwiGLU gate).
//! - [`softmax`]: row-wise softmax in place.
//! - [`attention`]: causal scaled-dot-product attention with grouped-query heads over an f32
//!   KV cache, parallel over heads and query chunks.
//! - [`layer_norm`]: `out = (x − mean) / sqrt(var + eps) · gamma + beta`, per row (BERT).
//! - [`gelu`]: `x·Φ(x)` with the exact erf form (BERT's `gelu`), in place.
//! - [`packed_attention`]: bidirectional attention of several sequences packed back to back
//!   without padding (encoder models), parallel over sequences and heads.

use std::cell::RefCell;

use super::KernelError;
use super::arch;
use super::dispatch;
use super::pool::Pool;

fn check(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Shape {
            what,
            expected,
            got,
        })
    }
}

/// RMS normalization of each row of `x` (rows of `weight.len()`), times `weight`, into `out`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    let dim = weight.len();
    check("rms_norm out", x.len(), out.len())?;
    if dim == 0 {
        return if x.is_empty() {
            Ok(())
        } else {
            Err(KernelError::Invalid("rms_norm: empty weight"))
        };
    }
    if !x.len().is_multiple_of(dim) {
        return Err(KernelError::Invalid(
            "rms_norm: x is not a whole number of rows",
        ));
    }
    let level = dispatch::level();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        arch::rms_norm_row(level, xr, weight, eps, or);
    }
    Ok(())
}

/// How rotary embedding pairs up the values of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(x[2i], x[2i+1])`: llama GGUF weights, candle's `rope_i`.
    Interleaved,
    /// Pairs `(x[i], x[i + d/2])`: NeoX / HF layout, candle's `rope`.
    Neox,
}

/// Precomputed cos/sin of the rotary angles `pos · base^(−2i/d)` for positions
/// `0..max_positions` and `i < d/2`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    head_dim: usize,
    max_positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Builds the table for `head_dim` (even) and `freq_base` (e.g. 10000 or 100000).
    pub fn new(head_dim: usize, max_positions: usize, freq_base: f32) -> Result<Self, KernelError> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(KernelError::Invalid(
                "rope: head_dim must be even and non-zero",
            ));
        }
        let half = head_dim / 2;
        let len = max_positions
            .checked_mul(half)
            .ok_or(KernelError::Invalid("rope: table too large"))?;
        let mut cos = Vec::with_capacity(len);
        let mut sin = Vec::with_capacity(len);
        let inv: Vec<f64> = (0..half)
            .map(|i| 1.0 / (freq_base as f64).powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        for p in 0..max_positions {
            for &f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(RopeTable {
            head_dim,
            max_positions,
            cos,
            sin,
        })
    }

    /// Head dimension the table was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Number of positions covered.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// cos of position `p` (`head_dim/2` values).
    pub fn cos(&self, p: usize) -> &[f32] {
        let h = self.head_dim / 2;
        &self.cos[p * h..(p + 1) * h]
    }

    /// sin of position `p` (`head_dim/2` values).
    pub fn sin(&self, p: usize) -> &[f32] {
        let h = self.head_dim / 2;
        &self.sin[p * h..(p + 1) * h]
    }
}

/// Applies rotary embedding in place to `x` = `[n_tokens × n_heads × head_dim]`, token `t`
/// at position `pos0 + t`.
pub fn rope(
    x: &mut [f32],
    n_tokens: usize,
    n_heads: usize,
    pos0: usize,
    table: &RopeTable,
    layout: RopeLayout,
) -> Result<(), KernelError> {
    let d = table.head_dim;
    let expected = n_tokens
        .checked_mul(n_heads)
        .and_then(|v| v.checked_mul(d))
        .ok_or(KernelError::Invalid("rope: shape overflows"))?;
    check("rope x", expected, x.len())?;
    if n_tokens > 0 && pos0 + n_tokens > table.max_positions {
        return Err(KernelError::Invalid("rope: position beyond the table"));
    }
    let level = dispatch::level();
    for t in 0..n_tokens {
        let (cos, sin) = (table.cos(pos0 + t), table.sin(pos0 + t));
        for h in 0..n_heads {
            let v = &mut x[(t * n_heads + h) * d..(t * n_heads + h + 1) * d];
            arch::rope_head(level, v, cos, sin, layout);
        }
    }
    Ok(())
}

/// Rotates one head `v` (its first `2·cos.len()` values, for partial rotary models) by the
/// angles whose cos/sin are given.
pub fn rope_head(
    v: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    layout: RopeLayout,
) -> Result<(), KernelError> {
    check("rope sin", cos.len(), sin.len())?;
    let rot = cos.len() * 2;
    if rot > v.len() {
        return Err(KernelError::Invalid(
            "rope: more angles than the head has pairs",
        ));
    }
    arch::rope_head(dispatch::level(), &mut v[..rot], cos, sin, layout);
    Ok(())
}

/// Integer dot product of two int8 vectors (vector search over quantized embeddings).
pub fn dot_i8(a: &[i8], b: &[i8]) -> Result<i32, KernelError> {
    check("dot_i8 b", a.len(), b.len())?;
    Ok(arch::dot_i8(dispatch::level(), a, b))
}

/// `out[i] = silu(a[i]) · b[i]` with `silu(v) = v / (1 + e^(−v))`.
pub fn silu_mul(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    check("silu_mul b", a.len(), b.len())?;
    check("silu_mul out", a.len(), out.len())?;
    arch::silu_mul(dispatch::level(), a, b, out);
    Ok(())
}

/// Softmax of each row of `x` (rows of `dim`) in place.
pub fn softmax(x: &mut [f32], dim: usize) -> Result<(), KernelError> {
    if dim == 0 {
        return if x.is_empty() {
            Ok(())
        } else {
            Err(KernelError::Invalid("softmax: dim is zero"))
        };
    }
    if !x.len().is_multiple_of(dim) {
        return Err(KernelError::Invalid(
            "softmax: x is not a whole number of rows",
        ));
    }
    let level = dispatch::level();
    for row in x.chunks_exact_mut(dim) {
        arch::softmax_row(level, row);
    }
    Ok(())
}

/// Shape of an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Positions allocated per KV head in the caches.
    pub capacity: usize,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Causal scaled-dot-product attention for one sequence over a KV cache.
///
/// - `q`: `[n_q × n_heads × head_dim]` (already rotated);
/// - `k_cache`, `v_cache`: `[n_kv_heads × capacity × head_dim]`, positions `0..n_kv` valid;
/// - `q_pos[t]`: position of query `t`; it attends to positions `0..=min(q_pos[t], n_kv−1)`;
/// - `scale`: usually `1/sqrt(head_dim)`;
/// - `out`: `[n_q × n_heads × head_dim]`.
///
/// Query head `h` reads KV head `h / (n_heads / n_kv_heads)`. Runs in parallel over heads and
/// chunks of queries on `pool`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &Pool,
    q: &[f32],
    q_pos: &[usize],
    k_cache: &[f32],
    v_cache: &[f32],
    n_kv: usize,
    shape: AttnShape,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let AttnShape {
        n_heads,
        n_kv_heads,
        head_dim,
        capacity,
    } = shape;
    if n_kv_heads == 0 || n_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(KernelError::Invalid(
            "attention: n_heads must be a multiple of n_kv_heads",
        ));
    }
    if n_kv > capacity {
        return Err(KernelError::Invalid("attention: n_kv exceeds capacity"));
    }
    let n_q = q_pos.len();
    let qlen = n_q
        .checked_mul(n_heads)
        .and_then(|v| v.checked_mul(head_dim))
        .ok_or(KernelError::Invalid("attention: shape overflows"))?;
    check("attention q", qlen, q.len())?;
    check("attention out", qlen, out.len())?;
    let kvlen = n_kv_heads
        .checked_mul(capacity)
        .and_then(|v| v.checked_mul(head_dim))
        .ok_or(KernelError::Invalid("attention: shape overflows"))?;
    check("attention k_cache", kvlen, k_cache.len())?;
    check("attention v_cache", kvlen, v_cache.len())?;
    if qlen == 0 {
        return Ok(());
    }
    let level = dispatch::level();
    let group = n_heads / n_kv_heads;
    // Query chunks: enough tasks for the pool, but whole heads for decode.
    let qchunk = if n_q <= 1 {
        1
    } else {
        let want = pool.threads() * 4;
        let per_head = want.div_ceil(n_heads).max(1);
        n_q.div_ceil(per_head).clamp(1, 32)
    };
    let nqc = n_q.div_ceil(qchunk);
    let optr = super::matmul::OutPtr {
        ptr: out.as_mut_ptr(),
        len: out.len(),
    };
    let task = |t: usize| {
        let h = t / nqc;
        let qc = t % nqc;
        let kvh = h / group;
        let kh = &k_cache[kvh * capacity * head_dim..(kvh + 1) * capacity * head_dim];
        let vh = &v_cache[kvh * capacity * head_dim..(kvh + 1) * capacity * head_dim];
        SCORES.with(|s| {
            let mut local = Vec::new();
            let mut guard = s.try_borrow_mut().ok();
            let scores: &mut Vec<f32> = match guard.as_deref_mut() {
                Some(v) => v,
                None => &mut local,
            };
            if scores.len() < n_kv {
                scores.resize(n_kv, 0.0);
            }
            for (qi, &pos) in q_pos
                .iter()
                .enumerate()
                .take(((qc + 1) * qchunk).min(n_q))
                .skip(qc * qchunk)
            {
                let len = n_kv.min(pos.saturating_add(1));
                let off = (qi * n_heads + h) * head_dim;
                // SAFETY: each (query, head) output row is written by exactly one task.
                let o = unsafe { optr.slice(off, head_dim) };
                let qv = &q[off..off + head_dim];
                if len == 0 {
                    o.fill(0.0);
                    continue;
                }
                arch::attend(
                    level,
                    qv,
                    kh,
                    vh,
                    len,
                    head_dim,
                    scale,
                    &mut scores[..len],
                    o,
                );
            }
        });
    };
    pool.run(n_heads * nqc, &task);
    Ok(())
}

/// Layer normalization of each row of `x` (rows of `gamma.len()`):
/// `out = (x − mean) / sqrt(var + eps) · gamma + beta`, with the biased variance.
pub fn layer_norm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let dim = gamma.len();
    check("layer_norm beta", dim, beta.len())?;
    check("layer_norm out", x.len(), out.len())?;
    if dim == 0 {
        return if x.is_empty() {
            Ok(())
        } else {
            Err(KernelError::Invalid("layer_norm: empty gamma"))
        };
    }
    if !x.len().is_multiple_of(dim) {
        return Err(KernelError::Invalid(
            "layer_norm: x is not a whole number of rows",
        ));
    }
    let level = dispatch::level();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        arch::layer_norm_row(level, xr, gamma, beta, eps, or);
    }
    Ok(())
}

/// GELU in place, the exact (erf) form: `x/2 · (1 + erf(x/√2))`, with erf from Abramowitz &
/// Stegun 7.1.26 (absolute error ≤ 1.5e-7).
pub fn gelu(x: &mut [f32]) {
    arch::gelu(dispatch::level(), x);
}

thread_local! {
    static KV_HEAD: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Bidirectional scaled-dot-product attention of sequences packed back to back.
///
/// - `q`, `k`, `v`, `out`: `[n_tokens × n_heads × head_dim]`; sequence `s` owns the
///   `seq_lens[s]` tokens after those of sequences `0..s` (`Σ seq_lens = n_tokens`);
/// - every query attends to every token of its own sequence, and to no other (no padding, so
///   no mask).
///
/// Runs one task per (sequence, head) on `pool`.
#[allow(clippy::too_many_arguments)]
pub fn packed_attention(
    pool: &Pool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq_lens: &[usize],
    n_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let n_tokens = seq_lens
        .iter()
        .try_fold(0usize, |a, &l| a.checked_add(l))
        .ok_or(KernelError::Invalid("packed_attention: lengths overflow"))?;
    let width = n_heads
        .checked_mul(head_dim)
        .ok_or(KernelError::Invalid("packed_attention: shape overflows"))?;
    let len = n_tokens
        .checked_mul(width)
        .ok_or(KernelError::Invalid("packed_attention: shape overflows"))?;
    check("packed_attention q", len, q.len())?;
    check("packed_attention k", len, k.len())?;
    check("packed_attention v", len, v.len())?;
    check("packed_attention out", len, out.len())?;
    if len == 0 {
        return Ok(());
    }
    let mut starts = Vec::with_capacity(seq_lens.len());
    let mut acc = 0;
    for &l in seq_lens {
        starts.push(acc);
        acc += l;
    }
    let level = dispatch::level();
    let optr = super::matmul::OutPtr {
        ptr: out.as_mut_ptr(),
        len: out.len(),
    };
    let task = |t: usize| {
        let s = t / n_heads;
        let h = t % n_heads;
        let (t0, l) = (starts[s], seq_lens[s]);
        if l == 0 {
            return;
        }
        let with_buf = |buf: &mut Vec<f32>| {
            // Scratch: this head's keys, values (each l × head_dim) and l scores.
            buf.resize(2 * l * head_dim + l, 0.0);
            let (kh, rest) = buf.split_at_mut(l * head_dim);
            let (vh, scores) = rest.split_at_mut(l * head_dim);
            for j in 0..l {
                let src = (t0 + j) * width + h * head_dim;
                kh[j * head_dim..(j + 1) * head_dim].copy_from_slice(&k[src..src + head_dim]);
                vh[j * head_dim..(j + 1) * head_dim].copy_from_slice(&v[src..src + head_dim]);
            }
            for i in 0..l {
                let off = (t0 + i) * width + h * head_dim;
                // SAFETY: each (token, head) output row is written by exactly one task.
                let o = unsafe { optr.slice(off, head_dim) };
                arch::attend(
                    level,
                    &q[off..off + head_dim],
                    kh,
                    vh,
                    l,
                    head_dim,
                    scale,
                    scores,
                    o,
                );
            }
        };
        KV_HEAD.with(|cell| match cell.try_borrow_mut() {
            Ok(mut b) => with_buf(&mut b),
            Err(_) => with_buf(&mut Vec::new()),
        });
    };
    pool.run(seq_lens.len() * n_heads, &task);
    Ok(())
}

//! The model's element-wise steps on f32 slices: RMS norm, rotary embedding, gated SiLU, and
//! causal grouped-query attention over the KV cache (parallel over heads).

use crate::kernels::{KernelError, Pool};

/// `out = x / rms(x) · weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// Rotates the first `rope_dim` values of one head: interleaved pairs `(x[2i], x[2i+1])`
/// (llama's GGUF layout) or NeoX halves `(x[i], x[i + rope_dim/2])`.
pub fn rope(v: &mut [f32], cos: &[f32], sin: &[f32], rope_dim: usize, neox: bool) {
    let half = rope_dim / 2;
    for i in 0..half.min(cos.len()).min(sin.len()) {
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        if b >= v.len() {
            break;
        }
        let (x0, x1) = (v[a], v[b]);
        v[a] = x0 * cos[i] - x1 * sin[i];
        v[b] = x0 * sin[i] + x1 * cos[i];
    }
}

/// `out = silu(gate) · up`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Positions the cache holds per head.
    pub capacity: usize,
    /// Position of the first query token.
    pub start: usize,
    /// Query tokens.
    pub n_tokens: usize,
}

/// Causal attention for `n_tokens` queries at positions `start..`, against cached keys and
/// values `[kv_heads × capacity × head_dim]` already holding positions `0..start + n_tokens`.
/// `q` and `out` are `[n_tokens × heads × head_dim]`.
pub fn attention(
    pool: &Pool,
    s: &AttentionSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (hd, heads) = (s.head_dim, s.heads);
    if s.kv_heads == 0
        || heads % s.kv_heads != 0
        || q.len() != s.n_tokens * heads * hd
        || out.len() != q.len()
    {
        return Err(KernelError::Invalid("attention: shapes do not match"));
    }
    if k.len() < s.kv_heads * s.capacity * hd
        || v.len() < s.kv_heads * s.capacity * hd
        || s.start + s.n_tokens > s.capacity
    {
        return Err(KernelError::Invalid("attention: cache too small"));
    }
    let group = heads / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let out_ptr = SendPtr(out.as_mut_ptr());
    // One task per (token, head): each writes its own disjoint head_dim slice of `out`.
    pool.for_each(s.n_tokens * heads, |task| {
        let (t, h) = (task / heads, task % heads);
        let kvh = h / group;
        let qv = &q[(t * heads + h) * hd..][..hd];
        let len = s.start + t + 1;
        let kb = &k[kvh * s.capacity * hd..];
        let vb = &v[kvh * s.capacity * hd..];
        let mut scores = Vec::with_capacity(len);
        let mut max = f32::NEG_INFINITY;
        for p in 0..len {
            let kr = &kb[p * hd..][..hd];
            let dot: f32 = qv.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale;
            max = max.max(dot);
            scores.push(dot);
        }
        let mut sum = 0.0;
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        let mut acc = vec![0f32; hd];
        for (p, sc) in scores.iter().enumerate() {
            let w = sc / sum;
            for (a, x) in acc.iter_mut().zip(&vb[p * hd..][..hd]) {
                *a += w * x;
            }
        }
        // SAFETY: task (t, h) owns out[(t*heads + h)*hd .. +hd]; tasks are distinct, so no two
        // threads write the same element, and `out` outlives `for_each`, which joins.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add((t * heads + h) * hd), hd) };
        dst.copy_from_slice(&acc);
    });
    Ok(())
}

/// A raw pointer that may cross threads (the writer guarantees disjoint use).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes inside `attention`, which joins before returning.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_scales_to_unit_rms() {
        let x = [3.0, 4.0];
        let mut o = [0.0; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut o);
        let rms = (12.5f32).sqrt();
        assert!((o[0] - 3.0 / rms).abs() < 1e-6 && (o[1] - 8.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs() {
        let mut v = [1.0, 0.0, 1.0, 0.0];
        rope(&mut v, &[0.0, 1.0], &[1.0, 0.0], 4, false);
        assert_eq!(v, [0.0, 1.0, 1.0, 0.0]);
        let mut v = [1.0, 1.0, 0.0, 0.0];
        rope(&mut v, &[0.0, 1.0], &[1.0, 0.0], 4, true);
        assert_eq!(v, [0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let pool = Pool::new(2);
        let s = AttentionSpec {
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
            capacity: 4,
            start: 0,
            n_tokens: 1,
        };
        let mut k = vec![0.0; 8];
        let mut v = vec![0.0; 8];
        k[..2].copy_from_slice(&[1.0, 0.0]);
        v[..2].copy_from_slice(&[5.0, 7.0]);
        let q = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0.0; 4];
        attention(&pool, &s, &q, &k, &v, &mut out).unwrap();
        assert_eq!(out, [5.0, 7.0, 5.0, 7.0]);
        let bad = AttentionSpec { kv_heads: 3, ..s };
        assert!(attention(&pool, &bad, &q, &k, &v, &mut out).is_err());
    }
}

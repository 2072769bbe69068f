//! The CPU path of the model: candle custom ops whose forward runs Cairn's kernels on the
//! tensors' storage. Tensors stay the interface between steps; each op reads its input slice
//! (contiguous, any offset) and returns a new storage.

use crate::kernels::{self, Pool, QMatrix};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, InplaceOp2, Layout, Result, Shape};
use std::cell::RefCell;

/// The contiguous f32 slice behind a tensor, or an error for other layouts and types.
pub(super) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(all) = storage else {
        candle_core::bail!("{op}: expects f32 input");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: expects a contiguous input");
    };
    all.get(start..end)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: storage shorter than its layout")))
}

fn kernel_err(op: &str, e: kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {e}"))
}

/// `x[n × cols] · Wᵀ` for one or more weights sharing `x`; the outputs are concatenated as
/// `[n × rows₀][n × rows₁]…` in one flat tensor.
pub(super) struct Linear<'a> {
    pub pool: &'a Pool,
    pub weights: Vec<QMatrix<'a>>,
    pub biases: Vec<Option<&'a [f32]>>,
}

impl CustomOp1 for Linear<'_> {
    fn name(&self) -> &'static str {
        "cairn-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let cols = self.weights.first().map_or(0, |w| w.cols());
        if cols == 0 || x.len() % cols != 0 {
            candle_core::bail!(
                "cairn-linear: input of {} values for {cols} columns",
                x.len()
            );
        }
        let n = x.len() / cols;
        let total: usize = self.weights.iter().map(|w| n * w.rows()).sum();
        let mut out = vec![0f32; total];
        {
            let mut parts: Vec<&mut [f32]> = Vec::with_capacity(self.weights.len());
            let mut rest = out.as_mut_slice();
            for w in &self.weights {
                let (head, tail) = rest.split_at_mut(n * w.rows());
                parts.push(head);
                rest = tail;
            }
            let ws: Vec<&QMatrix<'_>> = self.weights.iter().collect();
            kernels::matmul_many(self.pool, &ws, x, n, &mut parts)
                .map_err(|e| kernel_err(self.name(), e))?;
            for (part, (w, b)) in parts.iter_mut().zip(self.weights.iter().zip(&self.biases)) {
                if let Some(b) = b {
                    for row in part.chunks_exact_mut(w.rows()) {
                        for (o, bi) in row.iter_mut().zip(b.iter()) {
                            *o += bi;
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(total)))
    }
}

/// The residual connection, in place: `x += y`. On the calling thread: candle's own binary
/// ops wake its thread pool, whose spinning workers take cores from the kernels' pool.
pub(super) struct Residual;

impl InplaceOp2 for Residual {
    fn name(&self) -> &'static str {
        "cairn-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let y = f32_slice(s2, l2, self.name())?;
        let CpuStorage::F32(all) = s1 else {
            candle_core::bail!("cairn-residual: expects f32 input");
        };
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("cairn-residual: expects a contiguous input");
        };
        let x = all.get_mut(start..end).ok_or_else(|| {
            candle_core::Error::Msg("cairn-residual: storage shorter than its layout".into())
        })?;
        if x.len() != y.len() {
            candle_core::bail!("cairn-residual: {} values plus {}", x.len(), y.len());
        }
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
        Ok(())
    }
}

/// RMS normalisation of each row, times a weight.
pub(super) struct RmsNorm<'a> {
    pub weight: &'a [f32],
    pub eps: f32,
}

impl CustomOp1 for RmsNorm<'_> {
    fn name(&self) -> &'static str {
        "cairn-rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let d = self.weight.len();
        if d == 0 || x.len() % d != 0 {
            candle_core::bail!("cairn-rms-norm: {} values for rows of {d}", x.len());
        }
        let mut out = vec![0f32; x.len()];
        kernels::ops::rms_norm(x, self.weight, self.eps, &mut out)
            .map_err(|e| kernel_err(self.name(), e))?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Rotary position embedding for `n` tokens at positions `start..start + n`, on a tensor of
/// `n × heads × head_dim`.
pub(super) struct Rope<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub head_dim: usize,
    pub rope_dim: usize,
    pub start: usize,
    pub neox: bool,
}

impl CustomOp1 for Rope<'_> {
    fn name(&self) -> &'static str {
        "cairn-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let dims = layout.shape().dims();
        let (n, heads) = match dims {
            [n, h, d] if *d == self.head_dim => (*n, *h),
            _ => candle_core::bail!(
                "cairn-rope: expects [tokens, heads, {}], got {dims:?}",
                self.head_dim
            ),
        };
        let half = self.rope_dim / 2;
        if (self.start + n) * half > self.cos.len() {
            candle_core::bail!("cairn-rope: position {} beyond the context", self.start + n);
        }
        let mut out = x.to_vec();
        let layout_kind = if self.neox {
            kernels::ops::RopeLayout::Neox
        } else {
            kernels::ops::RopeLayout::Interleaved
        };
        for t in 0..n {
            let pos = self.start + t;
            let cos = &self.cos[pos * half..(pos + 1) * half];
            let sin = &self.sin[pos * half..(pos + 1) * half];
            for h in 0..heads {
                let v = &mut out[(t * heads + h) * self.head_dim..][..self.head_dim];
                kernels::ops::rope_head(v, cos, sin, layout_kind)
                    .map_err(|e| kernel_err(self.name(), e))?;
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// silu(gate) · up, where the input is the concatenated `[n × ff][n × ff]` of gate and up.
pub(super) struct SiluMul<'a> {
    pub pool: &'a Pool,
    pub ff: usize,
}

impl CustomOp1 for SiluMul<'_> {
    fn name(&self) -> &'static str {
        "cairn-silu-mul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        if self.ff == 0 || x.len() % (2 * self.ff) != 0 {
            candle_core::bail!("cairn-silu-mul: {} values for 2 × {}", x.len(), self.ff);
        }
        let n = x.len() / (2 * self.ff);
        let (gate, up) = x.split_at(n * self.ff);
        let mut out = vec![0f32; n * self.ff];
        // Rows split across the pool: on one thread this is a tenth of a prompt's serial time.
        let rows = n.div_ceil(self.pool.threads()).max(1);
        let failed = std::sync::OnceLock::new();
        self.pool.for_chunks_mut(&mut out, rows * self.ff, |i, o| {
            let at = i * rows * self.ff;
            let (g, u) = (&gate[at..at + o.len()], &up[at..at + o.len()]);
            if let Err(e) = kernels::ops::silu_mul(g, u, o) {
                let _ = failed.set(e);
            }
        });
        if let Some(e) = failed.into_inner() {
            return Err(kernel_err(self.name(), e));
        }
        Ok((CpuStorage::F32(out), Shape::from((n, self.ff))))
    }
}

/// One layer's key/value cache: `[n_kv_heads × capacity × head_dim]` each.
#[derive(Debug)]
pub struct LayerCache {
    /// Keys.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
}

/// Appends `n` tokens' keys and values at `start` and runs causal grouped-query attention
/// for their queries. Inputs: q `[n × heads × head_dim]` (op input), k and v
/// `[n × kv_heads × head_dim]` (second input: k and v concatenated).
pub(super) struct Attention<'a> {
    pub pool: &'a Pool,
    pub cache: &'a RefCell<LayerCache>,
    pub capacity: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub start: usize,
}

impl CustomOp2 for Attention<'_> {
    fn name(&self) -> &'static str {
        "cairn-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        kvs: &CpuStorage,
        kvl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = f32_slice(qs, ql, self.name())?;
        let kv = f32_slice(kvs, kvl, self.name())?;
        let (hd, kvh) = (self.head_dim, self.kv_heads);
        let n = q.len() / (self.heads * hd);
        if n == 0 || q.len() != n * self.heads * hd || kv.len() != 2 * n * kvh * hd {
            candle_core::bail!(
                "cairn-attention: q of {} and kv of {} values do not fit",
                q.len(),
                kv.len()
            );
        }
        if self.start + n > self.capacity {
            candle_core::bail!(
                "cairn-attention: {} positions exceed the cache of {}",
                self.start + n,
                self.capacity
            );
        }
        let mut cache = self.cache.borrow_mut();
        let (knew, vnew) = kv.split_at(n * kvh * hd);
        for t in 0..n {
            for h in 0..kvh {
                let src = (t * kvh + h) * hd;
                let dst = (h * self.capacity + self.start + t) * hd;
                cache.k[dst..dst + hd].copy_from_slice(&knew[src..src + hd]);
                cache.v[dst..dst + hd].copy_from_slice(&vnew[src..src + hd]);
            }
        }
        let mut out = vec![0f32; q.len()];
        let q_pos: Vec<usize> = (self.start..self.start + n).collect();
        let shape = kernels::ops::AttnShape {
            n_heads: self.heads,
            n_kv_heads: kvh,
            head_dim: hd,
            capacity: self.capacity,
        };
        let scale = 1.0 / (hd as f32).sqrt();
        kernels::ops::attention(
            self.pool,
            q,
            &q_pos,
            &cache.k,
            &cache.v,
            self.start + n,
            shape,
            scale,
            &mut out,
        )
        .map_err(|e| kernel_err(self.name(), e))?;
        Ok((CpuStorage::F32(out), Shape::from((n, self.heads * hd))))
    }
}

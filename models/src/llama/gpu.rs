//! The device-generic path: the same forward pass with candle's quantized matmul and ops, used
//! on CUDA and Metal. It runs on candle's CPU device too, where tests use it as an independent
//! reference for the kernel path.

use super::{Llama, ModelError, Sequence, candle_dtype};
use candle_core::quantized::{QMatMul, ggml_file::qtensor_from_ggml};
use candle_core::{DType, Device, IndexOp, Module, Tensor};

struct GpuBlock {
    attn_norm: Tensor,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    bias: Option<[Tensor; 3]>,
    o: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// The model's weights on a device.
pub(super) struct GpuWeights {
    embd: Tensor,
    blocks: Vec<GpuBlock>,
    output_norm: Tensor,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
}

/// Per-layer keys and values `[1, kv_heads, tokens, head_dim]` on the device.
pub(super) struct GpuCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl GpuCache {
    pub(super) fn new(layers: usize, _dev: &Device) -> GpuCache {
        GpuCache {
            layers: vec![None; layers],
        }
    }

    pub(super) fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            if let Some((k, v)) = l.take()
                && len > 0
                && let (Ok(k), Ok(v)) = (k.narrow(2, 0, len), v.narrow(2, 0, len))
            {
                *l = Some((k, v));
            }
        }
    }
}

impl GpuWeights {
    pub(super) fn load(m: &Llama, dev: &Device) -> Result<GpuWeights, ModelError> {
        let f = &*m.file;
        let c = &m.config;
        if c.rope_dim != c.head_dim {
            return Err(ModelError::Invalid(
                "partial rotary embeddings are CPU-only".into(),
            ));
        }
        let qmm = |name: &str| -> Result<QMatMul, ModelError> {
            let t = f.tensor(name)?;
            let dims = t.dims.iter().rev().map(|d| *d as usize).collect::<Vec<_>>();
            let q = qtensor_from_ggml(candle_dtype(t.ty), f.tensor_data(t), dims, dev)?;
            Ok(QMatMul::from_qtensor(q)?)
        };
        let vecd = |v: &[f32]| Tensor::new(v, dev);
        let mut blocks = Vec::new();
        for (i, b) in m.blocks.iter().enumerate() {
            let p = |n: &str| format!("blk.{i}.{n}");
            blocks.push(GpuBlock {
                attn_norm: vecd(&b.attn_norm)?,
                q: qmm(&p("attn_q.weight"))?,
                k: qmm(&p("attn_k.weight"))?,
                v: qmm(&p("attn_v.weight"))?,
                bias: match &b.qkv_bias {
                    Some([q, k, v]) => Some([vecd(q)?, vecd(k)?, vecd(v)?]),
                    None => None,
                },
                o: qmm(&p("attn_output.weight"))?,
                ffn_norm: vecd(&b.ffn_norm)?,
                gate: qmm(&p("ffn_gate.weight"))?,
                up: qmm(&p("ffn_up.weight"))?,
                down: qmm(&p("ffn_down.weight"))?,
            });
        }
        let te = f.tensor("token_embd.weight")?;
        let dims = te
            .dims
            .iter()
            .rev()
            .map(|d| *d as usize)
            .collect::<Vec<_>>();
        let embd = qtensor_from_ggml(candle_dtype(te.ty), f.tensor_data(te), dims, &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .to_device(dev)?;
        let output = if f.header.tensors.contains_key("output.weight") {
            qmm("output.weight")?
        } else {
            qmm("token_embd.weight")?
        };
        let half = c.rope_dim / 2;
        let ctx = m.cos.len() / half.max(1);
        Ok(GpuWeights {
            embd,
            blocks,
            output_norm: vecd(&m.output_norm)?,
            output,
            cos: Tensor::from_slice(&m.cos, (ctx, half), dev)?,
            sin: Tensor::from_slice(&m.sin, (ctx, half), dev)?,
        })
    }
}

/// The device-generic forward pass for `tokens` after what `seq` holds.
pub(super) fn forward(
    m: &Llama,
    seq: &mut Sequence,
    tokens: &[u32],
) -> Result<Vec<f32>, ModelError> {
    let w = m
        .gpu
        .as_ref()
        .ok_or_else(|| ModelError::Invalid("weights are not on the device".into()))?;
    let cache = seq
        .gpu
        .as_mut()
        .ok_or_else(|| ModelError::Invalid("sequence has no device cache".into()))?;
    let c = &m.config;
    let dev = w.embd.device().clone();
    let (n, start) = (tokens.len(), seq.tokens.len());
    let ids = Tensor::new(tokens, &dev)?;
    let mut x = w.embd.index_select(&ids, 0)?.unsqueeze(0)?;
    let cos = w.cos.narrow(0, start, n)?;
    let sin = w.sin.narrow(0, start, n)?;
    let rope = |t: &Tensor| -> candle_core::Result<Tensor> {
        if c.rope_neox {
            candle_nn::rotary_emb::rope(&t.contiguous()?, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope_i(&t.contiguous()?, &cos, &sin)
        }
    };
    let mask = if n > 1 {
        let total = start + n;
        let m: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..total).map(move |j| {
                    if j > start + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Some(Tensor::from_slice(&m, (n, total), &dev)?)
    } else {
        None
    };
    for (i, b) in w.blocks.iter().enumerate() {
        let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, c.rms_eps)?;
        let (mut q, mut k, mut v) = (b.q.forward(&h)?, b.k.forward(&h)?, b.v.forward(&h)?);
        if let Some([bq, bk, bv]) = &b.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let q = q.reshape((1, n, c.heads, c.head_dim))?.transpose(1, 2)?;
        let k = k.reshape((1, n, c.kv_heads, c.head_dim))?.transpose(1, 2)?;
        let v = v
            .reshape((1, n, c.kv_heads, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let (q, k) = (rope(&q)?, rope(&k)?);
        let (k, v) = match cache.layers.get_mut(i).and_then(Option::take) {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        if let Some(slot) = cache.layers.get_mut(i) {
            *slot = Some((k.clone(), v.clone()));
        }
        let group = c.heads / c.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, group)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, group)?.contiguous()?;
        let mut att = (q.contiguous()?.matmul(&k.t()?)? / (c.head_dim as f64).sqrt())?;
        if let Some(mask) = &mask {
            att = att.broadcast_add(mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((1, n, c.hidden))?;
        x = (x + b.o.forward(&y)?)?;
        let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, c.rms_eps)?;
        let act = (candle_nn::ops::silu(&b.gate.forward(&h)?)? * b.up.forward(&h)?)?;
        x = (x + b.down.forward(&act)?)?;
    }
    let last = x.i((.., n - 1, ..))?;
    let h = candle_nn::ops::rms_norm(&last, &w.output_norm, c.rms_eps)?;
    let logits = w.output.forward(&h)?.squeeze(0)?.to_dtype(DType::F32)?;
    Ok(logits.to_device(&Device::Cpu)?.to_vec1()?)
}

//! The CPU forward pass of a BERT encoder on Cairn's kernels.
//!
//! Most linear layers are quantized to Q8_0 at load (per 32 weights one f16 scale and 32
//! int8 values, the GGML layout) and run on the int8 GEMM of [`crate::kernels::matmul`]; the
//! inputs of q/k/v and of the FFN up projection are smoothed first ([`smooth`]), and the most
//! sensitive layer stays f32 ([`KEEP_F32`]). Embeddings, biases, layer norms, GELU, attention
//! and pooling stay in f32. A batch's sequences are packed back to back without padding: every matmul sees exactly the real
//! tokens, and attention runs per sequence ([`ops::packed_attention`]).

use crate::kernels::{self, Level, PackedMatrix, Pool, QMatrix, QType, ops};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use half::f16;
use std::path::Path;
use std::sync::Mutex;

use super::EmbedError;

/// Linear layers kept in f32 (activations not quantized either). Measured on the fixture
/// sentences against sentence-transformers: with every layer in Q8_0 the empty text ([CLS]
/// [SEP] only, whose activations carry BERT's outliers) reaches only 0.9981 cosine (0.9987
/// with [`smooth`]), the others ~0.9996; with the value projection in f32 and smoothing the
/// worst case is 0.9995. Keeping the FFN up projection in f32 as well would give 0.99976 at
/// ~12% of the batch throughput.
const KEEP_F32: [&str; 1] = ["attention.self.value"];

/// One linear layer: `rows × cols` weights (Q8_0 blocks, or F32 for [`KEEP_F32`]) and a bias.
struct Linear {
    ty: QType,
    rows: usize,
    cols: usize,
    blocks: Vec<u8>,
    /// The blocks repacked for the CPU's kernel level, where it has packed kernels.
    packed: Option<PackedMatrix>,
    bias: Vec<f32>,
}

impl Linear {
    /// The weight as a kernel matrix.
    fn matrix(&self) -> Result<QMatrix<'_>, EmbedError> {
        let m = QMatrix::new(self.ty, self.rows, self.cols, &self.blocks).map_err(kernel_err)?;
        match &self.packed {
            Some(p) => m.with_packed(p).map_err(kernel_err),
            None => Ok(m),
        }
    }
}

/// A layer norm's scale and shift.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// One encoder layer.
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    /// `1/s` of the smoothing folded into q, k and v (see [`smooth`]).
    qkv_in: Vec<f32>,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    /// `1/s` of the smoothing folded into `up`.
    up_in: Vec<f32>,
    down: Linear,
    out_norm: Norm,
}

/// A BERT encoder on the CPU kernels.
pub(super) struct CpuBert {
    pool: Pool,
    hidden: usize,
    heads: usize,
    ffn: usize,
    eps: f32,
    max_positions: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    /// Activation buffers of finished calls, reused by the next ones: a batch's buffers are
    /// megabytes, and freshly mapped memory costs a page fault and a zeroed page per 4 KiB
    /// (a fifth of the time of a batch of 32 when every call allocated anew).
    spare: Mutex<Vec<Buffers>>,
}

/// The activations of one forward pass.
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    tmp: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    xs: Vec<f32>,
    mid: Vec<f32>,
}

impl Buffers {
    /// Sizes every buffer for `n` tokens (contents zeroed; capacity kept).
    fn reset(&mut self, n: usize, hidden: usize, ffn: usize) {
        for b in [
            &mut self.x,
            &mut self.tmp,
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.ctx,
            &mut self.xs,
        ] {
            b.clear();
            b.resize(n * hidden, 0.0);
        }
        self.mid.clear();
        self.mid.resize(n * ffn, 0.0);
    }
}

fn kernel_err(e: kernels::KernelError) -> EmbedError {
    EmbedError::Load(format!("kernels: {e}"))
}

/// Quantizes a row-major `rows × cols` f32 matrix (cols a multiple of 32) to Q8_0 blocks:
/// per 32 values `d = max|w|/127` stored as f16 and `q = round(w/d)` against that f16 `d`.
pub(super) fn quantize_q8_0(w: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(w.len() / 32 * 34);
    for blk in w.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32(amax / 127.0);
        let df = d.to_f32();
        let id = if df != 0.0 { 1.0 / df } else { 0.0 };
        out.extend_from_slice(&d.to_bits().to_le_bytes());
        out.extend(
            blk.iter()
                .map(|&v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    out
}

/// Reads the tensors of one BERT checkpoint by name.
struct Reader {
    st: MmapedSafetensors,
    prefix: String,
}

impl Reader {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .st
            .load(&full, &Device::Cpu)
            .map_err(|e| EmbedError::Load(format!("{full}: {e}")))?;
        if t.dims() != shape {
            return Err(EmbedError::Load(format!(
                "{full}: shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn raw(&self, name: &str, rows: usize, cols: usize) -> Result<Raw, EmbedError> {
        Ok(Raw {
            name: name.to_string(),
            w: self.get(&format!("{name}.weight"), &[rows, cols])?,
            bias: self.get(&format!("{name}.bias"), &[rows])?,
            rows,
            cols,
        })
    }
}

/// A linear layer's f32 weights as read from the checkpoint.
struct Raw {
    name: String,
    w: Vec<f32>,
    bias: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Raw {
    /// Quantizes the weights (or keeps them f32 for the layers in [`KEEP_F32`]) and repacks
    /// them for `level` where it has packed kernels.
    fn build(self, level: Level) -> Result<Linear, EmbedError> {
        let Raw {
            name,
            w,
            bias,
            rows,
            cols,
        } = self;
        let (ty, blocks) = if KEEP_F32.iter().any(|k| name.ends_with(k)) {
            (QType::F32, w.iter().flat_map(|v| v.to_le_bytes()).collect())
        } else {
            (QType::Q8_0, quantize_q8_0(&w))
        };
        let packed = PackedMatrix::new(
            &QMatrix::new(ty, rows, cols, &blocks).map_err(kernel_err)?,
            level,
        )
        .map_err(kernel_err)?;
        Ok(Linear {
            ty,
            rows,
            cols,
            blocks,
            packed,
            bias,
        })
    }
}

/// Moves the range of the activations into the weights (SmoothQuant with α = ½, data-free):
/// the input of `ws` is the output of layer norm `norm`, whose channel `j` spans about
/// `|gamma_j| + |beta_j|`; column `j` of every weight is multiplied by
/// `s_j = sqrt((|gamma_j| + |beta_j|) / max_i |W_ij|)` and the returned `1/s_j` scales the
/// activations, so `W·x` is unchanged while both int8 quantizations see flatter blocks.
fn smooth(ws: &mut [&mut Raw], norm: &Norm) -> Vec<f32> {
    let cols = norm.gamma.len();
    let mut wmax = vec![0f32; cols];
    for w in ws.iter() {
        for row in w.w.chunks_exact(cols) {
            for (m, &v) in wmax.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }
    let s: Vec<f32> = (0..cols)
        .map(|j| {
            let a = norm.gamma[j].abs() + norm.beta[j].abs();
            if a > 0.0 && wmax[j] > 0.0 {
                (a / wmax[j]).sqrt()
            } else {
                1.0
            }
        })
        .collect();
    for w in ws.iter_mut() {
        for row in w.w.chunks_exact_mut(cols) {
            for (v, &sj) in row.iter_mut().zip(&s) {
                *v *= sj;
            }
        }
    }
    s.iter().map(|v| 1.0 / v).collect()
}

impl Reader {
    fn norm(&self, name: &str, dim: usize) -> Result<Norm, EmbedError> {
        Ok(Norm {
            gamma: self.get(&format!("{name}.weight"), &[dim])?,
            beta: self.get(&format!("{name}.bias"), &[dim])?,
        })
    }
}

/// Shape of the encoder, from `config.json`.
pub(super) struct Shape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub eps: f64,
    pub model_type: Option<String>,
}

impl CpuBert {
    /// Loads the weights of `weights` (safetensors) and quantizes the linear layers.
    pub fn load(weights: &Path, s: &Shape, pool: Pool) -> Result<CpuBert, EmbedError> {
        if s.hidden == 0 || s.heads == 0 || !s.hidden.is_multiple_of(s.heads) {
            return Err(EmbedError::Load(format!(
                "hidden size {} is not a multiple of {} heads",
                s.hidden, s.heads
            )));
        }
        if !s.hidden.is_multiple_of(32) || !s.ffn.is_multiple_of(32) {
            return Err(EmbedError::Load(format!(
                "hidden {} / intermediate {} sizes are not multiples of 32",
                s.hidden, s.ffn
            )));
        }
        // SAFETY: the safetensors file is mapped read-only from the model store, which
        // nothing modifies while it is in use; see `GgufFile::open` for the same contract.
        let st = unsafe { MmapedSafetensors::new(weights)? };
        let mut prefix = String::new();
        for p in ["", "bert."]
            .into_iter()
            .map(String::from)
            .chain(s.model_type.iter().map(|m| format!("{m}.")))
        {
            if st
                .get(&format!("{p}embeddings.word_embeddings.weight"))
                .is_ok()
            {
                prefix = p;
                break;
            }
        }
        let r = Reader { st, prefix };
        let level = kernels::level();
        let (h, f) = (s.hidden, s.ffn);
        let emb_norm = r.norm("embeddings.LayerNorm", h)?;
        let mut layers: Vec<Layer> = Vec::with_capacity(s.layers);
        for i in 0..s.layers {
            let p = format!("encoder.layer.{i}");
            let mut q = r.raw(&format!("{p}.attention.self.query"), h, h)?;
            let mut k = r.raw(&format!("{p}.attention.self.key"), h, h)?;
            let mut v = r.raw(&format!("{p}.attention.self.value"), h, h)?;
            let mut up = r.raw(&format!("{p}.intermediate.dense"), f, h)?;
            let attn_norm = r.norm(&format!("{p}.attention.output.LayerNorm"), h)?;
            let prev = layers.last().map_or(&emb_norm, |l| &l.out_norm);
            let qkv_in = smooth(&mut [&mut q, &mut k, &mut v], prev);
            let up_in = smooth(&mut [&mut up], &attn_norm);
            layers.push(Layer {
                q: q.build(level)?,
                k: k.build(level)?,
                v: v.build(level)?,
                qkv_in,
                attn_out: r
                    .raw(&format!("{p}.attention.output.dense"), h, h)?
                    .build(level)?,
                attn_norm,
                up: up.build(level)?,
                up_in,
                down: r.raw(&format!("{p}.output.dense"), h, f)?.build(level)?,
                out_norm: r.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        Ok(CpuBert {
            pool,
            hidden: h,
            heads: s.heads,
            ffn: f,
            eps: s.eps as f32,
            max_positions: s.max_positions,
            word: r.get("embeddings.word_embeddings.weight", &[s.vocab, h])?,
            position: r.get(
                "embeddings.position_embeddings.weight",
                &[s.max_positions, h],
            )?,
            token_type: r.get(
                "embeddings.token_type_embeddings.weight",
                &[s.type_vocab, h],
            )?,
            emb_norm,
            layers,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// Mean-pooled, L2-normalised embeddings of sequences given as (token ids, type ids).
    pub fn embed(&self, seqs: &[(&[u32], &[u32])]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let h = self.hidden;
        let lens: Vec<usize> = seqs.iter().map(|(ids, _)| ids.len()).collect();
        let n: usize = lens.iter().sum();
        if let Some(l) = lens.iter().find(|&&l| l > self.max_positions) {
            return Err(EmbedError::Input(format!(
                "{l} tokens exceed the model's {} positions",
                self.max_positions
            )));
        }
        let mut buf = self
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        buf.reset(n, h, self.ffn);
        let result = self.forward(seqs, &lens, &mut buf);
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf);
        result
    }

    /// The encoder and pooling of [`CpuBert::embed`] on buffers sized for `lens`.
    fn forward(
        &self,
        seqs: &[(&[u32], &[u32])],
        lens: &[usize],
        buf: &mut Buffers,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let h = self.hidden;
        let n: usize = lens.iter().sum();
        let Buffers {
            x,
            tmp,
            q,
            k,
            v,
            ctx,
            xs,
            mid,
        } = buf;
        {
            let mut rows = tmp.chunks_exact_mut(h);
            for (ids, types) in seqs {
                for (p, (&id, &ty)) in ids.iter().zip(types.iter()).enumerate() {
                    let row = rows.next().ok_or(EmbedError::Input("token count".into()))?;
                    let word = self
                        .word
                        .get(id as usize * h..(id as usize + 1) * h)
                        .ok_or_else(|| EmbedError::Input(format!("token id {id} out of range")))?;
                    let tt = self
                        .token_type
                        .get(ty as usize * h..(ty as usize + 1) * h)
                        .ok_or_else(|| EmbedError::Input(format!("type id {ty} out of range")))?;
                    let pos = &self.position[p * h..(p + 1) * h];
                    for (((o, &a), &b), &c) in row.iter_mut().zip(word).zip(pos).zip(tt) {
                        *o = a + b + c;
                    }
                }
            }
        }
        let norm = |src: &[f32], nm: &Norm, dst: &mut [f32]| {
            ops::layer_norm(src, &nm.gamma, &nm.beta, self.eps, dst).map_err(kernel_err)
        };
        norm(tmp, &self.emb_norm, x)?;
        let hd = h / self.heads;
        let scale = 1.0 / (hd as f32).sqrt();
        for l in &self.layers {
            let ws = [&l.q.matrix()?, &l.k.matrix()?, &l.v.matrix()?];
            scale_rows(x, &l.qkv_in, xs);
            kernels::matmul_many(
                &self.pool,
                &ws,
                xs,
                n,
                &mut [&mut q[..], &mut k[..], &mut v[..]],
            )
            .map_err(kernel_err)?;
            add_bias(q, &l.q.bias);
            add_bias(k, &l.k.bias);
            add_bias(v, &l.v.bias);
            ops::packed_attention(&self.pool, q, k, v, lens, self.heads, hd, scale, ctx)
                .map_err(kernel_err)?;
            kernels::matmul(&self.pool, &l.attn_out.matrix()?, ctx, n, tmp).map_err(kernel_err)?;
            add_bias_residual(tmp, &l.attn_out.bias, x);
            norm(tmp, &l.attn_norm, x)?;
            scale_rows(x, &l.up_in, xs);
            kernels::matmul(&self.pool, &l.up.matrix()?, xs, n, mid).map_err(kernel_err)?;
            self.bias_gelu(mid, &l.up.bias);
            kernels::matmul(&self.pool, &l.down.matrix()?, mid, n, tmp).map_err(kernel_err)?;
            add_bias_residual(tmp, &l.down.bias, x);
            norm(tmp, &l.out_norm, x)?;
        }
        let mut out = Vec::with_capacity(seqs.len());
        let mut rows = x.chunks_exact(h);
        for &len in lens {
            let mut mean = vec![0f32; h];
            for row in rows.by_ref().take(len) {
                for (m, &val) in mean.iter_mut().zip(row) {
                    *m += val;
                }
            }
            let inv = 1.0 / len.max(1) as f32;
            mean.iter_mut().for_each(|m| *m *= inv);
            let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|m| *m /= norm);
            out.push(mean);
        }
        Ok(out)
    }

    /// `x = gelu(x + bias)` per row, split across the pool by rows.
    fn bias_gelu(&self, x: &mut [f32], bias: &[f32]) {
        let w = bias.len();
        let rows = x.len() / w;
        let per = rows.div_ceil(self.pool.threads() * 2).max(1);
        self.pool.for_chunks_mut(x, per * w, |_, part| {
            add_bias(part, bias);
            ops::gelu(part);
        });
    }
}

/// `out[r] = x[r] ⊙ s` for every row `r`.
fn scale_rows(x: &[f32], s: &[f32], out: &mut [f32]) {
    for (o, xr) in out.chunks_exact_mut(s.len()).zip(x.chunks_exact(s.len())) {
        for ((o, &v), &f) in o.iter_mut().zip(xr).zip(s) {
            *o = v * f;
        }
    }
}

/// `x[r] += bias` for every row `r`.
fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (o, &b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    }
}

/// `x[r] += bias + res[r]` for every row `r`.
fn add_bias_residual(x: &mut [f32], bias: &[f32], res: &[f32]) {
    for (row, rr) in x
        .chunks_exact_mut(bias.len())
        .zip(res.chunks_exact(bias.len()))
    {
        for ((o, &b), &r) in row.iter_mut().zip(bias).zip(rr) {
            *o += b + r;
        }
    }
}

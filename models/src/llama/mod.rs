//! Llama-family chat models from GGUF: llama (SmolLM2, Llama 2/3, Mistral) and Qwen2.
//!
//! Weights stay in the memory-mapped file. Activations are candle tensors from step to step;
//! on the CPU every heavy step (matrix products, norms, rotary embedding, gated MLP, attention
//! over the KV cache) is a candle custom op running Cairn's kernels (`cpu`), while on a GPU the
//! same forward pass uses candle's quantized matmul and ops (`gpu`).

mod cpu;
mod gpu;

use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};
use crate::kernels::{self, Level, PackedMatrix, Pool, QMatrix, QType};
use candle_core::{Device, Tensor};
use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

pub use cpu::LayerCache;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file is not a usable GGUF.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// An architecture this build does not run.
    #[error("architecture {0:?} is not supported (llama, mistral and qwen2 are)")]
    Architecture(String),
    /// A tensor or setting is inconsistent with the architecture.
    #[error("model: {0}")]
    Invalid(String),
    /// candle failed.
    #[error("inference: {0}")]
    Candle(#[from] candle_core::Error),
    /// A kernel refused its input.
    #[error("kernel: {0}")]
    Kernel(#[from] kernels::KernelError),
    /// The sequence is full.
    #[error("the context is full ({0} tokens)")]
    ContextFull(usize),
}

/// Shape and numerics of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `general.architecture`.
    pub arch: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Feed-forward size.
    pub ff: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Dimensions the rotary embedding rotates.
    pub rope_dim: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// NeoX (half-split) rotary layout rather than interleaved pairs.
    pub rope_neox: bool,
    /// RMS norm epsilon.
    pub rms_eps: f32,
    /// Trained context length.
    pub context: usize,
    /// Vocabulary size (rows of the output head).
    pub vocab: usize,
}

impl Config {
    /// Reads the configuration from GGUF metadata.
    pub fn from_gguf(f: &GgufFile) -> Result<Config, ModelError> {
        let h = &f.header;
        let arch = h.str("general.architecture")?.to_string();
        let rope_neox = match arch.as_str() {
            "llama" | "mistral" => false,
            "qwen2" => true,
            other => return Err(ModelError::Architecture(other.to_string())),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let usize_of = |k: &str| -> Result<usize, ModelError> {
            let v = h.u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|v| *v > 0 && *v < 1 << 24)
                .ok_or_else(|| ModelError::Invalid(format!("{} = {v} is out of range", key(k))))
        };
        let layers = usize_of("block_count")?;
        let hidden = usize_of("embedding_length")?;
        let ff = usize_of("feed_forward_length")?;
        let heads = usize_of("attention.head_count")?;
        let kv_heads = if h.get(&key("attention.head_count_kv")).is_some() {
            usize_of("attention.head_count_kv")?
        } else {
            heads
        };
        if hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(ModelError::Invalid(format!(
                "{heads} heads / {kv_heads} KV heads do not divide {hidden}"
            )));
        }
        let head_dim = hidden / heads;
        let rope_dim = h
            .get(&key("rope.dimension_count"))
            .and_then(|v| v.as_u64())
            .map_or(head_dim, |v| v as usize);
        if rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(ModelError::Invalid(format!(
                "rope dimension {rope_dim} for heads of {head_dim}"
            )));
        }
        let vocab = f
            .tensor("token_embd.weight")?
            .dims
            .get(1)
            .copied()
            .unwrap_or(0) as usize;
        Ok(Config {
            layers,
            hidden,
            ff,
            heads,
            kv_heads,
            head_dim,
            rope_dim,
            rope_base: h
                .get(&key("rope.freq_base"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0) as f32,
            rope_neox,
            rms_eps: h
                .get(&key("attention.layer_norm_rms_epsilon"))
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5) as f32,
            context: h
                .get(&key("context_length"))
                .and_then(|v| v.as_u64())
                .map_or(2048, |v| v as usize),
            vocab,
            arch,
        })
    }
}

/// A weight matrix: rows × cols in the mapped file, or dequantized to f32 when the kernels do
/// not handle its type natively.
#[derive(Debug, Clone)]
pub(crate) struct Weight {
    ty: QType,
    rows: usize,
    cols: usize,
    offset: usize,
    len: usize,
    owned: Option<Arc<Vec<u8>>>,
    /// The blocks repacked at load for the CPU kernel level, where it has packed kernels.
    packed: Option<Arc<PackedMatrix>>,
}

fn native(ty: GgmlType) -> Option<QType> {
    Some(match ty {
        GgmlType::F32 => QType::F32,
        GgmlType::F16 => QType::F16,
        GgmlType::Q4_0 => QType::Q4_0,
        GgmlType::Q4_1 => QType::Q4_1,
        GgmlType::Q8_0 => QType::Q8_0,
        GgmlType::Q4K => QType::Q4K,
        GgmlType::Q5K => QType::Q5K,
        GgmlType::Q6K => QType::Q6K,
        _ => return None,
    })
}

fn candle_dtype(ty: GgmlType) -> candle_core::quantized::GgmlDType {
    use candle_core::quantized::GgmlDType as D;
    match ty {
        GgmlType::F32 => D::F32,
        GgmlType::F16 => D::F16,
        GgmlType::BF16 => D::BF16,
        GgmlType::Q4_0 => D::Q4_0,
        GgmlType::Q4_1 => D::Q4_1,
        GgmlType::Q5_0 => D::Q5_0,
        GgmlType::Q5_1 => D::Q5_1,
        GgmlType::Q8_0 => D::Q8_0,
        GgmlType::Q8_1 => D::Q8_1,
        GgmlType::Q2K => D::Q2K,
        GgmlType::Q3K => D::Q3K,
        GgmlType::Q4K => D::Q4K,
        GgmlType::Q5K => D::Q5K,
        GgmlType::Q6K => D::Q6K,
        GgmlType::Q8K => D::Q8K,
    }
}

impl Weight {
    /// Reads tensor `t` of shape `expect`; with a CPU kernel `level` that has packed kernels
    /// for its type, repacks it (and releases the file's pages of it).
    fn load(
        f: &GgufFile,
        t: &TensorInfo,
        expect: (usize, usize),
        level: Option<Level>,
    ) -> Result<Weight, ModelError> {
        let (rows, cols) = match t.dims.as_slice() {
            [c, r] => (*r as usize, *c as usize),
            [c] => (1, *c as usize),
            _ => {
                return Err(ModelError::Invalid(format!(
                    "{} has shape {:?}",
                    t.name, t.dims
                )));
            }
        };
        if (rows, cols) != expect {
            return Err(ModelError::Invalid(format!(
                "{} is {rows}×{cols}, expected {}×{}",
                t.name, expect.0, expect.1
            )));
        }
        match native(t.ty) {
            Some(ty) => {
                let m = QMatrix::new(ty, rows, cols, f.tensor_data(t))?;
                let packed = match level {
                    Some(level) => PackedMatrix::new(&m, level)?.map(Arc::new),
                    None => None,
                };
                if packed.is_some() {
                    f.release(t.offset as usize, t.size as usize);
                }
                Ok(Weight {
                    ty,
                    rows,
                    cols,
                    offset: t.offset as usize,
                    len: t.size as usize,
                    owned: None,
                    packed,
                })
            }
            None => {
                // Formats without a native kernel run as f32, dequantized once by candle.
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    candle_dtype(t.ty),
                    f.tensor_data(t),
                    vec![rows, cols],
                    &Device::Cpu,
                )?;
                let values: Vec<f32> = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?;
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                Ok(Weight {
                    ty: QType::F32,
                    rows,
                    cols,
                    offset: 0,
                    len: bytes.len(),
                    owned: Some(Arc::new(bytes)),
                    packed: None,
                })
            }
        }
    }

    fn matrix<'a>(&'a self, f: &'a GgufFile) -> Result<QMatrix<'a>, ModelError> {
        let data = match &self.owned {
            Some(b) => b.as_slice(),
            None => f.raw(self.offset, self.len),
        };
        let m = QMatrix::new(self.ty, self.rows, self.cols, data)?;
        Ok(match &self.packed {
            Some(p) => m.with_packed(p)?,
            None => m,
        })
    }
}

struct Block {
    attn_norm: Vec<f32>,
    q: Weight,
    k: Weight,
    v: Weight,
    qkv_bias: Option<[Vec<f32>; 3]>,
    o: Weight,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

fn f32_vector(f: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = f.tensor(name)?;
    if t.elements() != len as u64 {
        return Err(ModelError::Invalid(format!(
            "{name} has {} values, expected {len}",
            t.elements()
        )));
    }
    let data = f.tensor_data(t);
    Ok(match t.ty {
        GgmlType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(ModelError::Invalid(format!(
                "{name} is {other:?}, expected F32 or F16"
            )));
        }
    })
}

/// Where a model runs.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Cairn's CPU kernels with this many threads.
    Cpu(Arc<Pool>),
    /// A candle GPU device (CUDA or Metal).
    Gpu(Device),
}

/// A loaded llama-family model.
pub struct Llama {
    file: Arc<GgufFile>,
    /// Its configuration.
    pub config: Config,
    blocks: Vec<Block>,
    token_embd: Weight,
    output_norm: Vec<f32>,
    output: Weight,
    cos: Vec<f32>,
    sin: Vec<f32>,
    backend: Backend,
    gpu: Option<gpu::GpuWeights>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The state of one conversation: its tokens and their keys and values.
pub struct Sequence {
    /// Tokens processed so far.
    pub tokens: Vec<u32>,
    capacity: usize,
    cpu: Vec<RefCell<LayerCache>>,
    gpu: Option<gpu::GpuCache>,
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("tokens", &self.tokens.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Sequence {
    /// Positions this sequence can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets everything after the first `len` tokens (to reuse a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        if let Some(g) = &mut self.gpu {
            g.truncate(len);
        }
    }

    /// Bytes held by the cache.
    pub fn cache_bytes(&self) -> usize {
        self.cpu
            .iter()
            .map(|c| (c.borrow().k.len() + c.borrow().v.len()) * 4)
            .sum()
    }
}

impl Llama {
    /// Loads a GGUF model for `backend`.
    pub fn load(path: &Path, backend: Backend) -> Result<Llama, ModelError> {
        Llama::load_with_progress(path, backend, &mut |_, _| {})
    }

    /// [`Llama::load`], calling `progress(done, total)` as the layers are prepared (the
    /// embeddings, the output head and the GPU upload count as steps too).
    pub fn load_with_progress(
        path: &Path,
        backend: Backend,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Llama, ModelError> {
        let file = Arc::new(GgufFile::open(path)?);
        let c = Config::from_gguf(&file)?;
        let (d, kvd) = (c.hidden, c.kv_heads * c.head_dim);
        let total = c.layers + 2 + usize::from(matches!(backend, Backend::Gpu(_)));
        progress(0, total);
        // On the CPU, weights the kernel level has packed kernels for are repacked once here.
        let level = match backend {
            Backend::Cpu(_) => Some(kernels::level()),
            Backend::Gpu(_) => None,
        };
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let t = |n: &str| file.tensor(&format!("blk.{i}.{n}"));
            let w = |n: &str, shape| Weight::load(&file, t(n)?, shape, level);
            let qkv_bias = if file
                .header
                .tensors
                .contains_key(&format!("blk.{i}.attn_q.bias"))
            {
                Some([
                    f32_vector(&file, &format!("blk.{i}.attn_q.bias"), d)?,
                    f32_vector(&file, &format!("blk.{i}.attn_k.bias"), kvd)?,
                    f32_vector(&file, &format!("blk.{i}.attn_v.bias"), kvd)?,
                ])
            } else {
                None
            };
            blocks.push(Block {
                attn_norm: f32_vector(&file, &format!("blk.{i}.attn_norm.weight"), d)?,
                q: w("attn_q.weight", (d, d))?,
                k: w("attn_k.weight", (kvd, d))?,
                v: w("attn_v.weight", (kvd, d))?,
                qkv_bias,
                o: w("attn_output.weight", (d, d))?,
                ffn_norm: f32_vector(&file, &format!("blk.{i}.ffn_norm.weight"), d)?,
                gate: w("ffn_gate.weight", (c.ff, d))?,
                up: w("ffn_up.weight", (c.ff, d))?,
                down: w("ffn_down.weight", (d, c.ff))?,
            });
            progress(i + 1, total);
        }
        // The token embeddings are only read a row at a time unless they are tied as the
        // output head: packed only then.
        let output_tensor = file.header.tensors.get("output.weight");
        let token_embd = Weight::load(
            &file,
            file.tensor("token_embd.weight")?,
            (c.vocab, d),
            if output_tensor.is_some() { None } else { level },
        )?;
        let output = match output_tensor {
            Some(t) => Weight::load(&file, t, (c.vocab, d), level)?,
            None => token_embd.clone(),
        };
        let output_norm = f32_vector(&file, "output_norm.weight", d)?;
        progress(c.layers + 1, total);
        // Rotary tables for every position of the trained context.
        let half = c.rope_dim / 2;
        let ctx = c.context.min(1 << 17);
        let mut cos = Vec::with_capacity(ctx * half);
        let mut sin = Vec::with_capacity(ctx * half);
        for p in 0..ctx {
            for i in 0..half {
                let theta = p as f32 / c.rope_base.powf(2.0 * i as f32 / c.rope_dim as f32);
                cos.push(theta.cos());
                sin.push(theta.sin());
            }
        }
        let mut model = Llama {
            file,
            config: c,
            blocks,
            token_embd,
            output_norm,
            output,
            cos,
            sin,
            backend: backend.clone(),
            gpu: None,
        };
        if let Backend::Gpu(dev) = &backend {
            model.gpu = Some(gpu::GpuWeights::load(&model, dev)?);
        }
        progress(total, total);
        Ok(model)
    }

    /// The tokenizer's view of the file (metadata).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Where it runs.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// A new, empty sequence able to hold `capacity` tokens (at most the trained context).
    pub fn sequence(&self, capacity: usize) -> Sequence {
        let capacity = capacity.clamp(
            1,
            self.config
                .context
                .min(self.cos.len() / (self.config.rope_dim / 2).max(1)),
        );
        let per = self.config.kv_heads * capacity * self.config.head_dim;
        let cpu = match self.backend {
            Backend::Cpu(_) => (0..self.config.layers)
                .map(|_| {
                    RefCell::new(LayerCache {
                        k: vec![0.0; per],
                        v: vec![0.0; per],
                    })
                })
                .collect(),
            Backend::Gpu(_) => Vec::new(),
        };
        let gpu = match &self.backend {
            Backend::Gpu(dev) => Some(gpu::GpuCache::new(self.config.layers, dev)),
            Backend::Cpu(_) => None,
        };
        Sequence {
            tokens: Vec::new(),
            capacity,
            cpu,
            gpu,
        }
    }

    /// Grows a sequence's cache to hold `capacity` tokens, keeping what it holds.
    pub fn reserve(&self, seq: &mut Sequence, capacity: usize) {
        if capacity <= seq.capacity {
            return;
        }
        let mut bigger = self.sequence(capacity);
        let (hd, kvh, len) = (self.config.head_dim, self.config.kv_heads, seq.tokens.len());
        for (old, new) in seq.cpu.iter().zip(bigger.cpu.iter()) {
            let (old, mut new) = (old.borrow(), new.borrow_mut());
            for h in 0..kvh {
                let (src, dst) = (h * seq.capacity * hd, h * bigger.capacity * hd);
                new.k[dst..dst + len * hd].copy_from_slice(&old.k[src..src + len * hd]);
                new.v[dst..dst + len * hd].copy_from_slice(&old.v[src..src + len * hd]);
            }
        }
        bigger.tokens = std::mem::take(&mut seq.tokens);
        bigger.gpu = seq.gpu.take().or(bigger.gpu);
        *seq = bigger;
    }

    /// Runs `tokens` through the model after what `seq` holds, appends them to its cache, and
    /// returns the logits for the next token.
    pub fn forward(&self, seq: &mut Sequence, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Invalid("no tokens to process".into()));
        }
        if seq.tokens.len() + tokens.len() > seq.capacity {
            return Err(ModelError::ContextFull(seq.capacity));
        }
        if let Some(bad) = tokens.iter().find(|t| **t as usize >= self.config.vocab) {
            return Err(ModelError::Invalid(format!(
                "token {bad} is outside the vocabulary"
            )));
        }
        let logits = match &self.backend {
            Backend::Cpu(pool) => self.forward_cpu(pool, seq, tokens)?,
            Backend::Gpu(_) => gpu::forward(self, seq, tokens)?,
        };
        seq.tokens.extend_from_slice(tokens);
        Ok(logits)
    }

    fn forward_cpu(
        &self,
        pool: &Pool,
        seq: &Sequence,
        tokens: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let f = &*self.file;
        let (n, d, start) = (tokens.len(), c.hidden, seq.tokens.len());
        let kvd = c.kv_heads * c.head_dim;
        // Embedding rows for the tokens.
        let embd = self.token_embd.matrix(f)?;
        let mut x = vec![0f32; n * d];
        for (row, t) in x.chunks_exact_mut(d).zip(tokens) {
            embd.dequantize_row(*t as usize, row)?;
        }
        let x = Tensor::from_vec(x, (n, d), &Device::Cpu)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let h = x.apply_op1_no_bwd(&cpu::RmsNorm {
                weight: &b.attn_norm,
                eps: c.rms_eps,
            })?;
            let biases = match &b.qkv_bias {
                Some([q, k, v]) => vec![Some(q.as_slice()), Some(k.as_slice()), Some(v.as_slice())],
                None => vec![None, None, None],
            };
            let qkv = h.apply_op1_no_bwd(&cpu::Linear {
                pool,
                weights: vec![b.q.matrix(f)?, b.k.matrix(f)?, b.v.matrix(f)?],
                biases,
            })?;
            let q = qkv.narrow(0, 0, n * d)?.reshape((n, c.heads, c.head_dim))?;
            let k = qkv
                .narrow(0, n * d, n * kvd)?
                .reshape((n, c.kv_heads, c.head_dim))?;
            let v = qkv.narrow(0, n * d + n * kvd, n * kvd)?;
            let rope = |t: &Tensor| {
                t.apply_op1_no_bwd(&cpu::Rope {
                    cos: &self.cos,
                    sin: &self.sin,
                    head_dim: c.head_dim,
                    rope_dim: c.rope_dim,
                    start,
                    neox: c.rope_neox,
                })
            };
            let (q, k) = (rope(&q)?, rope(&k)?);
            let kv = Tensor::cat(&[k.flatten_all()?, v], 0)?;
            let cache = seq.cpu.get(i).ok_or_else(|| {
                ModelError::Invalid("sequence has no cache for this layer".into())
            })?;
            let attn = q.apply_op2_no_bwd(
                &kv,
                &cpu::Attention {
                    pool,
                    cache,
                    capacity: seq.capacity,
                    heads: c.heads,
                    kv_heads: c.kv_heads,
                    head_dim: c.head_dim,
                    start,
                },
            )?;
            let o = attn.apply_op1_no_bwd(&cpu::Linear {
                pool,
                weights: vec![b.o.matrix(f)?],
                biases: vec![None],
            })?;
            x.inplace_op2(&o, &cpu::Residual)?;
            let h = x.apply_op1_no_bwd(&cpu::RmsNorm {
                weight: &b.ffn_norm,
                eps: c.rms_eps,
            })?;
            let gu = h.apply_op1_no_bwd(&cpu::Linear {
                pool,
                weights: vec![b.gate.matrix(f)?, b.up.matrix(f)?],
                biases: vec![None, None],
            })?;
            let act = gu.apply_op1_no_bwd(&cpu::SiluMul { pool, ff: c.ff })?;
            let down = act.apply_op1_no_bwd(&cpu::Linear {
                pool,
                weights: vec![b.down.matrix(f)?],
                biases: vec![None],
            })?;
            x.inplace_op2(&down, &cpu::Residual)?;
        }
        // Only the last position's logits are needed to continue.
        let last = x.narrow(0, n - 1, 1)?;
        let h = last.apply_op1_no_bwd(&cpu::RmsNorm {
            weight: &self.output_norm,
            eps: c.rms_eps,
        })?;
        let logits = h.apply_op1_no_bwd(&cpu::Linear {
            pool,
            weights: vec![self.output.matrix(f)?],
            biases: vec![None],
        })?;
        Ok(logits.to_vec1()?)
    }
}

#[cfg(test)]
mod tests;

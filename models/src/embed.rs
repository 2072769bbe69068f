//! Sentence embeddings: BERT-family models from safetensors + tokenizer.json (all-MiniLM-L6-v2
//! by default), batched, mean-pooled over the attention mask, L2-normalised.
//!
//! On the CPU the encoder runs on Cairn's kernels ([`cpu`]: Q8_0 linear layers, no padding);
//! on CUDA/Metal it runs candle-transformers' `BertModel`.

mod cpu;

use crate::kernels::Pool;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, HiddenAct};
use std::path::Path;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Model files missing or malformed.
    #[error("embedding model: {0}")]
    Load(String),
    /// Bad input.
    #[error("{0}")]
    Input(String),
    /// candle failed.
    #[error("embedding: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The encoder behind an [`Embedder`].
enum Model {
    /// Cairn's kernels on the CPU.
    Cpu(Box<cpu::CpuBert>),
    /// candle-transformers on a GPU device.
    Candle(Box<BertModel>),
}

/// A loaded embedding model.
pub struct Embedder {
    model: Model,
    tokenizer: Tokenizer,
    device: Device,
    dims: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dims", &self.dims)
            .finish_non_exhaustive()
    }
}

/// Most texts in one call.
pub const MAX_BATCH: usize = 256;

impl Embedder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`. On the CPU
    /// the kernels run on a pool of `RAYON_NUM_THREADS` (or as many as there are CPUs) threads.
    pub fn load(dir: &Path, device: &Device, max_tokens: usize) -> Result<Embedder, EmbedError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| EmbedError::Load(format!("{}: {e}", dir.join(name).display())))
        };
        let config: Config = serde_json::from_str(&read("config.json")?)
            .map_err(|e| EmbedError::Load(format!("config.json: {e}")))?;
        let dims = config.hidden_size;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| EmbedError::Load(format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer pads every input to 128 tokens: pad to the batch's longest.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Load(e.to_string()))?;
        let weights = dir.join("model.safetensors");
        let model = if device.is_cpu() && config.hidden_act == HiddenAct::Gelu {
            let shape = cpu::Shape {
                vocab: config.vocab_size,
                hidden: config.hidden_size,
                layers: config.num_hidden_layers,
                heads: config.num_attention_heads,
                ffn: config.intermediate_size,
                max_positions: config.max_position_embeddings,
                type_vocab: config.type_vocab_size,
                eps: config.layer_norm_eps,
                model_type: config.model_type.clone(),
            };
            let pool = Pool::new(candle_core::utils::get_num_threads());
            Model::Cpu(Box::new(cpu::CpuBert::load(&weights, &shape, pool)?))
        } else {
            // SAFETY: the safetensors file is mapped read-only from the model store; see
            // `GgufFile::open` for the same contract.
            let vb =
                unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
            Model::Candle(Box::new(
                BertModel::load(vb, &config).map_err(|e| EmbedError::Load(e.to_string()))?,
            ))
        };
        Ok(Embedder {
            model,
            tokenizer,
            device: device.clone(),
            dims,
            max_tokens,
        })
    }

    /// Vector length.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Longest input in tokens (longer inputs are truncated).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token counts of each text (for usage accounting).
    pub fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, EmbedError> {
        texts
            .iter()
            .map(|t| {
                self.tokenizer
                    .encode(*t, true)
                    .map(|e| e.get_ids().len())
                    .map_err(|e| EmbedError::Input(e.to_string()))
            })
            .collect()
    }

    /// Embeds texts; vectors are unit length. Inputs are sorted by length into batches of up
    /// to 32 so padding stays small, and the results come back in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.len() > MAX_BATCH {
            return Err(EmbedError::Input(format!(
                "at most {MAX_BATCH} inputs per call, got {}",
                texts.len()
            )));
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|i| texts[*i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(32) {
            let batch: Vec<&str> = chunk.iter().map(|i| texts[*i]).collect();
            let vectors = self.embed_batch(&batch)?;
            for (i, v) in chunk.iter().zip(vectors) {
                out[*i] = v;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Input(e.to_string()))?;
        let model = match &self.model {
            Model::Cpu(m) => {
                // Padding is on the right: keep each text's real tokens only.
                let seqs: Vec<(&[u32], &[u32])> = enc
                    .iter()
                    .map(|e| {
                        let len = e.get_attention_mask().iter().filter(|&&m| m != 0).count();
                        (&e.get_ids()[..len], &e.get_type_ids()[..len])
                    })
                    .collect();
                return m.embed(&seqs);
            }
            Model::Candle(m) => m,
        };
        let n = enc.len();
        let len = enc.first().map_or(0, |e| e.get_ids().len());
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            enc.iter().flat_map(|e| f(e).to_vec()).collect()
        };
        let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (n, len), &self.device)?;
        let types = Tensor::from_vec(flat(&|e| e.get_type_ids()), (n, len), &self.device)?;
        let mask = Tensor::from_vec(flat(&|e| e.get_attention_mask()), (n, len), &self.device)?;
        let hidden = model.forward(&ids, &types, Some(&mask))?;
        // Mean over real tokens, then unit length.
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let unit = mean.broadcast_div(&norm)?;
        Ok(unit.to_dtype(DType::F32)?.to_vec2()?)
    }
}

//! Tokenizers built from a GGUF's `tokenizer.ggml.*` metadata with the `tokenizers` crate.
//!
//! `gpt2`-type vocabularies (SmolLM2, Qwen2, Llama 3, ...) become byte-level BPE with the
//! pre-tokenizer the model was trained with (`tokenizer.ggml.pre`); `llama`-type (SentencePiece)
//! vocabularies become BPE with byte fallback and merges derived from the token scores. Control
//! and user-defined tokens are added as special tokens, so a rendered chat template's
//! `<|im_start|>` is one token. Ids match llama.cpp's (`models/tests/tokenizer.rs` checks a
//! fixed set of strings against `llama-tokenize`).

use crate::gguf::{GgufError, Header};
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

/// GGUF token types.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Missing or malformed metadata.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A vocabulary type this build does not know.
    #[error("tokenizer model {0:?} is not supported (gpt2 and llama are)")]
    UnsupportedModel(String),
    /// The tokenizers crate refused the vocabulary.
    #[error("building the tokenizer: {0}")]
    Build(String),
}

/// Regular expressions of the pre-tokenizers, by `tokenizer.ggml.pre`, and whether GPT-2's
/// own rules (the byte-level step's regex) still apply after them.
fn pre_tokenizer_splits(pre: &str) -> (Vec<&'static str>, bool) {
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        // Digits one at a time, then GPT-2's rules (applied by the byte-level step).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}"], true)
        }
        // These replace GPT-2's rules entirely.
        "llama3" | "llama-bpe" | "llama-v3" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            (vec![LLAMA3], false)
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" => (vec![QWEN2], false),
        // "gpt2", "default" and unknown names: GPT-2's rules alone.
        _ => (Vec::new(), true),
    }
}

fn strings(h: &Header, key: &str) -> Result<Vec<String>, TokenizerError> {
    let arr = h
        .get(key)
        .and_then(|v| v.as_array())
        .ok_or_else(|| GgufError::Invalid(format!("metadata {key} is missing or not an array")))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(String::from)
                .ok_or_else(|| GgufError::Invalid(format!("{key} holds a non-string")).into())
        })
        .collect()
}

fn optional_ints(h: &Header, key: &str) -> Vec<i64> {
    h.get(key)
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as i64).collect())
        .unwrap_or_default()
}

fn optional_floats(h: &Header, key: &str) -> Vec<f64> {
    h.get(key)
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect())
        .unwrap_or_default()
}

/// A model's tokenizer and its special ids.
pub struct GgufTokenizer {
    tok: Tokenizer,
    tokens: Vec<String>,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// Ids that end a generation (EOS plus end-of-turn tokens such as `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    /// Whether the model expects BOS at the start of a prompt.
    pub add_bos: bool,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF header.
    pub fn from_gguf(h: &Header) -> Result<GgufTokenizer, TokenizerError> {
        let model = h.str("tokenizer.ggml.model")?.to_string();
        let tokens = strings(h, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() || tokens.len() > 4_000_000 {
            return Err(
                GgufError::Invalid(format!("vocabulary of {} tokens", tokens.len())).into(),
            );
        }
        let types = optional_ints(h, "tokenizer.ggml.token_type");
        let id = |key: &str| {
            h.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| (*v as usize) < tokens.len())
        };
        let (bos, eos) = (
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
        );
        let eot = id("tokenizer.ggml.eot_token_id");
        let default_bos = model == "llama";
        let add_bos = h
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(default_bos);
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut tok = match model.as_str() {
            "gpt2" => {
                let merges = strings(h, "tokenizer.ggml.merges")?
                    .into_iter()
                    .filter_map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                    })
                    .collect();
                let bpe = BPE::builder()
                    .vocab_and_merges(
                        vocab
                            .iter()
                            .map(|(k, v)| (k.clone(), *v))
                            .collect::<tokenizers::models::bpe::Vocab>(),
                        merges,
                    )
                    .ignore_merges(matches!(
                        h.get("tokenizer.ggml.pre").and_then(|v| v.as_str()),
                        Some("llama-bpe" | "llama3")
                    ))
                    .build()
                    .map_err(|e| TokenizerError::Build(e.to_string()))?;
                let mut t = Tokenizer::new(bpe);
                let pre = h
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.as_str())
                    .unwrap_or("gpt2");
                let (splits, gpt2_rules) = pre_tokenizer_splits(pre);
                let byte_level = ByteLevel::new(false, true, gpt2_rules);
                let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
                for re in splits {
                    let s = Split::new(
                        SplitPattern::Regex(re.to_string()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .map_err(|e| TokenizerError::Build(e.to_string()))?;
                    steps.push(s.into());
                }
                steps.push(byte_level.into());
                t.with_pre_tokenizer(Some(PreSequence::new(steps)));
                t.with_decoder(Some(ByteLevelDecoder::default()));
                t
            }
            "llama" => {
                let scores = optional_floats(h, "tokenizer.ggml.scores");
                let merges = spm_merges(&tokens, &scores, &types);
                let bpe = BPE::builder()
                    .vocab_and_merges(
                        vocab
                            .iter()
                            .map(|(k, v)| (k.clone(), *v))
                            .collect::<tokenizers::models::bpe::Vocab>(),
                        merges,
                    )
                    .byte_fallback(true)
                    .unk_token(
                        id("tokenizer.ggml.unknown_token_id")
                            .and_then(|u| tokens.get(u as usize))
                            .cloned()
                            .unwrap_or_else(|| "<unk>".into()),
                    )
                    .fuse_unk(true)
                    .build()
                    .map_err(|e| TokenizerError::Build(e.to_string()))?;
                let mut t = Tokenizer::new(bpe);
                let add_space = h
                    .get("tokenizer.ggml.add_space_prefix")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(true);
                let mut norms: Vec<NormalizerWrapper> = Vec::new();
                if add_space {
                    norms.push(Prepend::new("▁".into()).into());
                }
                norms.push(
                    Replace::new(" ", "▁")
                        .map_err(|e| TokenizerError::Build(e.to_string()))?
                        .into(),
                );
                t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norms)));
                let mut decs: Vec<DecoderWrapper> = vec![
                    Replace::new("▁", " ")
                        .map_err(|e| TokenizerError::Build(e.to_string()))?
                        .into(),
                    ByteFallback::new().into(),
                    Fuse::new().into(),
                ];
                if add_space {
                    decs.push(Strip::new(' ', 1, 0).into());
                }
                t.with_decoder(Some(DecoderSequence::new(decs)));
                t
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        // Control and user-defined tokens match as whole tokens in text.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter().copied().chain(std::iter::repeat(1)))
            .filter(|(_, ty)| *ty == TOKEN_CONTROL || *ty == TOKEN_USER_DEFINED)
            .map(|(t, ty)| AddedToken::from(t.clone(), ty == TOKEN_CONTROL))
            .collect();
        tok.add_special_tokens(&added);
        let mut stop_ids: Vec<u32> = eos.into_iter().chain(eot).collect();
        for name in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<|endoftext|>",
            "<end_of_turn>",
            "</s>",
        ] {
            if let Some(&i) = tokens
                .iter()
                .position(|t| t == name)
                .map(|p| p as u32)
                .as_ref()
                && !stop_ids.contains(&i)
            {
                stop_ids.push(i);
            }
        }
        Ok(GgufTokenizer {
            tok,
            tokens,
            bos,
            eos,
            stop_ids,
            add_bos,
        })
    }

    /// Ids of `text`, with special tokens in the text matched as such; no BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The prompt ids for a rendered chat: BOS first when the model wants it and the text does
    /// not already start with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.encode(text)?;
        if let (true, Some(b)) = (self.add_bos, self.bos)
            && ids.first() != Some(&b)
        {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    /// Text of ids (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tok.decode(ids, true).unwrap_or_default()
    }

    /// The string of one token as stored in the vocabulary.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Whether `id` ends a generation.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }
}

/// SentencePiece BPE merges from token scores: every split of a token into two vocabulary
/// tokens is a merge, ranked by the merged token's score (higher first).
fn spm_merges(tokens: &[String], scores: &[f64], types: &[i64]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f64, usize, usize, String, String)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types.get(i).is_some_and(|ty| *ty != 1) || t.chars().count() < 2 {
            continue;
        }
        let score = scores.get(i).copied().unwrap_or(0.0);
        for (cut, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(cut);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                merges.push((score, ia, ib, a.to_string(), b.to_string()));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    merges.into_iter().map(|m| (m.3, m.4)).collect()
}

/// Turns a stream of token ids into text pieces, holding back bytes of an incomplete UTF-8
/// character (a multi-byte character often spans tokens).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    /// A decoder for one generation.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, tok: &GgufTokenizer, id: u32) -> Option<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids);
        if text.ends_with('\u{FFFD}') {
            return None;
        }
        let new = text
            .get(self.emitted..)
            .map(String::from)
            .unwrap_or_default();
        self.emitted = text.len();
        (!new.is_empty()).then_some(new)
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self, tok: &GgufTokenizer) -> Option<String> {
        let text = tok.decode(&self.ids);
        let new = text
            .get(self.emitted..)
            .map(String::from)
            .unwrap_or_default();
        self.emitted = text.len();
        (!new.is_empty()).then_some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::write::{W, gguf};

    fn spm_header() -> Header {
        let tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab", "<0x0A>"];
        let b = gguf(
            &[
                ("tokenizer.ggml.model", W::Str("llama")),
                ("tokenizer.ggml.tokens", W::Strs(&tokens)),
                (
                    "tokenizer.ggml.token_type",
                    W::I32s(&[2, 3, 3, 1, 1, 1, 1, 1, 6]),
                ),
                ("tokenizer.ggml.bos_token_id", W::U32(1)),
                ("tokenizer.ggml.eos_token_id", W::U32(2)),
            ],
            &[],
        );
        Header::parse(&b, b.len() as u64).unwrap()
    }

    #[test]
    fn sentencepiece_style_vocab_round_trips() {
        let t = GgufTokenizer::from_gguf(&spm_header()).unwrap();
        let ids = t.encode("ab").unwrap();
        assert_eq!(ids, vec![7], "merged ▁ab");
        assert_eq!(t.decode(&ids), "ab");
        let p = t.encode_prompt("ab").unwrap();
        assert_eq!(p, vec![1, 7], "BOS added for llama vocabularies");
        // A byte outside the vocabulary falls back to <0x..> tokens.
        let nl = t.encode("a\n").unwrap();
        assert!(nl.contains(&8), "{nl:?}");
        assert!(t.is_stop(2));
    }

    #[test]
    fn unsupported_vocab_type_is_named() {
        let b = gguf(
            &[
                ("tokenizer.ggml.model", W::Str("rwkv")),
                ("tokenizer.ggml.tokens", W::Strs(&["a"])),
            ],
            &[],
        );
        let h = Header::parse(&b, b.len() as u64).unwrap();
        let e = GgufTokenizer::from_gguf(&h).unwrap_err().to_string();
        assert!(e.contains("rwkv"), "{e}");
    }
}

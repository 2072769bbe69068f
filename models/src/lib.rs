//! cairn-models: local inference for Cairn.
//!
//! Today this crate holds the model catalog (`catalog.toml`): the default on-device chat model
//! (SmolLM2-135M-Instruct, GGUF Q4_1) and embedding model (all-MiniLM-L6-v2, safetensors) with
//! their sources and checksums. GGUF and BERT inference on candle arrive with the on-device
//! inference work.

pub mod catalog;
pub mod chat;
pub mod embed;
pub mod engine;
pub mod gguf;
pub mod kernels;
pub mod llama;
pub mod sampling;
pub mod store;
pub mod tokenizer;

//! The generation engine: one worker thread per chat model serving requests from a bounded
//! queue.
//!
//! - Fairness: active requests advance one step each in turn (a prompt chunk or one token), so
//!   a long generation never starves a short one.
//! - Streaming: each request gets a channel of [`Event`]s; when the receiver is dropped (the
//!   client went away) the request is cancelled at its next step.
//! - KV-cache reuse: finished sequences are kept (a few, least recently used first out); a new
//!   request that starts with the same tokens (the next turn of a conversation) continues from
//!   the longest shared prefix instead of recomputing it.
//! - Overload: beyond `max_queue` waiting requests, `submit` answers `Overloaded` with a retry
//!   delay instead of queueing without bound.

use crate::chat::{ChatTemplate, Message};
use crate::llama::{Llama, ModelError, Sequence};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{GgufTokenizer, StreamDecoder};
use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tokens of a prompt processed in one step before other requests get a turn.
const PREFILL_CHUNK: usize = 256;
/// Finished sequences kept for reuse.
const KEPT_SEQUENCES: usize = 4;
/// Shortest shared prefix worth reusing a kept sequence for.
const MIN_REUSE: usize = 8;

/// A chat model ready to serve: weights, tokenizer and prompt template.
pub struct ChatModel {
    /// Identifier clients use.
    pub id: String,
    /// The network.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: GgufTokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
}

impl ChatModel {
    /// Loads a GGUF chat model: weights, tokenizer and template from the same file.
    pub fn load(
        id: &str,
        path: &std::path::Path,
        backend: crate::llama::Backend,
    ) -> Result<ChatModel, ModelError> {
        ChatModel::load_with_progress(id, path, backend, &mut |_, _| {})
    }

    /// [`ChatModel::load`] reporting `progress(done, total)` (see [`Llama::load_with_progress`]).
    pub fn load_with_progress(
        id: &str,
        path: &std::path::Path,
        backend: crate::llama::Backend,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ChatModel, ModelError> {
        let model = Llama::load_with_progress(path, backend, progress)?;
        let h = &model.file().header;
        let tokenizer =
            GgufTokenizer::from_gguf(h).map_err(|e| ModelError::Invalid(e.to_string()))?;
        let tok_str = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token(i))
                .unwrap_or("")
                .to_string()
        };
        let template = ChatTemplate::for_model(
            h.get("tokenizer.chat_template").and_then(|v| v.as_str()),
            &model.config.arch,
            h.get("tokenizer.ggml.pre").and_then(|v| v.as_str()),
            &tok_str(tokenizer.bos),
            &tok_str(tokenizer.eos),
        )
        .map_err(|e| ModelError::Invalid(e.to_string()))?;
        Ok(ChatModel {
            id: id.to_string(),
            model,
            tokenizer,
            template,
        })
    }

    /// The context length the engine serves.
    pub fn context(&self) -> usize {
        self.model.config.context
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Most tokens to generate (clamped to what the context leaves).
    pub max_tokens: usize,
    /// Strings that end the generation (not included in the output).
    pub stop: Vec<String>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn or a stop string appeared.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
    /// The client went away.
    Cancelled,
}

/// Token accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of which served from a kept KV cache.
    pub cached_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// What a request's channel carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt is processed; generation starts (time to first token follows).
    Started {
        /// Prompt accounting so far.
        usage: Usage,
    },
    /// More text.
    Text(String),
    /// The end.
    Done {
        /// Why it ended.
        reason: FinishReason,
        /// Final accounting.
        usage: Usage,
    },
    /// It failed.
    Error(String),
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    /// No such model.
    #[error("model {0:?} does not exist")]
    UnknownModel(String),
    /// The prompt does not fit the context.
    #[error("the prompt is {prompt} tokens; the model's context is {context} tokens")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Context.
        context: usize,
    },
    /// Invalid request.
    #[error("{0}")]
    Invalid(String),
    /// Too many requests are waiting.
    #[error("the model is busy: {waiting} requests are waiting; retry in {} s", retry_after.as_secs())]
    Overloaded {
        /// Requests queued.
        waiting: usize,
        /// Suggested wait.
        retry_after: Duration,
    },
}

/// Limits of one engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Requests generating at the same time.
    pub max_active: usize,
    /// Requests waiting beyond those.
    pub max_queue: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_active: 4,
            max_queue: 32,
        }
    }
}

struct Job {
    prompt: Vec<u32>,
    req: Request,
    tx: Sender<Event>,
}

/// Live figures of an engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Requests waiting.
    pub waiting: usize,
    /// Requests generating.
    pub active: usize,
    /// Tokens generated since start.
    pub generated: u64,
    /// Prompt tokens processed since start.
    pub prompt: u64,
}

/// A running engine for one model.
pub struct Engine {
    /// The model's identifier.
    pub model_id: String,
    context: usize,
    jobs: SyncSender<Job>,
    shared: Arc<ChatModel>,
    stats: Arc<Mutex<Stats>>,
    options: EngineOptions,
}

impl Engine {
    /// Starts the worker thread for a model.
    pub fn start(model: ChatModel, options: EngineOptions) -> Engine {
        let shared = Arc::new(model);
        let (jobs, rx) = mpsc::sync_channel::<Job>(options.max_queue.max(1));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let worker = Worker {
            model: shared.clone(),
            rx,
            stats: stats.clone(),
            options,
            kept: VecDeque::new(),
        };
        let name = format!("engine-{}", shared.id);
        if let Err(e) = std::thread::Builder::new()
            .name(name)
            .spawn(move || worker.run())
        {
            tracing::error!("engine thread: {e}");
        }
        Engine {
            model_id: shared.id.clone(),
            context: shared.context(),
            jobs,
            shared,
            stats,
            options,
        }
    }

    /// The model served.
    pub fn model(&self) -> &ChatModel {
        &self.shared
    }

    /// Current figures.
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Renders and tokenizes a request and queues it; the receiver streams its events.
    pub fn submit(&self, req: Request) -> Result<Receiver<Event>, SubmitError> {
        req.sampling.validate().map_err(SubmitError::Invalid)?;
        if req.messages.iter().all(|m| m.content.trim().is_empty()) {
            return Err(SubmitError::Invalid("every message is empty".into()));
        }
        let text = self
            .shared
            .template
            .render(&req.messages, true)
            .map_err(|e| SubmitError::Invalid(e.to_string()))?;
        let prompt = self
            .shared
            .tokenizer
            .encode_prompt(&text)
            .map_err(|e| SubmitError::Invalid(e.to_string()))?;
        if prompt.len() >= self.context {
            return Err(SubmitError::PromptTooLong {
                prompt: prompt.len(),
                context: self.context,
            });
        }
        let (tx, rx) = mpsc::channel();
        // Counted before the send: the worker may take the job (and count it out) at once.
        let waiting = match self.stats.lock() {
            Ok(mut s) => {
                s.waiting += 1;
                s.waiting - 1
            }
            Err(_) => 0,
        };
        match self.jobs.try_send(Job { prompt, req, tx }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if let Ok(mut s) = self.stats.lock() {
                    s.waiting = s.waiting.saturating_sub(1);
                }
                Err(SubmitError::Overloaded {
                    waiting: waiting.max(self.options.max_queue),
                    retry_after: Duration::from_secs(2),
                })
            }
        }
    }
}

/// Holds back text that could be the start of a stop string.
struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    fn new(stops: &[String]) -> StopFilter {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds text; returns (text safe to emit, whether a stop string was found).
    fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

struct Active {
    job: Job,
    seq: Sequence,
    fed: usize,
    cached: usize,
    sampler: Sampler,
    decoder: StreamDecoder,
    stop: StopFilter,
    generated: usize,
    limit: usize,
    logits: Option<Vec<f32>>,
    history: Vec<u32>,
    started: Instant,
}

struct Worker {
    model: Arc<ChatModel>,
    rx: Receiver<Job>,
    stats: Arc<Mutex<Stats>>,
    options: EngineOptions,
    kept: VecDeque<Sequence>,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Worker {
    fn begin(&mut self, job: Job) -> Active {
        let m = &self.model.model;
        let ctx = self.model.context();
        let limit = job.req.max_tokens.min(ctx - job.prompt.len()).max(1);
        let want = job.prompt.len() + limit;
        // Reuse the kept sequence sharing the longest prefix (the previous turn).
        let best = self
            .kept
            .iter()
            .enumerate()
            .map(|(i, s)| (i, common_prefix(&s.tokens, &job.prompt)))
            .max_by_key(|(_, n)| *n);
        let (mut seq, cached) = match best {
            Some((i, n)) if n >= MIN_REUSE => {
                let mut s = self.kept.remove(i).unwrap_or_else(|| m.sequence(want));
                // Recompute at least the last prompt token to get its logits.
                let keep = n.min(job.prompt.len() - 1);
                s.truncate(keep);
                m.reserve(&mut s, want);
                (s, keep)
            }
            _ => (m.sequence(want), 0),
        };
        seq.truncate(cached);
        let sampler = Sampler::new(job.req.sampling.clone());
        let stop = StopFilter::new(&job.req.stop);
        Active {
            history: job.prompt.clone(),
            job,
            seq,
            fed: cached,
            cached,
            sampler,
            decoder: StreamDecoder::new(),
            stop,
            generated: 0,
            limit,
            logits: None,
            started: Instant::now(),
        }
    }

    fn usage(a: &Active) -> Usage {
        Usage {
            prompt_tokens: a.job.prompt.len(),
            cached_tokens: a.cached,
            completion_tokens: a.generated,
        }
    }

    /// Advances one request by one step; returns `Some(reason)` when it is finished.
    fn step(&self, a: &mut Active) -> Result<Option<FinishReason>, ModelError> {
        let m = &self.model.model;
        let tok = &self.model.tokenizer;
        if a.fed < a.job.prompt.len() {
            let end = (a.fed + PREFILL_CHUNK).min(a.job.prompt.len());
            let logits = m.forward(&mut a.seq, &a.job.prompt[a.fed..end])?;
            a.fed = end;
            if a.fed == a.job.prompt.len() {
                a.logits = Some(logits);
                if a.job
                    .tx
                    .send(Event::Started {
                        usage: Self::usage(a),
                    })
                    .is_err()
                {
                    return Ok(Some(FinishReason::Cancelled));
                }
                if let Ok(mut s) = self.stats.lock() {
                    s.prompt += (a.job.prompt.len() - a.cached) as u64;
                }
            }
            return Ok(None);
        }
        let Some(mut logits) = a.logits.take() else {
            return Err(ModelError::Invalid("no logits to sample from".into()));
        };
        let next = a.sampler.sample(&mut logits, &a.history);
        a.history.push(next);
        if tok.is_stop(next) {
            return Ok(Some(FinishReason::Stop));
        }
        a.generated += 1;
        if let Ok(mut s) = self.stats.lock() {
            s.generated += 1;
        }
        if let Some(piece) = a.decoder.push(tok, next) {
            let (out, stopped) = a.stop.push(&piece);
            if !out.is_empty() && a.job.tx.send(Event::Text(out)).is_err() {
                return Ok(Some(FinishReason::Cancelled));
            }
            if stopped {
                return Ok(Some(FinishReason::Stop));
            }
        }
        if a.generated >= a.limit || a.seq.tokens.len() + 1 >= a.seq.capacity() {
            return Ok(Some(FinishReason::Length));
        }
        a.logits = Some(m.forward(&mut a.seq, &[next])?);
        Ok(None)
    }

    fn finish(&mut self, mut a: Active, reason: FinishReason) {
        if reason != FinishReason::Cancelled {
            let tail = a.decoder.finish(&self.model.tokenizer).unwrap_or_default();
            let (out, _) = a.stop.push(&tail);
            let rest = if reason == FinishReason::Stop && a.stop.pending.is_empty() {
                String::new()
            } else {
                a.stop.flush()
            };
            let text = out + &rest;
            if !text.is_empty() {
                let _ = a.job.tx.send(Event::Text(text));
            }
            let _ = a.job.tx.send(Event::Done {
                reason,
                usage: Self::usage(&a),
            });
        }
        tracing::debug!(
            "generation done: {:?}, {} prompt ({} cached) + {} tokens in {} ms",
            reason,
            a.job.prompt.len(),
            a.cached,
            a.generated,
            a.started.elapsed().as_millis()
        );
        // Keep the sequence for the next turn of the conversation.
        if self.kept.len() >= KEPT_SEQUENCES {
            self.kept.pop_front();
        }
        self.kept.push_back(a.seq);
    }

    fn set_active(&self, n: usize) {
        if let Ok(mut s) = self.stats.lock() {
            s.active = n;
        }
    }

    fn run(mut self) {
        let mut active: Vec<Active> = Vec::new();
        loop {
            // Admit waiting jobs up to the active limit; block when idle.
            while active.len() < self.options.max_active {
                let job = if active.is_empty() {
                    match self.rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                } else {
                    match self.rx.try_recv() {
                        Ok(j) => j,
                        Err(_) => break,
                    }
                };
                if let Ok(mut s) = self.stats.lock() {
                    s.waiting = s.waiting.saturating_sub(1);
                }
                let a = self.begin(job);
                active.push(a);
            }
            self.set_active(active.len());
            // One step for each active request, in turn.
            let mut i = 0;
            while i < active.len() {
                let result = self.step(&mut active[i]);
                match result {
                    Ok(None) => i += 1,
                    Ok(Some(reason)) => {
                        let a = active.swap_remove(i);
                        // Counted out before its client hears it is done.
                        self.set_active(active.len());
                        self.finish(a, reason);
                    }
                    Err(e) => {
                        let a = active.swap_remove(i);
                        self.set_active(active.len());
                        let _ = a.job.tx.send(Event::Error(e.to_string()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_filter_holds_back_partial_matches() {
        let mut f = StopFilter::new(&["</end>".to_string()]);
        assert_eq!(f.push("hello </"), ("hello ".to_string(), false));
        assert_eq!(f.push("e"), (String::new(), false));
        assert_eq!(f.push("nd> more"), (String::new(), true));
        let mut f = StopFilter::new(&["</end>".to_string()]);
        assert_eq!(f.push("a </b"), ("a </b".to_string(), false));
        let mut f = StopFilter::new(&[]);
        assert_eq!(f.push("x"), ("x".to_string(), false));
    }

    #[test]
    fn common_prefix_counts_shared_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}

//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, repetition /
//! presence / frequency penalties, with a seeded generator so a request with a seed repeats.

/// Sampling parameters of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: off).
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (0: off).
    pub min_p: f32,
    /// CTRL-style repetition penalty on recent tokens (1: off).
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// OpenAI presence penalty (0: off).
    pub presence_penalty: f32,
    /// OpenAI frequency penalty (0: off).
    pub frequency_penalty: f32,
    /// Random seed (none: from the clock).
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Rejects NaN, infinities and out-of-range values with a message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: f32, lo: f32, hi: f32| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(format!(
                    "{name} must be a number between {lo} and {hi}, got {v}"
                ))
            }
        };
        check("temperature", self.temperature, 0.0, 100.0)?;
        check("top_p", self.top_p, 0.0, 1.0)?;
        check("min_p", self.min_p, 0.0, 1.0)?;
        check("repetition_penalty", self.repetition_penalty, 0.01, 100.0)?;
        check("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        Ok(())
    }
}

/// SplitMix64: small, fast, good enough to draw tokens, reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Draws tokens for one generation.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

/// Candidates whose logit is this far below the best (after temperature) have probability
/// below e^-30 relative to it and are dropped before sorting.
const NEGLIGIBLE: f32 = 30.0;

impl Sampler {
    /// A sampler for these parameters.
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5EED)
        });
        Sampler {
            params,
            rng: Rng::new(seed),
            candidates: Vec::new(),
        }
    }

    fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent {
                if seen.insert(t)
                    && let Some(l) = logits.get_mut(t as usize)
                {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &t in history {
                *counts.entry(t).or_default() += 1;
            }
            for (t, c) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * c as f32;
                }
            }
        }
    }

    /// Picks the next token; `history` is the generation so far (prompt included) for the
    /// penalties. Non-finite logits are never chosen.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.penalize(logits, history);
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        };
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax();
        }
        let inv_t = 1.0 / p.temperature;
        let best = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if !best.is_finite() {
            return 0;
        }
        self.candidates.clear();
        for (i, &l) in logits.iter().enumerate() {
            if l.is_finite() {
                let z = (l - best) * inv_t;
                if z > -NEGLIGIBLE {
                    self.candidates.push((i as u32, z));
                }
            }
        }
        let c = &mut self.candidates;
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && c.len() > p.top_k {
            c.truncate(p.top_k);
        }
        // Probabilities relative to the best (exp(0) = 1).
        let mut sum = 0.0f32;
        for x in c.iter_mut() {
            x.1 = x.1.exp();
            sum += x.1;
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * c.first().map_or(0.0, |x| x.1);
            let keep = c.iter().take_while(|x| x.1 >= floor).count().max(1);
            c.truncate(keep);
            sum = c.iter().map(|x| x.1).sum();
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = c.len();
            for (i, x) in c.iter().enumerate() {
                acc += x.1 / sum;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
            sum = c.iter().map(|x| x.1).sum();
        }
        let mut r = self.rng.next_f32() * sum;
        for x in c.iter() {
            r -= x.1;
            if r <= 0.0 {
                return x.0;
            }
        }
        c.last().map_or_else(argmax, |x| x.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, f32::NAN, 0.0]
    }

    #[test]
    fn greedy_takes_the_best_finite_logit() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut logits(), &[]), 1);
        let mut all_nan = vec![f32::NAN; 4];
        assert_eq!(s.sample(&mut all_nan, &[]), 0);
    }

    #[test]
    fn seeds_repeat_and_top_k_limits() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        let draw = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..200)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(params.clone()), draw(params.clone()));
        let top2 = draw(SamplingParams {
            top_k: 2,
            ..params.clone()
        });
        assert!(top2.iter().all(|t| *t == 1 || *t == 2));
        assert!(
            top2.contains(&2),
            "top-2 sampling should sometimes pick the second token"
        );
        let tight = draw(SamplingParams {
            min_p: 0.9,
            ..params.clone()
        });
        assert!(
            tight.iter().all(|t| *t == 1),
            "min_p 0.9 leaves only the best"
        );
        let nucleus = draw(SamplingParams {
            top_p: 0.5,
            ..params
        });
        assert!(
            nucleus.iter().all(|t| *t == 1),
            "the best token alone holds over half"
        );
        assert!(
            !draw(SamplingParams {
                temperature: 1.0,
                seed: Some(1),
                ..Default::default()
            })
            .contains(&4),
            "NaN never drawn"
        );
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 10.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits(), &[1, 1]), 2);
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 1.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits(), &[1]), 2);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("temperature"));
        let bad = SamplingParams {
            top_p: 1.5,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
        assert!(SamplingParams::default().validate().is_ok());
    }
}

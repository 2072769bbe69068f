//! Embeddings as stored: L2-normalised, then quantized to int8 with one f32 scale, so a
//! 384-dimension MiniLM vector costs 388 bytes and cosine similarity is an integer dot
//! product times two scales.

/// A unit vector quantized to int8: `v[i] ≈ q[i] · scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct QVec {
    /// Multiplier of every component.
    pub scale: f32,
    /// Quantized components.
    pub q: Vec<i8>,
}

impl QVec {
    /// Normalises `v` to unit length and quantizes it. Rejects empty, non-finite and zero
    /// vectors with a message naming the problem.
    pub fn quantize(v: &[f32]) -> Result<QVec, String> {
        if v.is_empty() {
            return Err("the vector is empty".into());
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("component {i} is not a finite number"));
        }
        // Eight partial sums in f64 (vectorizable, and exact enough for any f32 input).
        let mut sq = [0f64; 8];
        let mut max = 0f32;
        let mut chunks = v.chunks_exact(8);
        for c in chunks.by_ref() {
            for (s, &x) in sq.iter_mut().zip(c) {
                *s += f64::from(x) * f64::from(x);
            }
            max = c.iter().fold(max, |m, x| m.max(x.abs()));
        }
        for &x in chunks.remainder() {
            sq[0] += f64::from(x) * f64::from(x);
            max = max.max(x.abs());
        }
        let norm = sq.iter().sum::<f64>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return Err("the vector is all zeros".into());
        }
        let scale = (f64::from(max) / norm / 127.0) as f32;
        // q = round(x / norm / scale) = round(x · 127 / max), half away from zero.
        let k = 127.0 / max;
        let q = v
            .iter()
            .map(|&x| {
                let r = x * k;
                (r + 0.5f32.copysign(r)).clamp(-127.0, 127.0) as i8
            })
            .collect();
        Ok(QVec { scale, q })
    }

    /// Dimensions.
    pub fn dims(&self) -> usize {
        self.q.len()
    }

    /// Cosine similarity with another vector of the same length.
    pub fn similarity(&self, other: &QVec) -> f32 {
        dot(&self.q, &other.q) as f32 * self.scale * other.scale
    }

    /// The components as f32 (unit length up to quantization error).
    pub fn to_f32(&self) -> Vec<f32> {
        self.q.iter().map(|x| *x as f32 * self.scale).collect()
    }

    /// Stored form: the scale (little-endian f32) then the components.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4 + self.q.len()];
        b[..4].copy_from_slice(&self.scale.to_le_bytes());
        for (o, &x) in b[4..].iter_mut().zip(&self.q) {
            *o = x as u8;
        }
        b
    }

    /// Parses the stored form.
    pub fn from_bytes(b: &[u8]) -> Option<QVec> {
        let (s, q) = b.split_first_chunk::<4>()?;
        let scale = f32::from_le_bytes(*s);
        (scale.is_finite() && !q.is_empty()).then(|| QVec {
            scale,
            q: q.iter().map(|x| *x as i8).collect(),
        })
    }
}

/// Integer dot product of two int8 vectors on cairn-models' runtime-dispatched kernels
/// (AVX2 / NEON / portable); 0 for vectors of different lengths, which the index never mixes.
#[inline]
pub fn dot(a: &[i8], b: &[i8]) -> i32 {
    cairn_models::kernels::ops::dot_i8(a, b).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_cosine_is_close_to_exact() {
        let a: Vec<f32> = (0..384)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let b: Vec<f32> = (0..384)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2)
            .collect();
        let exact = {
            let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            d / (n(&a) * n(&b))
        };
        let (qa, qb) = (QVec::quantize(&a).unwrap(), QVec::quantize(&b).unwrap());
        assert!((qa.similarity(&qb) - exact).abs() < 0.01);
        assert!((qa.similarity(&qa) - 1.0).abs() < 0.01);
        assert_eq!(QVec::from_bytes(&qa.to_bytes()), Some(qa));
    }

    #[test]
    fn bad_vectors_are_refused() {
        assert!(QVec::quantize(&[]).is_err());
        assert!(QVec::quantize(&[0.0, 0.0]).is_err());
        assert!(
            QVec::quantize(&[1.0, f32::NAN])
                .unwrap_err()
                .contains("component 1")
        );
        assert!(QVec::quantize(&[f32::INFINITY]).is_err());
        assert!(QVec::from_bytes(&[0, 0]).is_none());
    }
}

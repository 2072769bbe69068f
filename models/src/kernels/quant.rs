//! GGUF block formats read natively by the kernels, the [`QMatrix`] view of a weight tensor,
//! and quantization of f32 activation rows into the int8 formats the dot products use.
//!
//! Weight formats (GGML layouts, little-endian, blocks of `block_size` elements):
//! - `Q4_0`: f16 `d`, 16 bytes of nibbles; `x = (q - 8)·d`. Low nibbles hold elements 0..16,
//!   high nibbles 16..32.
//! - `Q4_1`: f16 `d`, f16 `m`, 16 bytes of nibbles; `x = q·d + m`.
//! - `Q8_0`: f16 `d`, 32 × i8; `x = q·d`.
//! - `Q4_K`, `Q5_K`, `Q6_K`: 256-element super-blocks with 6/8-bit sub-block scales.
//! - `F16`, `F32`: plain rows.
//!
//! Activations for the 32-element formats are quantized per 32-block to int8 with an f32
//! scale `d = max|x|/127` and the scaled block sum `s = d·Σq` (what `Q8_1` carries), stored
//! "pair-interleaved": blocks go in pairs, and a pair's 64 bytes are
//! `[b0 e0..16 | b1 e0..16 | b0 e16..32 | b1 e16..32]`, which is exactly what one AVX2
//! register of low nibbles / high nibbles of two weight blocks lines up with. The K formats
//! use `Q8_K`: one f32 scale per 256 elements plus i16 sums per 16.

use half::f16;

use super::KernelError;
use super::buf::{AlignedBytes, AlignedF32};
use super::packed::PackedMatrix;

/// Elements per 32-block.
pub const QK: usize = 32;
/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// A weight block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    /// 32-bit floats.
    F32,
    /// 16-bit IEEE floats.
    F16,
    /// GGML Q4_0.
    Q4_0,
    /// GGML Q4_1.
    Q4_1,
    /// GGML Q8_0.
    Q8_0,
    /// GGML Q4_K.
    Q4K,
    /// GGML Q5_K.
    Q5K,
    /// GGML Q6_K.
    Q6K,
}

impl QType {
    /// Elements per block.
    pub const fn block_size(self) -> usize {
        match self {
            QType::F32 | QType::F16 => 1,
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => QK,
            QType::Q4K | QType::Q5K | QType::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            QType::F32 => 4,
            QType::F16 => 2,
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q8_0 => 34,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
        }
    }

    /// The type for a GGML/GGUF type id (`ggml_type`), if supported.
    pub fn from_ggml_id(id: u32) -> Result<QType, KernelError> {
        Ok(match id {
            0 => QType::F32,
            1 => QType::F16,
            2 => QType::Q4_0,
            3 => QType::Q4_1,
            8 => QType::Q8_0,
            12 => QType::Q4K,
            13 => QType::Q5K,
            14 => QType::Q6K,
            _ => return Err(KernelError::UnsupportedType(id)),
        })
    }

    /// The GGML type id (`ggml_type`).
    pub const fn ggml_id(self) -> u32 {
        match self {
            QType::F32 => 0,
            QType::F16 => 1,
            QType::Q4_0 => 2,
            QType::Q4_1 => 3,
            QType::Q8_0 => 8,
            QType::Q4K => 12,
            QType::Q5K => 13,
            QType::Q6K => 14,
        }
    }

    /// The type matching a candle `GgmlDType`, if supported.
    pub fn from_candle(dt: candle_core::quantized::GgmlDType) -> Option<QType> {
        use candle_core::quantized::GgmlDType as G;
        Some(match dt {
            G::F32 => QType::F32,
            G::F16 => QType::F16,
            G::Q4_0 => QType::Q4_0,
            G::Q4_1 => QType::Q4_1,
            G::Q8_0 => QType::Q8_0,
            G::Q4K => QType::Q4K,
            G::Q5K => QType::Q5K,
            G::Q6K => QType::Q6K,
            _ => return None,
        })
    }

    /// Which activation format the dot products of this weight type consume.
    pub(crate) fn family(self) -> Family {
        match self {
            QType::F32 | QType::F16 => Family::Float,
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => Family::Q32,
            QType::Q4K | QType::Q5K | QType::Q6K => Family::K,
        }
    }
}

/// Activation format families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// f32 activations (F32/F16 weights).
    Float,
    /// Pair-interleaved int8 per 32-block (Q4_0, Q4_1, Q8_0 weights).
    Q32,
    /// Q8_K per 256-block (K-quant weights).
    K,
}

/// A read-only view of one GGUF weight tensor: `rows` output features of `cols` inputs each,
/// stored row-major as consecutive GGML blocks.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    ty: QType,
    rows: usize,
    cols: usize,
    data: &'a [u8],
    packed: Option<&'a PackedMatrix>,
}

impl<'a> QMatrix<'a> {
    /// Wraps `data` after checking that `cols` is a multiple of the block size and that the
    /// byte length is exactly `rows · cols / block_size · type_size`.
    pub fn new(ty: QType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, KernelError> {
        let block = ty.block_size();
        if !cols.is_multiple_of(block) {
            return Err(KernelError::BlockAlignment { ty, cols, block });
        }
        let expected = (cols / block)
            .checked_mul(ty.type_size())
            .and_then(|b| b.checked_mul(rows))
            .ok_or(KernelError::Invalid("matrix size overflows usize"))?;
        if data.len() != expected {
            return Err(KernelError::DataLength {
                ty,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            data,
            packed: None,
        })
    }

    /// The same matrix with its repacked copy attached: the kernels use `packed` whenever its
    /// level is in force. Fails if `packed` was made from a matrix of another type or shape.
    pub fn with_packed(self, packed: &'a PackedMatrix) -> Result<Self, KernelError> {
        if packed.ty() != self.ty || packed.rows() != self.rows || packed.cols() != self.cols {
            return Err(KernelError::Invalid(
                "packed matrix differs in type or shape from the matrix",
            ));
        }
        Ok(QMatrix {
            packed: Some(packed),
            ..self
        })
    }

    /// The attached repacked copy, if any.
    pub fn packed(&self) -> Option<&'a PackedMatrix> {
        self.packed
    }

    /// Block type.
    pub fn ty(&self) -> QType {
        self.ty
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw block bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    /// The raw bytes of row `r` (empty if out of range).
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        self.data.get(r * rb..(r + 1) * rb).unwrap_or(&[])
    }

    /// Dequantizes row `r` into `out` (length `cols`), e.g. for an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if r >= self.rows {
            return Err(KernelError::Invalid("row index out of range"));
        }
        if out.len() != self.cols {
            return Err(KernelError::Shape {
                what: "dequantize_row out",
                expected: self.cols,
                got: out.len(),
            });
        }
        dequantize(self.ty, self.row(r), out);
        Ok(())
    }
}

/// Reads a little-endian f16 at `b[0..2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Dequantizes `data` (whole blocks) of type `ty` into `out` (`out.len()` elements).
pub(crate) fn dequantize(ty: QType, data: &[u8], out: &mut [f32]) {
    let ts = ty.type_size();
    match ty {
        QType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        QType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(data.chunks_exact(ts)) {
                let d = f16_at(b, 0);
                match ty {
                    QType::Q8_0 => {
                        for (j, o) in o.iter_mut().enumerate() {
                            *o = b[2 + j] as i8 as f32 * d;
                        }
                    }
                    _ => {
                        let (m, qs) = if ty == QType::Q4_1 {
                            (f16_at(b, 2), &b[4..20])
                        } else {
                            (-8.0 * d, &b[2..18])
                        };
                        for j in 0..16 {
                            o[j] = (qs[j] & 15) as f32 * d + m;
                            o[j + 16] = (qs[j] >> 4) as f32 * d + m;
                        }
                    }
                }
            }
        }
        QType::Q4K | QType::Q5K | QType::Q6K => {
            for (o, b) in out.chunks_exact_mut(QK_K).zip(data.chunks_exact(ts)) {
                let mut q = [0i8; QK_K];
                let mut sc = [0f32; 16];
                let mut mn = [0f32; 16];
                let per = kquant_block(ty, b, &mut q, &mut sc, &mut mn);
                for (i, o) in o.iter_mut().enumerate() {
                    *o = sc[i / per] * q[i] as f32 - mn[i / per];
                }
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block's 12 scale bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Decodes one K-quant super-block into integer values `q`, per-sub-block float scales and
/// mins such that `x[i] = scale[i / per] · q[i] − min[i / per]`; returns `per` (32 for
/// Q4_K/Q5_K, 16 for Q6_K).
pub(crate) fn kquant_block(
    ty: QType,
    b: &[u8],
    q: &mut [i8; QK_K],
    scale: &mut [f32; 16],
    min: &mut [f32; 16],
) -> usize {
    match ty {
        QType::Q4K | QType::Q5K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, scales);
                scale[j] = d * sc as f32;
                min[j] = dmin * m as f32;
            }
            let (qh, qs) = if ty == QType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for c in 0..4 {
                for l in 0..32 {
                    let byte = qs[c * 32 + l];
                    let (mut lo, mut hi) = (byte & 15, byte >> 4);
                    if let Some(qh) = qh {
                        lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                    }
                    q[c * 64 + l] = lo as i8;
                    q[c * 64 + 32 + l] = hi as i8;
                }
            }
            32
        }
        _ => {
            // Q6_K
            let ql = &b[0..128];
            let qh = &b[128..192];
            let sc = &b[192..208];
            let d = f16_at(b, 208);
            for j in 0..16 {
                scale[j] = d * (sc[j] as i8) as f32;
                min[j] = 0.0;
            }
            for h in 0..2 {
                let ql = &ql[h * 64..];
                let qh = &qh[h * 32..];
                let q = &mut q[h * 128..];
                for l in 0..32 {
                    q[l] = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i8 - 32;
                    q[l + 32] = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    q[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    q[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                }
            }
            16
        }
    }
}

/// Offset of element `e` (0..32) of block `b` inside a pair-interleaved row.
#[inline(always)]
pub(crate) fn pair_offset(b: usize, e: usize) -> usize {
    (b / 2) * 64 + (e / 16) * 32 + (b % 2) * 16 + (e % 16)
}

/// Int8 activations for the 32-block formats: `n` rows, pair-interleaved (see module doc).
#[derive(Default, Debug)]
pub(crate) struct Q8Acts {
    /// Rows.
    pub n: usize,
    /// Real 32-blocks per row.
    pub nb: usize,
    /// Block pairs per row (`nb` rounded up to even, halved); the pad block is zero.
    pub npairs: usize,
    /// Row stride of `s`: `nb` rounded up to a multiple of 8.
    pub sstride: usize,
    /// `n · npairs · 64` int8 values.
    pub qs: AlignedBytes,
    /// `n · npairs · 8` scales: per pair `[d0 ×4, d1 ×4]`.
    pub dv: AlignedF32,
    /// `n · npairs · 4`: per pair `[0, s0, 0, s1]` with `s = d·Σq`.
    pub s4: AlignedF32,
    /// `n · sstride`: `s` per block, zero-padded.
    pub s: AlignedF32,
    /// `n · sstride`: the integer block sums `Σq`, zero-padded.
    pub qsum: Vec<i32>,
}

impl Q8Acts {
    /// Resizes for `n` rows of `cols` (a multiple of 32) without shrinking capacity.
    pub fn reset(&mut self, n: usize, cols: usize) {
        self.n = n;
        self.nb = cols / QK;
        self.npairs = self.nb.div_ceil(2);
        self.sstride = self.nb.div_ceil(8) * 8;
        self.qs.resize(n * self.npairs * 64);
        self.dv.resize(n * self.npairs * 8);
        self.s4.resize(n * self.npairs * 4);
        self.s.resize(n * self.sstride);
        self.qsum.resize(n * self.sstride, 0);
    }

    /// The scale of block `b` of row `c`.
    #[inline(always)]
    pub fn d(&self, c: usize, b: usize) -> f32 {
        self.dv.as_slice()[c * self.npairs * 8 + (b / 2) * 8 + (b % 2) * 4]
    }

    /// `d·Σq` of block `b` of row `c`.
    #[inline(always)]
    pub fn s(&self, c: usize, b: usize) -> f32 {
        self.s.as_slice()[c * self.sstride + b]
    }

    /// The int8 values of row `c`.
    #[inline(always)]
    pub fn qs_row(&self, c: usize) -> &[i8] {
        &self.qs.as_i8()[c * self.npairs * 64..(c + 1) * self.npairs * 64]
    }

    /// Mutable views of all rows, which can be split into runs for parallel quantization.
    pub fn rows_mut(&mut self) -> Q8RowsMut<'_> {
        let (n, np, ss) = (self.n, self.npairs, self.sstride);
        Q8RowsMut {
            n,
            nb: self.nb,
            npairs: np,
            sstride: ss,
            qs: &mut self.qs.as_i8_mut()[..n * np * 64],
            dv: &mut self.dv.as_mut_slice()[..n * np * 8],
            s4: &mut self.s4.as_mut_slice()[..n * np * 4],
            s: &mut self.s.as_mut_slice()[..n * ss],
            qsum: &mut self.qsum[..n * ss],
        }
    }
}

/// Mutable views of a run of consecutive rows of [`Q8Acts`] (row 0 is the run's first).
pub(crate) struct Q8RowsMut<'a> {
    /// Rows in the run.
    pub n: usize,
    /// Real 32-blocks per row.
    pub nb: usize,
    npairs: usize,
    sstride: usize,
    qs: &'a mut [i8],
    dv: &'a mut [f32],
    s4: &'a mut [f32],
    s: &'a mut [f32],
    qsum: &'a mut [i32],
}

impl<'a> Q8RowsMut<'a> {
    /// Mutable views of row `c` of the run.
    pub fn row_mut(&mut self, c: usize) -> Q8RowMut<'_> {
        let np = self.npairs;
        let ss = self.sstride;
        Q8RowMut {
            qs: &mut self.qs[c * np * 64..(c + 1) * np * 64],
            dv: &mut self.dv[c * np * 8..(c + 1) * np * 8],
            s4: &mut self.s4[c * np * 4..(c + 1) * np * 4],
            s: &mut self.s[c * ss..(c + 1) * ss],
            qsum: &mut self.qsum[c * ss..(c + 1) * ss],
        }
    }

    /// The first `k` rows (at most all of them) and the rest, as two runs.
    pub fn split_at(self, k: usize) -> (Q8RowsMut<'a>, Q8RowsMut<'a>) {
        let k = k.min(self.n);
        let (np, ss) = (self.npairs, self.sstride);
        let (qs0, qs1) = self.qs.split_at_mut(k * np * 64);
        let (dv0, dv1) = self.dv.split_at_mut(k * np * 8);
        let (s40, s41) = self.s4.split_at_mut(k * np * 4);
        let (s0, s1) = self.s.split_at_mut(k * ss);
        let (q0, q1) = self.qsum.split_at_mut(k * ss);
        let run = |n, qs, dv, s4, s, qsum| Q8RowsMut {
            n,
            nb: self.nb,
            npairs: np,
            sstride: ss,
            qs,
            dv,
            s4,
            s,
            qsum,
        };
        (
            run(k, qs0, dv0, s40, s0, q0),
            run(self.n - k, qs1, dv1, s41, s1, q1),
        )
    }
}

/// Mutable views of one row of [`Q8Acts`].
pub(crate) struct Q8RowMut<'a> {
    /// The int8 values, pair-interleaved.
    pub qs: &'a mut [i8],
    /// Scales, per pair `[d0 ×4, d1 ×4]`.
    pub dv: &'a mut [f32],
    /// Per pair `[0, s0, 0, s1]`.
    pub s4: &'a mut [f32],
    /// `s = d·Σq` per block.
    pub s: &'a mut [f32],
    /// `Σq` per block.
    pub qsum: &'a mut [i32],
}

impl Q8RowMut<'_> {
    /// Stores the scale `d` and integer sum `isum` of block `b`.
    #[inline(always)]
    pub fn store_block(&mut self, b: usize, d: f32, isum: i32) {
        let (k, h) = (b / 2, b % 2);
        let sum = d * isum as f32;
        self.dv[k * 8 + h * 4..k * 8 + h * 4 + 4].fill(d);
        self.s4[k * 4 + h * 2] = 0.0;
        self.s4[k * 4 + h * 2 + 1] = sum;
        if b < self.s.len() {
            self.s[b] = sum;
            self.qsum[b] = isum;
        }
    }

    /// Zeroes the block sums past the real blocks `nb`.
    pub fn pad_sums(&mut self, nb: usize) {
        self.s[nb..].fill(0.0);
        self.qsum[nb..].fill(0);
    }
}

/// Portable quantization of one row `x` (length `nb·32`) into row `c` of `a`.
pub(crate) fn quantize_q8_row_portable(x: &[f32], a: &mut Q8RowsMut<'_>, c: usize) {
    let nb = a.nb;
    let np = a.npairs;
    let mut row = a.row_mut(c);
    for b in 0..np * 2 {
        let (d, sum) = if b < nb {
            let xb = &x[b * QK..(b + 1) * QK];
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (e, &v) in xb.iter().enumerate() {
                let q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
                row.qs[pair_offset(b, e)] = q;
                sum += q as i32;
            }
            (d, sum)
        } else {
            for e in 0..QK {
                row.qs[pair_offset(b, e)] = 0;
            }
            (0.0, 0)
        };
        row.store_block(b, d, sum);
    }
    row.pad_sums(nb);
}

/// Weight rows of a 32-block format unpacked into the pair-interleaved layout of [`Q8Acts`]
/// (one byte per value: 0..16 for Q4_0/Q4_1, signed for Q8_0), for the GEMM.
#[derive(Default, Debug)]
pub(crate) struct Packed32 {
    /// Rows held.
    pub rows: usize,
    /// Block pairs per row.
    pub npairs: usize,
    /// Row stride of `m`.
    pub sstride: usize,
    /// Whether values are signed (Q8_0) rather than unsigned nibbles.
    pub signed: bool,
    /// `rows · npairs · 64` values.
    pub qs: AlignedBytes,
    /// `rows · npairs · 8` scales: per pair `[d0 ×4, d1 ×4]`.
    pub dv: AlignedF32,
    /// `rows · sstride` block offsets `m` (Q4_1 `m`, Q4_0 `−8d`, Q8_0 zero), zero-padded.
    pub m: AlignedF32,
}

/// Unpacks rows `r0..r1` of `w` (a 32-block format) into `p`.
pub(crate) fn pack_q32(w: &QMatrix<'_>, r0: usize, r1: usize, p: &mut Packed32) {
    let nb = w.cols() / QK;
    let np = nb.div_ceil(2);
    let ss = nb.div_ceil(8) * 8;
    let rows = r1 - r0;
    p.rows = rows;
    p.npairs = np;
    p.sstride = ss;
    p.signed = w.ty() == QType::Q8_0;
    p.qs.resize(rows * np * 64);
    p.dv.resize(rows * np * 8);
    p.m.resize(rows * ss);
    let ty = w.ty();
    let ts = ty.type_size();
    let qs_all = p.qs.as_mut_slice();
    let dv_all = p.dv.as_mut_slice();
    let m_all = p.m.as_mut_slice();
    for i in 0..rows {
        let row = w.row(r0 + i);
        let qs = &mut qs_all[i * np * 64..(i + 1) * np * 64];
        let dv = &mut dv_all[i * np * 8..(i + 1) * np * 8];
        let m = &mut m_all[i * ss..(i + 1) * ss];
        m.fill(0.0);
        for b in 0..np * 2 {
            let base = (b / 2) * 64 + (b % 2) * 16;
            let (k, h) = (b / 2, b % 2);
            if b >= nb {
                qs[base..base + 16].fill(0);
                qs[base + 32..base + 48].fill(0);
                dv[k * 8 + h * 4..k * 8 + h * 4 + 4].fill(0.0);
                continue;
            }
            let blk = &row[b * ts..(b + 1) * ts];
            let d = f16_at(blk, 0);
            dv[k * 8 + h * 4..k * 8 + h * 4 + 4].fill(d);
            match ty {
                QType::Q8_0 => {
                    qs[base..base + 16].copy_from_slice(&blk[2..18]);
                    qs[base + 32..base + 48].copy_from_slice(&blk[18..34]);
                }
                _ => {
                    let (mm, nib) = if ty == QType::Q4_1 {
                        (f16_at(blk, 2), &blk[4..20])
                    } else {
                        (-8.0 * d, &blk[2..18])
                    };
                    m[b] = mm;
                    for j in 0..16 {
                        qs[base + j] = nib[j] & 15;
                        qs[base + 32 + j] = nib[j] >> 4;
                    }
                }
            }
        }
    }
}

/// Q8_K activations for the K-quant formats: per row `nsb` super-blocks of 256.
#[derive(Default, Debug)]
pub(crate) struct Q8KActs {
    /// Rows.
    pub n: usize,
    /// Super-blocks per row.
    pub nsb: usize,
    /// `n · nsb · 256` int8 values in natural order.
    pub qs: Vec<i8>,
    /// `n · nsb` scales.
    pub d: Vec<f32>,
    /// `n · nsb · 16` sums of 16 consecutive values.
    pub bsums: Vec<i16>,
}

impl Q8KActs {
    /// Resizes for `n` rows of `cols` (a multiple of 256).
    pub fn reset(&mut self, n: usize, cols: usize) {
        self.n = n;
        self.nsb = cols / QK_K;
        self.qs.resize(n * cols, 0);
        self.d.resize(n * self.nsb, 0.0);
        self.bsums.resize(n * self.nsb * 16, 0);
    }
}

/// Portable Q8_K quantization of row `x` into row `c` of `a`.
pub(crate) fn quantize_q8k_row_portable(x: &[f32], a: &mut Q8KActs, c: usize) {
    let nsb = a.nsb;
    for sb in 0..nsb {
        let xb = &x[sb * QK_K..(sb + 1) * QK_K];
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let qs = &mut a.qs[(c * nsb + sb) * QK_K..(c * nsb + sb + 1) * QK_K];
        for (q, &v) in qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        for j in 0..16 {
            a.bsums[(c * nsb + sb) * 16 + j] =
                qs[j * 16..(j + 1) * 16].iter().map(|&q| q as i16).sum();
        }
        a.d[c * nsb + sb] = d;
    }
}

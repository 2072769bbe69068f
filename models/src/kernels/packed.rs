//! Weights repacked once, at load, into 16-row panels for the int8 dot-product kernels of
//! AVX-512 VNNI (`vpdpbusd`).
//!
//! A [`PackedMatrix`] holds the same numbers as the GGUF blocks it was made from (Q4_0, Q4_1 or
//! Q8_0), reordered so that one 64-byte load gives 4 consecutive weights of 16 consecutive
//! rows: a `vpdpbusd` of that register with 4 activations broadcast to every lane advances 16
//! output rows of one token at once, with no horizontal sums. The same kernel serves one token
//! (decode) and many (prompt, embeddings), so a token's result never depends on how many
//! tokens share the call.
//!
//! Layout, for panel `p` (rows `16p..16p+16`, the last one padded with zero rows) and 32-block
//! `b`:
//! - `qs` — Q4_0/Q4_1: 256 bytes, 4 groups `G` of 64 bytes; byte `4·i + j` of group `G` holds
//!   weight `4G + j` of row `i` in its low nibble and weight `16 + 4G + j` in its high nibble
//!   (nibbles as stored, 0..16). Q8_0: 512 bytes, 8 groups `g` of 64 bytes; byte `4·i + j` of
//!   group `g` is weight `4g + j` of row `i` plus 128 (`q ^ 0x80`: `vpdpbusd` multiplies
//!   unsigned by signed bytes, so the weights take the unsigned side and the kernel starts
//!   each block's sum at `−128·Σx` to take the offset back out, exactly).
//! - `sc` — the 16 rows' f16 scales `d`, then for Q4_1 their 16 f16 mins `m`.
//!
//! A packed matrix is a cache of its source's numbers for one [`Level`]; attached to the
//! [`QMatrix`] view with [`QMatrix::with_packed`], it is used whenever that level is in force
//! and ignored otherwise.

use super::KernelError;
use super::buf::AlignedBytes;
use super::dispatch::Level;
use super::quant::{QK, QMatrix, QType};

/// Rows per panel (the lanes of one AVX-512 register of i32).
pub const PANEL: usize = 16;

/// A weight matrix repacked into 16-row panels for one kernel level (see the module docs).
pub struct PackedMatrix {
    ty: QType,
    level: Level,
    rows: usize,
    cols: usize,
    /// Packed weight bytes, `panels · nb · qs_block` (64-byte aligned).
    qs: AlignedBytes,
    /// Per panel and block the 16 f16 scales (and 16 f16 mins for Q4_1), `panels · nb ·
    /// sc_block` bytes.
    sc: AlignedBytes,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("ty", &self.ty)
            .field("level", &self.level)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl PackedMatrix {
    /// Whether `level` has packed kernels for weights of type `ty`.
    pub fn supports(level: Level, ty: QType) -> bool {
        level == Level::Avx512Vnni && matches!(ty, QType::Q4_0 | QType::Q4_1 | QType::Q8_0)
    }

    /// Repacks `w` for `level`; `Ok(None)` when that level has no packed kernel for its type
    /// (the raw blocks are then used as they are), an error when `level` is not supported by
    /// this CPU.
    pub fn new(w: &QMatrix<'_>, level: Level) -> Result<Option<PackedMatrix>, KernelError> {
        if !level.is_supported() {
            return Err(KernelError::Unsupported(level));
        }
        if !Self::supports(level, w.ty()) {
            return Ok(None);
        }
        let ty = w.ty();
        let nb = w.cols() / QK;
        let panels = w.rows().div_ceil(PANEL);
        let (qb, sb) = (qs_block(ty), sc_block(ty));
        let qs_len = panels
            .checked_mul(nb)
            .and_then(|v| v.checked_mul(qb))
            .ok_or(KernelError::Invalid("packed matrix size overflows usize"))?;
        let mut qs = AlignedBytes::default();
        qs.resize(qs_len);
        let mut sc = AlignedBytes::default();
        sc.resize(panels * nb * sb);
        let (qd, sd) = (qs.as_mut_slice(), sc.as_mut_slice());
        let ts = ty.type_size();
        for r in 0..w.rows() {
            let (p, i) = (r / PANEL, r % PANEL);
            let row = w.row(r);
            for b in 0..nb {
                let blk = &row[b * ts..(b + 1) * ts];
                let q = &mut qd[(p * nb + b) * qb..(p * nb + b + 1) * qb];
                let s = &mut sd[(p * nb + b) * sb..(p * nb + b + 1) * sb];
                s[2 * i..2 * i + 2].copy_from_slice(&blk[0..2]);
                match ty {
                    QType::Q8_0 => {
                        for g in 0..8 {
                            for j in 0..4 {
                                q[g * 64 + 4 * i + j] = blk[2 + 4 * g + j] ^ 0x80;
                            }
                        }
                    }
                    _ => {
                        let nib = if ty == QType::Q4_1 {
                            s[32 + 2 * i..32 + 2 * i + 2].copy_from_slice(&blk[2..4]);
                            &blk[4..20]
                        } else {
                            &blk[2..18]
                        };
                        // GGML byte e holds weight e (low nibble) and 16 + e (high nibble):
                        // group g takes bytes 4g..4g+4 as they are.
                        for g in 0..4 {
                            q[g * 64 + 4 * i..g * 64 + 4 * i + 4]
                                .copy_from_slice(&nib[4 * g..4 * g + 4]);
                        }
                    }
                }
            }
        }
        Ok(Some(PackedMatrix {
            ty,
            level,
            rows: w.rows(),
            cols: w.cols(),
            qs,
            sc,
        }))
    }

    /// Block type of the source.
    pub fn ty(&self) -> QType {
        self.ty
    }

    /// The kernel level this packing is for.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Panels of 16 rows (the last may be partly padding).
    pub fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    /// 32-blocks per row.
    pub fn blocks(&self) -> usize {
        self.cols / QK
    }

    /// Bytes held (weights and scales).
    pub fn bytes(&self) -> usize {
        self.qs.as_slice().len() + self.sc.as_slice().len()
    }

    /// The packed weights.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn qs(&self) -> &[u8] {
        self.qs.as_slice()
    }

    /// The packed f16 scales (and mins) as raw bytes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn sc(&self) -> &[u8] {
        self.sc.as_slice()
    }
}

/// Packed weight bytes per panel and block.
pub(crate) const fn qs_block(ty: QType) -> usize {
    match ty {
        QType::Q8_0 => 512,
        _ => 256,
    }
}

/// Packed scale bytes per panel and block: 16 f16 `d`, plus 16 f16 `m` for Q4_1.
pub(crate) const fn sc_block(ty: QType) -> usize {
    match ty {
        QType::Q4_1 => 64,
        _ => 32,
    }
}

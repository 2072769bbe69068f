//! Quantized matrix multiplication: `out[n × rows] = x[n × cols] · Wᵀ`.
//!
//! The activations `x` are quantized once per call (int8 per 32-block for Q4_0/Q4_1/Q8_0,
//! split across the pool for prompts; Q8_K for the K formats; kept as f32 for F16/F32
//! weights) and shared by every task. Work is split into tasks of (weight, chunk of output
//! rows, chunk of tokens) handed to the [`Pool`].
//!
//! - `n ≤ 2` (decode): matrix-vector kernels stream the raw GGUF blocks once per token.
//! - `n > 2` (prompt): each task first unpacks its chunk of weight rows into a small,
//!   L1-resident buffer in the activations' layout, then runs a register-blocked micro-kernel
//!   over tiles of weight rows × tokens, so every unpacked weight block is reused for all
//!   tokens of the chunk and every activation block for all rows of a tile.

use std::cell::RefCell;
use std::sync::Mutex;

use super::KernelError;
use super::arch;
use super::buf::AlignedF32;
use super::dispatch::{self, Level};
use super::packed::{PANEL, PackedMatrix, qs_block, sc_block};
use super::pool::Pool;
use super::quant::{Family, Packed32, Q8Acts, Q8KActs, Q8RowsMut, QK, QMatrix, QType};

/// Up to this many tokens the matrix-vector path is used.
const GEMV_MAX_N: usize = 2;
/// At most this many weights go into one parallel dispatch of [`matmul_many`].
const MAX_MANY: usize = 8;

/// Quantized activations of one call, for every family its weights need.
#[derive(Default, Debug)]
pub(crate) struct Acts {
    /// For Q4_0/Q4_1/Q8_0 weights.
    pub q8: Q8Acts,
    /// For K-quant weights.
    pub q8k: Q8KActs,
    /// For F16/F32 weights: `x` copied with rows padded to `fstride` (multiple of 16).
    pub f: AlignedF32,
    /// Row stride of `f`.
    pub fstride: usize,
}

/// Per-thread scratch of the GEMM tasks.
#[derive(Default, Debug)]
pub(crate) struct Scratch {
    /// Unpacked 32-block weights.
    pub packed: Packed32,
    /// Weight rows converted to f32 (F16/F32 weights), rows padded like `Acts::f`.
    pub fw: AlignedF32,
}

thread_local! {
    static ACTS: RefCell<Acts> = RefCell::new(Acts::default());
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr {
    /// Start of the output.
    pub ptr: *mut f32,
    /// Elements in the output.
    pub len: usize,
}

// SAFETY: tasks write disjoint index ranges of the output (distinct rows of the weight ×
// tokens), and the dispatching call holds the unique borrow of the output until all tasks end.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The sub-slice `start..start+len`.
    ///
    /// # Safety
    /// The range must be in bounds and not accessed by any other task at the same time.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)] // A raw output pointer split into disjoint per-task slices.
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        debug_assert!(start + len <= self.len);
        // SAFETY: in bounds and exclusive per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Computes `out[n × w.rows] = x[n × w.cols] · Wᵀ` on `pool`.
///
/// `x` is row-major `n × cols` f32, `out` row-major `n × rows`. Returns an error (never
/// panics) if the slice lengths do not match the shapes.
pub fn matmul(
    pool: &Pool,
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_many(pool, &[w], x, n, &mut [out])
}

/// Computes `outs[i] = x · W_iᵀ` for several weights sharing one input (Q/K/V, gate/up),
/// quantizing `x` once and running all of them in one parallel dispatch.
///
/// All weights must have the same `cols`; `outs[i]` has length `n · ws[i].rows()`.
pub fn matmul_many(
    pool: &Pool,
    ws: &[&QMatrix<'_>],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
) -> Result<(), KernelError> {
    if ws.len() != outs.len() {
        return Err(KernelError::Invalid(
            "matmul_many: ws and outs differ in length",
        ));
    }
    let Some(first) = ws.first() else {
        return Ok(());
    };
    let cols = first.cols();
    if ws.iter().any(|w| w.cols() != cols) {
        return Err(KernelError::Invalid("matmul_many: weights differ in cols"));
    }
    let expected = n
        .checked_mul(cols)
        .ok_or(KernelError::Invalid("n · cols overflows"))?;
    if x.len() != expected {
        return Err(KernelError::Shape {
            what: "x",
            expected,
            got: x.len(),
        });
    }
    for (w, o) in ws.iter().zip(outs.iter()) {
        let expected = n
            .checked_mul(w.rows())
            .ok_or(KernelError::Invalid("n · rows overflows"))?;
        if o.len() != expected {
            return Err(KernelError::Shape {
                what: "out",
                expected,
                got: o.len(),
            });
        }
    }
    if n == 0 || cols == 0 {
        for o in outs.iter_mut() {
            o.fill(0.0);
        }
        return Ok(());
    }
    let level = dispatch::level();
    ACTS.with(|cell| {
        let mut local = None;
        let mut guard = cell.try_borrow_mut().ok();
        let acts: &mut Acts = match guard.as_deref_mut() {
            Some(a) => a,
            None => local.insert(Acts::default()),
        };
        let mut need = [false; 3];
        for w in ws.iter() {
            need[w.ty().family() as usize] = true;
        }
        if need[Family::Q32 as usize] {
            acts.q8.reset(n, cols);
            quantize_q8(pool, level, x, cols, &mut acts.q8);
        }
        if need[Family::K as usize] {
            acts.q8k.reset(n, cols);
            arch::quantize_q8k(level, x, n, cols, &mut acts.q8k);
        }
        if need[Family::Float as usize] {
            let fs = cols.div_ceil(16) * 16;
            acts.fstride = fs;
            acts.f.resize(n * fs);
            let f = acts.f.as_mut_slice();
            for c in 0..n {
                f[c * fs..c * fs + cols].copy_from_slice(&x[c * cols..(c + 1) * cols]);
                f[c * fs + cols..(c + 1) * fs].fill(0.0);
            }
        }
        let acts: &Acts = acts;
        for (wg, og) in ws.chunks(MAX_MANY).zip(outs.chunks_mut(MAX_MANY)) {
            run_group(pool, level, wg, og, acts, n);
        }
    });
    Ok(())
}

/// Quantizes the rows of `x` into `a` (already reset), split across the pool for prompts:
/// on one thread this is a sixth of a 2-thread prompt's serial time.
fn quantize_q8(pool: &Pool, level: Level, x: &[f32], cols: usize, a: &mut Q8Acts) {
    /// Fewer rows per part than this are not worth a dispatch.
    const MIN_ROWS: usize = 8;
    const MAX_PARTS: usize = 16;
    let n = a.n;
    let parts = pool.threads().min(n / MIN_ROWS).clamp(1, MAX_PARTS);
    let mut rows = a.rows_mut();
    if parts == 1 {
        return arch::quantize_q8(level, x, n, cols, &mut rows);
    }
    let slots: [Mutex<Option<(usize, Q8RowsMut<'_>)>>; MAX_PARTS] =
        std::array::from_fn(|_| Mutex::new(None));
    let mut start = 0;
    for (p, slot) in slots.iter().take(parts).enumerate() {
        let take = (n - start) / (parts - p);
        let (head, tail) = rows.split_at(take);
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((start, head));
        rows = tail;
        start += take;
    }
    pool.for_each(parts, |p| {
        let part = slots[p].lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((start, mut run)) = part {
            let xs = &x[start * cols..(start + run.n) * cols];
            arch::quantize_q8(level, xs, run.n, cols, &mut run);
        }
    });
}

/// How one group of weights is cut into tasks.
struct Plan {
    /// Output rows per task, per weight.
    rchunk: [usize; MAX_MANY],
    /// Row chunks per weight.
    nrc: [usize; MAX_MANY],
    /// First task of each weight within a token chunk.
    start: [usize; MAX_MANY + 1],
    /// Tokens per task.
    tchunk: usize,
    /// Token chunks.
    ntc: usize,
}

fn plan(pool: &Pool, level: Level, ws: &[&QMatrix<'_>], n: usize) -> Plan {
    let threads = pool.threads();
    let total_rows: usize = ws.iter().map(|w| w.rows()).sum();
    let cols = ws[0].cols();
    let (tchunk, ntc, base_chunk) = if n <= GEMV_MAX_N {
        let chunk = if threads == 1 {
            usize::MAX
        } else {
            total_rows.div_ceil(threads * 4).div_ceil(16) * 16
        };
        (n, 1, chunk.max(16))
    } else {
        // Tokens: keep a chunk's activations within ~192 KiB of L2.
        let tmax = (192 * 1024 / (cols + 64)).max(8);
        let ntc = n.div_ceil(tmax);
        let tchunk = n.div_ceil(ntc).div_ceil(4) * 4;
        let ntc = n.div_ceil(tchunk);
        // Rows: unpacked weights (~1.6 bytes per value) within ~24 KiB of L1.
        let mut rc = (24 * 1024 / (cols * 8 / 5 + 64)).clamp(4, 256) / 4 * 4;
        // Enough tasks for every thread.
        while rc > 4 && threads > 1 && ntc * total_rows.div_ceil(rc) < threads * 4 {
            rc = (rc / 2).div_ceil(4) * 4;
        }
        (tchunk, ntc, rc)
    };
    let mut p = Plan {
        rchunk: [0; MAX_MANY],
        nrc: [0; MAX_MANY],
        start: [0; MAX_MANY + 1],
        tchunk,
        ntc,
    };
    for (i, w) in ws.iter().enumerate() {
        // The same `level` as the tasks': packed weights need whole-panel row chunks.
        let rc = if packed_for(w, level).is_some() {
            packed_chunk(w, n, base_chunk, ntc, total_rows, threads)
        } else {
            base_chunk
        };
        let rc = rc.min(w.rows().max(1));
        p.rchunk[i] = rc;
        p.nrc[i] = w.rows().div_ceil(rc);
        p.start[i + 1] = p.start[i] + p.nrc[i];
    }
    p
}

/// The packed copy of `w` the kernels of `level` use, if there is one.
fn packed_for<'a>(w: &QMatrix<'a>, level: Level) -> Option<&'a PackedMatrix> {
    w.packed().filter(|p| p.level() == level)
}

/// Output rows per task for a packed weight: whole 16-row panels. Decode keeps the matrix-vector
/// split (already a multiple of 16); a prompt takes ~96 KiB of packed weights per task (they
/// stay in L2 while every token of the chunk passes over them), halved while there are fewer
/// than 4 tasks per thread.
fn packed_chunk(
    w: &QMatrix<'_>,
    n: usize,
    gemv_chunk: usize,
    ntc: usize,
    total_rows: usize,
    threads: usize,
) -> usize {
    if n <= GEMV_MAX_N {
        return gemv_chunk.min(w.rows()).div_ceil(PANEL).max(1) * PANEL;
    }
    let per_row = (w.cols() / QK) * (qs_block(w.ty()) + sc_block(w.ty())) / PANEL;
    let mut rc =
        (96 * 1024 / per_row.max(1)).clamp(2 * PANEL, 32 * PANEL) / (2 * PANEL) * (2 * PANEL);
    while rc > PANEL && threads > 1 && ntc * total_rows.div_ceil(rc) < threads * 4 {
        rc = (rc / 2).div_ceil(PANEL) * PANEL;
    }
    rc
}

fn run_group(
    pool: &Pool,
    level: Level,
    ws: &[&QMatrix<'_>],
    outs: &mut [&mut [f32]],
    acts: &Acts,
    n: usize,
) {
    let p = plan(pool, level, ws, n);
    let mut optrs = [OutPtr {
        ptr: std::ptr::null_mut(),
        len: 0,
    }; MAX_MANY];
    for (o, slot) in outs.iter_mut().zip(optrs.iter_mut()) {
        *slot = OutPtr {
            ptr: o.as_mut_ptr(),
            len: o.len(),
        };
    }
    let per_tc = p.start[ws.len()];
    let total = per_tc * p.ntc;
    let task = |t: usize| {
        let tc = t / per_tc;
        let rest = t % per_tc;
        let i = (0..ws.len()).rfind(|&i| p.start[i] <= rest).unwrap_or(0);
        let w = ws[i];
        let r0 = (rest - p.start[i]) * p.rchunk[i];
        let r1 = (r0 + p.rchunk[i]).min(w.rows());
        let c0 = tc * p.tchunk;
        let c1 = (c0 + p.tchunk).min(n);
        run_task(level, w, r0, r1, c0, c1, n, acts, optrs[i]);
    };
    pool.run(total, &task);
}

/// Computes rows `r0..r1` × tokens `c0..c1` of one weight.
#[allow(clippy::too_many_arguments)]
fn run_task(
    level: Level,
    w: &QMatrix<'_>,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
    n: usize,
    acts: &Acts,
    out: OutPtr,
) {
    if r0 >= r1 || c0 >= c1 {
        return;
    }
    let rows = w.rows();
    if let Some(p) = packed_for(w, level) {
        // Row chunks of packed weights are whole panels (see `packed_chunk`).
        let (p0, p1) = (r0 / PANEL, r1.div_ceil(PANEL));
        if arch::gemm_packed(level, p, p0, p1, &acts.q8, c0, c1, out, rows) {
            return;
        }
    }
    let gemv = n <= GEMV_MAX_N;
    match w.ty().family() {
        Family::Q32 if gemv => {
            for c in c0..c1 {
                // SAFETY: this task alone owns rows r0..r1 of every token's output row.
                let o = unsafe { out.slice(c * rows + r0, r1 - r0) };
                arch::gemv_q32(level, w, r0, r1, &acts.q8, c, o);
            }
        }
        Family::Q32 => SCRATCH.with(|s| {
            let mut local = None;
            let mut guard = s.try_borrow_mut().ok();
            let s: &mut Scratch = match guard.as_deref_mut() {
                Some(s) => s,
                None => local.insert(Scratch::default()),
            };
            arch::pack_q32(level, w, r0, r1, &mut s.packed);
            arch::gemm_q32(level, &s.packed, &acts.q8, c0, c1, out, rows, r0);
        }),
        Family::K => {
            for c in c0..c1 {
                // SAFETY: this task alone owns rows r0..r1 of every token's output row.
                let o = unsafe { out.slice(c * rows + r0, r1 - r0) };
                arch::gemv_k(level, w, r0, r1, &acts.q8k, c, o);
            }
        }
        Family::Float if gemv => {
            for c in c0..c1 {
                let x = &acts.f.as_slice()[c * acts.fstride..(c + 1) * acts.fstride];
                // SAFETY: this task alone owns rows r0..r1 of every token's output row.
                let o = unsafe { out.slice(c * rows + r0, r1 - r0) };
                arch::gemv_f(level, w, r0, r1, x, o);
            }
        }
        Family::Float => SCRATCH.with(|s| {
            let mut local = None;
            let mut guard = s.try_borrow_mut().ok();
            let s: &mut Scratch = match guard.as_deref_mut() {
                Some(s) => s,
                None => local.insert(Scratch::default()),
            };
            let fs = acts.fstride;
            s.fw.resize((r1 - r0) * fs);
            let fw = s.fw.as_mut_slice();
            for (i, r) in (r0..r1).enumerate() {
                let row = &mut fw[i * fs..(i + 1) * fs];
                super::quant::dequantize(w.ty(), w.row(r), &mut row[..w.cols()]);
                row[w.cols()..].fill(0.0);
            }
            arch::gemm_f(level, &s.fw, r1 - r0, acts, c0, c1, out, rows, r0);
        }),
    }
}

/// Whether `ty` is read natively by [`matmul`].
pub fn is_supported(ty: QType) -> bool {
    matches!(
        ty,
        QType::F32
            | QType::F16
            | QType::Q4_0
            | QType::Q4_1
            | QType::Q8_0
            | QType::Q4K
            | QType::Q5K
            | QType::Q6K
    )
}

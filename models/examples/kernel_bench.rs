//! Micro-benchmark of the CPU matmul kernels at the shapes of SmolLM2-135M (Q4_1 layers,
//! Q8_0 tied output head), plus a whole-model estimate of the matmul time per token.
//!
//! `cargo run --release -p cairn-models --example kernel_bench [-- --quick] [-- --threads 1,2]`
//!
//! Per shape it prints the time per call and the effective GFLOP/s (2·rows·cols·n / time).
//! "hot" runs repeat one matrix (it stays in cache); "cold" cycles through enough copies to
//! exceed the last-level cache, as in a real forward pass. The whole-model figures run the
//! 30 layers' matmuls (distinct weights, as the model streams them) plus the output head.

use std::time::{Duration, Instant};

use cairn_models::kernels::{self, Pool, QMatrix, QType, matmul, matmul_many};

const LAYERS: usize = 30;
const HIDDEN: usize = 576;
const KV: usize = 192;
const FFN: usize = 1536;
const VOCAB: usize = 49152;

/// Deterministic random bytes.
fn rand_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}

/// A synthetic weight of `ty` with sane block scales.
fn weight(ty: QType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let nb = rows * cols / ty.block_size();
    let ts = ty.type_size();
    let mut b = rand_bytes(seed, nb * ts);
    let d = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let m = half::f16::from_f32(-0.08).to_bits().to_le_bytes();
    for blk in b.chunks_exact_mut(ts) {
        blk[0..2].copy_from_slice(&d);
        if ty == QType::Q4_1 {
            blk[2..4].copy_from_slice(&m);
        }
    }
    b
}

fn rand_x(n: usize, cols: usize) -> Vec<f32> {
    rand_bytes(99, n * cols)
        .into_iter()
        .map(|v| v as f32 / 128.0 - 1.0)
        .collect()
}

/// Timing of repeated calls.
#[derive(Clone, Copy)]
struct Timing {
    /// Fastest call (least disturbed by other processes on the machine).
    min: Duration,
    /// Median call.
    median: Duration,
}

/// Runs `f` repeatedly for at least `min_time` (after a warm-up) and returns its timing.
fn time_it(min_time: Duration, mut f: impl FnMut()) -> Timing {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < min_time || times.len() < 5 {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    Timing {
        min: times[0],
        median: times[times.len() / 2],
    }
}

struct Shape {
    name: &'static str,
    ty: QType,
    /// Rows of each weight sharing the input (one entry unless it is a matmul_many group).
    rows: &'static [usize],
    cols: usize,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "attn_q/o 576x576",
        ty: QType::Q4_1,
        rows: &[HIDDEN],
        cols: HIDDEN,
    },
    Shape {
        name: "attn_k/v 192x576",
        ty: QType::Q4_1,
        rows: &[KV],
        cols: HIDDEN,
    },
    Shape {
        name: "gate/up 1536x576",
        ty: QType::Q4_1,
        rows: &[FFN],
        cols: HIDDEN,
    },
    Shape {
        name: "down 576x1536",
        ty: QType::Q4_1,
        rows: &[HIDDEN],
        cols: FFN,
    },
    Shape {
        name: "output 49152x576",
        ty: QType::Q8_0,
        rows: &[VOCAB],
        cols: HIDDEN,
    },
    Shape {
        name: "q8_0 576x576",
        ty: QType::Q8_0,
        rows: &[HIDDEN],
        cols: HIDDEN,
    },
    Shape {
        name: "q8_0 4096x576",
        ty: QType::Q8_0,
        rows: &[4096],
        cols: HIDDEN,
    },
    Shape {
        name: "qkv (many) 576+192+192",
        ty: QType::Q4_1,
        rows: &[HIDDEN, KV, KV],
        cols: HIDDEN,
    },
    Shape {
        name: "gate+up (many) 2x1536",
        ty: QType::Q4_1,
        rows: &[FFN, FFN],
        cols: HIDDEN,
    },
];

fn bench_shape(pool: &Pool, s: &Shape, n: usize, cold: bool, min_time: Duration) -> Timing {
    let bytes_per_set: usize = s
        .rows
        .iter()
        .map(|&r| r * s.cols / s.ty.block_size() * s.ty.type_size())
        .sum();
    let copies = if cold {
        (96usize << 20).div_ceil(bytes_per_set).max(2)
    } else {
        1
    };
    let data: Vec<Vec<Vec<u8>>> = (0..copies)
        .map(|c| {
            s.rows
                .iter()
                .enumerate()
                .map(|(i, &r)| weight(s.ty, r, s.cols, (c * 16 + i) as u64 + 1))
                .collect()
        })
        .collect();
    let mats: Vec<Vec<QMatrix<'_>>> = data
        .iter()
        .map(|set| {
            set.iter()
                .zip(s.rows)
                .map(|(b, &r)| QMatrix::new(s.ty, r, s.cols, b).unwrap())
                .collect()
        })
        .collect();
    let x = rand_x(n, s.cols);
    let mut outs: Vec<Vec<f32>> = s.rows.iter().map(|&r| vec![0.0; n * r]).collect();
    let mut k = 0;
    time_it(min_time, || {
        let set = &mats[k % copies];
        k += 1;
        if set.len() == 1 {
            matmul(pool, &set[0], &x, n, &mut outs[0]).unwrap();
        } else {
            let refs: Vec<&QMatrix<'_>> = set.iter().collect();
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            matmul_many(pool, &refs, &x, n, &mut views).unwrap();
        }
    })
}

/// All matmuls of one forward pass over `n` tokens (head on `head_n` tokens).
struct Model {
    layers: Vec<[Vec<u8>; 7]>,
    head: Vec<u8>,
}

impl Model {
    fn new() -> Model {
        let shapes = Self::shapes();
        let layers = (0..LAYERS)
            .map(|l| {
                std::array::from_fn(|i| {
                    let (r, c) = shapes[i];
                    weight(QType::Q4_1, r, c, (l * 8 + i) as u64 + 1000)
                })
            })
            .collect();
        Model {
            layers,
            head: weight(QType::Q8_0, VOCAB, HIDDEN, 7),
        }
    }

    fn shapes() -> [(usize, usize); 7] {
        [
            (HIDDEN, HIDDEN),
            (KV, HIDDEN),
            (KV, HIDDEN),
            (HIDDEN, HIDDEN),
            (FFN, HIDDEN),
            (FFN, HIDDEN),
            (HIDDEN, FFN),
        ]
    }

    fn forward(&self, pool: &Pool, n: usize, head_n: usize, bufs: &mut Bufs) {
        let shapes = Self::shapes();
        for l in &self.layers {
            let m: Vec<QMatrix<'_>> = (0..7)
                .map(|i| QMatrix::new(QType::Q4_1, shapes[i].0, shapes[i].1, &l[i]).unwrap())
                .collect();
            let [q, k, v, o, g, u, d] = &mut bufs.outs;
            matmul_many(
                pool,
                &[&m[0], &m[1], &m[2]],
                &bufs.x[..n * HIDDEN],
                n,
                &mut [&mut q[..n * HIDDEN], &mut k[..n * KV], &mut v[..n * KV]],
            )
            .unwrap();
            matmul(pool, &m[3], &bufs.x[..n * HIDDEN], n, &mut o[..n * HIDDEN]).unwrap();
            matmul_many(
                pool,
                &[&m[4], &m[5]],
                &bufs.x[..n * HIDDEN],
                n,
                &mut [&mut g[..n * FFN], &mut u[..n * FFN]],
            )
            .unwrap();
            matmul(pool, &m[6], &bufs.xf[..n * FFN], n, &mut d[..n * HIDDEN]).unwrap();
        }
        if head_n > 0 {
            let h = QMatrix::new(QType::Q8_0, VOCAB, HIDDEN, &self.head).unwrap();
            matmul(
                pool,
                &h,
                &bufs.x[..head_n * HIDDEN],
                head_n,
                &mut bufs.logits[..head_n * VOCAB],
            )
            .unwrap();
        }
    }
}

struct Bufs {
    x: Vec<f32>,
    xf: Vec<f32>,
    outs: [Vec<f32>; 7],
    logits: Vec<f32>,
}

impl Bufs {
    fn new(n: usize) -> Bufs {
        Bufs {
            x: rand_x(n, HIDDEN),
            xf: rand_x(n, FFN),
            outs: std::array::from_fn(|i| vec![0.0; n * Model::shapes()[i].0]),
            logits: vec![0.0; n * VOCAB],
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let threads: Vec<usize> = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    let min_time = Duration::from_millis(if quick { 150 } else { 500 });
    let filter = args
        .iter()
        .position(|a| a == "--filter")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let only_n: Option<usize> = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok());
    println!(
        "kernel level: {:?} (detected {:?}); set CAIRN_CPU to force one",
        kernels::level(),
        kernels::dispatch::detected()
    );
    for &t in &threads {
        let pool = Pool::new(t);
        println!("\n== {t} thread(s) ==");
        println!(
            "{:<26} {:>5} {:>6} {:>12} {:>12} {:>9}",
            "shape", "n", "cache", "min/call", "median", "GFLOP/s"
        );
        for s in SHAPES {
            if filter.as_deref().is_some_and(|f| !s.name.contains(f)) {
                continue;
            }
            for &n in &[1usize, 128] {
                if only_n.is_some_and(|o| o != n) {
                    continue;
                }
                for cold in [false, true] {
                    if cold && n > 1 {
                        continue;
                    }
                    let dt = bench_shape(&pool, s, n, cold, min_time);
                    let flops: usize = s.rows.iter().map(|&r| 2 * r * s.cols * n).sum();
                    println!(
                        "{:<26} {:>5} {:>6} {:>9.1} us {:>9.1} us {:>9.1}",
                        s.name,
                        n,
                        if cold { "cold" } else { "hot" },
                        dt.min.as_secs_f64() * 1e6,
                        dt.median.as_secs_f64() * 1e6,
                        flops as f64 / dt.min.as_secs_f64() / 1e9
                    );
                }
            }
        }
    }

    if filter.is_some() {
        return;
    }
    println!("\n== whole model: all matmuls of SmolLM2-135M (30 layers + Q8_0 head) ==");
    let model = Model::new();
    let mut bufs = Bufs::new(128);
    for &t in &threads {
        let pool = Pool::new(t);
        let dec = time_it(min_time * 4, || model.forward(&pool, 1, 1, &mut bufs));
        let pre_all = time_it(min_time * 4, || model.forward(&pool, 128, 128, &mut bufs));
        let pre_last = time_it(min_time * 4, || {
            model.forward(&pool, 128, 0, &mut bufs);
            model.forward_head_only(&pool, &mut bufs);
        });
        for (what, tm, toks) in [
            ("decode (1 token + head)", dec, 1.0),
            ("prefill 128, head on all tokens", pre_all, 128.0),
            ("prefill 128, head on last token", pre_last, 128.0),
        ] {
            println!(
                "{t} thread(s): {what:<34} min {:>8.2} ms = {:>5.0} tok/s | median {:>8.2} ms = {:>5.0} tok/s",
                tm.min.as_secs_f64() * 1e3,
                toks / tm.min.as_secs_f64(),
                tm.median.as_secs_f64() * 1e3,
                toks / tm.median.as_secs_f64(),
            );
        }
    }
    println!(
        "llama.cpp on this machine (whole model): 2 threads 149 tok/s decode, 300 tok/s prefill-128; 1 thread 93 / 156"
    );
}

impl Model {
    fn forward_head_only(&self, pool: &Pool, bufs: &mut Bufs) {
        let h = QMatrix::new(QType::Q8_0, VOCAB, HIDDEN, &self.head).unwrap();
        matmul(pool, &h, &bufs.x[..HIDDEN], 1, &mut bufs.logits[..VOCAB]).unwrap();
    }
}

#!/usr/bin/env python3
"""Embedding throughput of sentence-transformers on the CPU: the peer of Cairn's embeddings in
`cargo xtask bench inference` (run by it inside the venv it creates; HF_HUB_OFFLINE=1).

usage: st_bench.py --model DIR [--threads T] [--batch-sizes 1,32] [--runs R] [--sentences N]
                   [--check N] [--device cpu|cuda]

Embeds N sentences (the same text as Cairn's bench_embed example) per batch size: one warm-up
pass, then R timed passes; prints one JSON object on stdout with the median sentences/s per
batch size, the versions, the process's peak RSS and the vectors of the first --check
sentences (for comparison with Cairn's). Progress goes to stderr.
"""
import argparse
import json
import platform
import resource
import statistics
import sys
import time

import torch
import sentence_transformers
import transformers
from sentence_transformers import SentenceTransformer


def sentences(n):
    return [f"Sentence number {i} talks about topic {i % 17} in some detail." for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--check", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="torch device (cuda: the GPU comparison)")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = SentenceTransformer(a.model, device=a.device)
    model.eval()
    load_ms = (time.perf_counter() - t0) * 1000.0
    texts = sentences(a.sentences)
    batches = {}
    with torch.inference_mode():
        for bs in [int(x) for x in a.batch_sizes.split(",")]:
            print(f"st_bench: {torch.get_num_threads()} threads, batch {bs}: warm-up", file=sys.stderr, flush=True)
            model.encode(texts, batch_size=bs, show_progress_bar=False, normalize_embeddings=True)
            rates = []
            for r in range(a.runs):
                t = time.perf_counter()
                model.encode(texts, batch_size=bs, show_progress_bar=False, normalize_embeddings=True)
                rate = len(texts) / (time.perf_counter() - t)
                print(f"st_bench: batch {bs}: run {r + 1}/{a.runs}: {rate:.1f} sentences/s", file=sys.stderr, flush=True)
                rates.append(rate)
            batches[str(bs)] = {"sentences_per_s": statistics.median(rates), "samples": rates}
        check = model.encode(texts[: a.check], batch_size=32, show_progress_bar=False,
                             normalize_embeddings=True).tolist() if a.check > 0 else []
    print(json.dumps({
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": str(model.device),
        "modules": [type(m).__name__ for m in model],
        "max_seq_length": model.max_seq_length,
        "runs": a.runs,
        "sentences": len(texts),
        "load_ms": load_ms,
        "batches": batches,
        # ru_maxrss is KiB on Linux.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "check_vectors": check,
    }))


if __name__ == "__main__":
    main()

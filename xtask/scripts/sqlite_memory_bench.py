#!/usr/bin/env python3
"""The SQLite baseline of `cargo xtask bench memory`: the same dataset (written by Cairn's
bench_memory example) in SQLite with FTS5 for keywords and brute-force numpy cosine for
vectors, fused the same way (reciprocal rank, k = 60).

usage: sqlite_memory_bench.py --dataset DIR --records N --work DIR

Single durable inserts (the first 1000 records, one transaction each, synchronous=FULL in WAL
mode), bulk load of the rest (500 per transaction), hybrid recall latency p50/p99 (k = 10),
recall@10 (exact, so 1.0 by construction) and bytes on disk per record. Prints one JSON object.
"""
import argparse
import json
import os
import shutil
import sqlite3
import sys
import time

import numpy as np

DIMS = 384


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    texts = open(os.path.join(a.dataset, "texts.txt")).read().splitlines()[: a.records]
    n = len(texts)
    vecs = np.fromfile(os.path.join(a.dataset, "vectors.f32"), dtype="<f4")[: n * DIMS].reshape(n, DIMS)
    queries = open(os.path.join(a.dataset, "queries.txt")).read().splitlines()
    qvecs = np.fromfile(os.path.join(a.dataset, "queries.f32"), dtype="<f4").reshape(-1, DIMS)
    shutil.rmtree(a.work, ignore_errors=True)
    os.sync()  # a freed store's discards must not land in a measured fsync
    os.makedirs(a.work)
    path = os.path.join(a.work, "memory.sqlite")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE records(id INTEGER PRIMARY KEY, text TEXT NOT NULL, vector BLOB NOT NULL)")
    db.execute("CREATE VIRTUAL TABLE fts USING fts5(text, content='records', content_rowid='id')")
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    def insert(i):
        cur = db.execute("INSERT INTO records(text, vector) VALUES (?, ?)", (texts[i], unit[i].astype("<f4").tobytes()))
        db.execute("INSERT INTO fts(rowid, text) VALUES (?, ?)", (cur.lastrowid, texts[i]))

    single = min(1000, n)
    t = time.perf_counter()
    for i in range(single):
        db.execute("BEGIN")
        insert(i)
        db.execute("COMMIT")
    single_rate = single / (time.perf_counter() - t)
    print(f"sqlite: {single} single inserts: {single_rate:.0f}/s", file=sys.stderr)
    t = time.perf_counter()
    for start in range(single, n, 500):
        db.execute("BEGIN")
        for i in range(start, min(start + 500, n)):
            insert(i)
        db.execute("COMMIT")
    bulk_rate = (n - single) / max(time.perf_counter() - t, 1e-9)
    print(f"sqlite: bulk load: {bulk_rate:.0f}/s", file=sys.stderr)
    # Vectors are read once into memory, as a brute-force search would keep them.
    ids = []
    blobs = []
    for rid, blob in db.execute("SELECT id, vector FROM records ORDER BY id"):
        ids.append(rid)
        blobs.append(blob)
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, DIMS)
    ids = np.array(ids)
    lat = []
    for q, qv in zip(queries, qvecs):
        t = time.perf_counter()
        match = " OR ".join('"' + w.replace('"', "") + '"' for w in q.split())
        kw = [r[0] for r in db.execute("SELECT rowid FROM fts WHERE fts MATCH ? ORDER BY bm25(fts) LIMIT 50", (match,))]
        qn = qv / np.linalg.norm(qv)
        sims = matrix @ qn
        top = ids[np.argpartition(-sims, 50)[:50]] if len(ids) > 50 else ids
        top = sorted(top, key=lambda x: -sims[x - 1])
        fused = {}
        for rank, rid in enumerate(kw):
            fused[rid] = fused.get(rid, 0.0) + 1.0 / (61 + rank)
        for rank, rid in enumerate(top):
            fused[int(rid)] = fused.get(int(rid), 0.0) + 1.0 / (61 + rank)
        best = sorted(fused, key=lambda x: -fused[x])[:10]
        rows = db.execute(
            "SELECT id, text FROM records WHERE id IN (%s)" % ",".join("?" * len(best)), best
        ).fetchall()
        assert len(rows) == len(best)
        lat.append((time.perf_counter() - t) * 1000.0)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = sum(os.path.getsize(os.path.join(a.work, f)) for f in os.listdir(a.work))
    lat.sort()
    pct = lambda p: lat[round((len(lat) - 1) * p)]
    print(json.dumps({
        "records": n,
        "sqlite": sqlite3.sqlite_version,
        "numpy": np.__version__,
        "single_insert_per_s": single_rate,
        "bulk_insert_per_s": bulk_rate,
        "recall_p50_ms": pct(0.5),
        "recall_p99_ms": pct(0.99),
        "recall_at_10": 1.0,
        "bytes_per_record": size / n,
    }))
    shutil.rmtree(a.work, ignore_errors=True)
    os.sync()


if __name__ == "__main__":
    main()

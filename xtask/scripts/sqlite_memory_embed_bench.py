#!/usr/bin/env python3
"""Inserts with the embedding computed on the way in: the SQLite peer of that figure of
`cargo xtask bench memory` (run inside the sentence-transformers venv; HF_HUB_OFFLINE=1).

usage: sqlite_memory_embed_bench.py --dataset DIR --model DIR --work DIR [--records N]

Same schema and durability as sqlite_memory_bench.py (WAL, synchronous=FULL, FTS5, the vector
as a blob). N single inserts, each one text embedded with all-MiniLM-L6-v2 through
sentence-transformers and committed in its own transaction; then N more embedded in one
encode call (batch size 32) and inserted in one transaction, as Cairn's import does. Prints one
JSON object on stdout.
"""
import argparse
import json
import os
import shutil
import sqlite3
import time

from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--records", type=int, default=300)
    a = ap.parse_args()
    n = a.records
    texts = open(os.path.join(a.dataset, "texts.txt")).read().splitlines()[: 2 * n]
    model = SentenceTransformer(a.model, device="cpu")
    model.eval()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    db = sqlite3.connect(os.path.join(a.work, "memory.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE records(id INTEGER PRIMARY KEY, text TEXT NOT NULL, vector BLOB NOT NULL)")
    db.execute("CREATE VIRTUAL TABLE fts USING fts5(text, content='records', content_rowid='id')")

    def insert(text, vec):
        cur = db.execute("INSERT INTO records(text, vector) VALUES (?, ?)", (text, vec.astype("<f4").tobytes()))
        db.execute("INSERT INTO fts(rowid, text) VALUES (?, ?)", (cur.lastrowid, text))

    model.encode(["warm-up"], normalize_embeddings=True, show_progress_bar=False)
    t = time.perf_counter()
    for text in texts[:n]:
        vec = model.encode([text], normalize_embeddings=True, show_progress_bar=False)[0]
        db.execute("BEGIN")
        insert(text, vec)
        db.execute("COMMIT")
    single = n / (time.perf_counter() - t)
    t = time.perf_counter()
    vecs = model.encode(texts[n:], batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    db.execute("BEGIN")
    for text, vec in zip(texts[n:], vecs):
        insert(text, vec)
    db.execute("COMMIT")
    bulk = n / (time.perf_counter() - t)
    print(json.dumps({"records": n, "single_with_embedding_per_s": single, "bulk_with_embedding_per_s": bulk}))


if __name__ == "__main__":
    main()

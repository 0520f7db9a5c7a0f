#!/usr/bin/env python
"""Exact vs HNSW search over image embeddings of generated scenes: build time, query latency, recall@10.

A tiny model is trained for --train_steps contrastive steps on generated scenes (or --checkpoint is used), then
--sizes scenes are drawn and embedded; each index is built from those vectors and queried with the embeddings of
1000 captions of other scenes. recall@10 = the share of exact search's top 10 that HNSW returns.

    python benchmarks/bench_index.py --quick          # 10k vectors
    python benchmarks/bench_index.py --sizes 10000 100000
"""

import argparse
import json
import os
import sys
import tempfile
import time

import faiss
import numpy as np

# This checkout's packages (and serving_models.py next to this file), whatever mm an editable install points to.
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from serving_models import save_checkpoint, scenes  # noqa: E402

from serving_mm.index import EmbeddingIndex  # noqa: E402
from serving_mm.runner import load_runner  # noqa: E402


def embed_scenes(runner, count, image_size, seed, batch=256):
    vectors = []
    for start in range(0, count, batch):
        images, _ = scenes(min(batch, count - start), image_size, seed=seed * 1_000_003 + start)
        vectors.append(runner.embed_images(images))
    return np.concatenate(vectors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--train_steps", type=int, default=150)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--quick", action="store_true", help="10k vectors only")
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else args.sizes
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if args.checkpoint is None:
            save_checkpoint(folder, "tiny", train_steps=args.train_steps)
        runner = load_runner(args.checkpoint or folder)
        image_size = runner.model.config.vision_config.image_size
        _, captions = scenes(1000, image_size, seed=7)
        queries = runner.embed_text(captions)
        start = time.perf_counter()
        vectors = embed_scenes(runner, max(sizes), image_size, seed=3)
        embed_seconds = time.perf_counter() - start
    for size in sizes:
        exact = faiss.IndexFlatIP(vectors.shape[1])
        exact.add(vectors[:size])
        _, truth = exact.search(queries, 10)
        for kind, threshold in (("exact", size + 1), ("hnsw", 1)):
            start = time.perf_counter()
            index = EmbeddingIndex.build(vectors[:size], [{}] * size, exact_threshold=threshold)
            build_seconds = time.perf_counter() - start
            start = time.perf_counter()
            _, found = index.index.search(queries, 10)
            per_query_ms = 1000 * (time.perf_counter() - start) / len(queries)
            hits = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
            rows.append(dict(vectors=size, index=kind, build_s=round(build_seconds, 2), query_ms=round(per_query_ms, 4), recall_at_10=round(float(hits), 4)))
    print(f"\n{vectors.shape[1]}-d image embeddings of generated scenes ({embed_seconds:.0f} s to draw and embed {max(sizes)}); 1000 caption queries, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    print("| vectors | index | build s | ms/query | recall@10 vs exact |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['vectors']:,} | {r['index']} | {r['build_s']} | {r['query_ms']} | {r['recall_at_10']} |")
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""fp32 vs int8 (PyTorch dynamic quantization) vs ONNX (ONNX Runtime): size on disk, CPU latency, agreement with
fp32 and text->image recall, on one checkpoint.

Without --checkpoint it trains the tiny preset for --train_steps contrastive steps on generated scenes (seconds)
and measures recall@1/@10 on 500 other generated scenes; latency is the median of --iters calls on a batch of
--batch_size captions and images. Sizes: safetensors for fp32, the ONNX files (all three towers), and the
in-memory bytes of the int8 model (a quantized module has no safetensors form).

    python benchmarks/bench_export.py --quick
    python benchmarks/bench_export.py --checkpoint outputs/run_clip-small
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# This checkout's packages (and serving_models.py next to this file), whatever mm an editable install points to.
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from serving_models import save_checkpoint, scenes  # noqa: E402

from serving_mm.export import export_onnx, int8_weight_bytes  # noqa: E402
from serving_mm.runner import load_runner  # noqa: E402


def median_seconds(fn, iters):
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def recall(texts, images, k):
    ranks = np.argsort(-(texts @ images.T), axis=1)[:, :k]
    return float(np.mean([i in row for i, row in enumerate(ranks)]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="150 training steps, 5 timed calls")
    args = parser.parse_args(argv)
    steps, iters = (150, 5) if args.quick else (args.train_steps, args.iters)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(args.checkpoint or folder)
        if args.checkpoint is None:
            save_checkpoint(folder, "tiny", train_steps=steps)
        runners = {"fp32": load_runner(str(checkpoint))}
        start = time.perf_counter()
        export_onnx(runners["fp32"].model, checkpoint / "onnx")
        export_seconds = time.perf_counter() - start
        runners["int8"] = load_runner(str(checkpoint), backend="int8")
        runners["onnx"] = load_runner(str(checkpoint), backend="onnx")
        sizes = {
            "fp32": sum(p.stat().st_size for p in checkpoint.glob("*.safetensors")),
            "int8": int8_weight_bytes(runners["int8"].model),
            "onnx": sum(p.stat().st_size for p in (checkpoint / "onnx").glob("*.onnx")),
        }
        image_size = runners["fp32"].model.config.vision_config.image_size
        images, captions = scenes(500, image_size, seed=1)  # not the training scenes (seed 0)
        rows = []
        reference = None
        for name, runner in runners.items():
            texts, pictures = runner.embed_text(captions), runner.embed_images(images)
            if reference is None:
                reference = (texts, pictures)
            cos = min(float(np.min(np.sum(a * b, axis=1))) for a, b in zip(reference, (texts, pictures)))
            batch_texts, batch_images = captions[: args.batch_size], images[: args.batch_size]
            rows.append(
                dict(
                    model=name, size_mb=round(sizes[name] / 1e6, 2),
                    text_ms=round(1000 * median_seconds(lambda: runner.embed_text(batch_texts), iters), 1),
                    image_ms=round(1000 * median_seconds(lambda: runner.embed_images(batch_images), iters), 1),
                    min_cosine_vs_fp32=round(cos, 4),
                    recall_at_1=round(recall(texts, pictures, 1), 3), recall_at_10=round(recall(texts, pictures, 10), 3),
                )
            )  # fmt: skip
    source = args.checkpoint or f"tiny preset trained {steps} steps on generated scenes"
    print(f"\n{source}; batch {args.batch_size}, {torch.get_num_threads()} torch threads; ONNX export took {export_seconds:.0f} s")
    print("| model | size MB | text ms/batch | image ms/batch | min cosine vs fp32 | R@1 t->i | R@10 t->i |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size_mb']} | {r['text_ms']} | {r['image_ms']} | {r['min_cosine_vs_fp32']} | {r['recall_at_1']} | {r['recall_at_10']} |")
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""fp32 vs the int8 variants vs ONNX: size, CPU latency, agreement with fp32 and text->image recall, on one
checkpoint.

The rows: fp32 (PyTorch), `int8 torchao` (torchao's int8 weight-only quantization of every linear layer), `int8
torchao w8a8` (torchao's int8 weights and dynamically quantized int8 activations), `int8 torch dynamic` (PyTorch's
`torch.ao.quantization.quantize_dynamic`: what `mm-serve --backend int8` runs), `onnx` (the three towers from
`mm-export`, in ONNX Runtime) and `onnx int8` (those files through ONNX Runtime's `quantize_dynamic`, int8 weights;
`mm-export --int8` writes them, `--backend onnx-int8` serves them). The torchao rows need `pip install torchao`
(measured with 0.18); without it they are left out. torchao is in no extra: with it installed, transformers imports it
with every model, and it logs warnings on a CPU machine.

`--captioner` measures the captioner instead: a tiny `MMForConditionalGeneration` trained --train_steps steps to
caption generated scenes, greedy captions of --scenes other scenes from PyTorch fp32, torchao int8, PyTorch's dynamic
int8, and the exported image encoder and decoder step in ONNX Runtime in fp32 and int8 (`mm-export --int8`): how
many captions are identical to PyTorch fp32's, the fraction of their tokens that agree, and the time per batch of
--batch_size.

Without --checkpoint it trains the tiny preset for --train_steps contrastive steps on generated scenes (seconds)
and measures recall@1/@10 on 500 other generated scenes; latency is the median of --iters calls on a batch of
--batch_size captions and images. Sizes: safetensors for fp32 (for the captioner, its parameters' bytes), the bytes
of the quantized models' parameters and int8 weights in memory (the server quantizes the fp32 checkpoint at load),
the ONNX files (all three towers; the captioner's image encoder and decoder step).

    python benchmarks/bench_export.py --quick
    python benchmarks/bench_export.py --checkpoint outputs/run_clip-small
    python benchmarks/bench_export.py --captioner
"""

import argparse
import copy
import importlib.util
import json
import os
import shutil
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

from serving_mm.export import export_onnx, model_bytes, quantize_int8, quantize_onnx_int8  # noqa: E402
from serving_mm.export_captioner import OnnxCaptioner, export_captioner, token_agreement  # noqa: E402
from serving_mm.runner import OnnxRunner, TorchRunner, load_runner  # noqa: E402


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


HAS_TORCHAO = importlib.util.find_spec("torchao") is not None


def torchao_int8(model, activations=False):
    """torchao's int8 weight-only quantization of every nn.Linear, or with `activations` its int8 weights and
    dynamically quantized int8 activations."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    model = copy.deepcopy(model).eval()
    config = Int8DynamicActivationInt8WeightConfig if activations else Int8WeightOnlyConfig
    quantize_(model, config(set_inductor_config=False))  # leave torch.compile's settings alone
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--scenes", type=int, default=500, help="held-out generated scenes for recall")
    parser.add_argument("--quick", action="store_true", help="150 training steps, 5 timed calls")
    parser.add_argument("--captioner", action="store_true", help="measure a captioner's int8 and ONNX versions")
    args = parser.parse_args(argv)
    steps, iters = (150, 5) if args.quick else (args.train_steps, args.iters)
    if args.captioner:
        return captioner_rows(args, steps, iters)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "checkpoint"
        if args.checkpoint is None:
            save_checkpoint(checkpoint, "tiny", train_steps=steps)
        else:  # a copy, so the export does not write into the user's folder
            shutil.copytree(args.checkpoint, checkpoint, ignore=shutil.ignore_patterns("checkpoint-*", "onnx*"))
        fp32 = load_runner(str(checkpoint))
        start = time.perf_counter()
        export_onnx(fp32.model, checkpoint / "onnx")
        export_seconds = time.perf_counter() - start
        quantize_onnx_int8(checkpoint / "onnx", checkpoint / "onnx-int8")
        runners = {"fp32": fp32}
        if HAS_TORCHAO:
            runners["int8 torchao"] = TorchRunner(torchao_int8(fp32.model), fp32.processor)
            runners["int8 torchao w8a8"] = TorchRunner(torchao_int8(fp32.model, activations=True), fp32.processor)
        runners |= {
            "int8 torch dynamic": load_runner(str(checkpoint), backend="int8"),
            "onnx": OnnxRunner(fp32.model, fp32.processor, checkpoint / "onnx"),
            "onnx int8": OnnxRunner(fp32.model, fp32.processor, checkpoint / "onnx-int8"),
        }
        onnx_bytes = lambda name: sum(p.stat().st_size for p in (checkpoint / name).glob("*.onnx"))  # noqa: E731
        sizes = {
            "fp32": sum(p.stat().st_size for p in checkpoint.glob("*.safetensors")),
            **{name: model_bytes(runners[name].model) for name in runners if name.startswith("int8")},
            "onnx": onnx_bytes("onnx"),
            "onnx int8": onnx_bytes("onnx-int8"),
        }
        image_size = fp32.model.config.vision_config.image_size
        images, captions = scenes(args.scenes, image_size, seed=1)  # not the training scenes (seed 0)
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
            print(json.dumps(rows[-1]), flush=True)
    source = args.checkpoint or f"tiny preset trained {steps} steps on generated scenes"
    print(
        f"\n{source}; batch {args.batch_size}, {torch.get_num_threads()} torch threads; recall over {args.scenes} "
        f"held-out scenes; ONNX export took {export_seconds:.0f} s"
    )
    print("| model | size MB | text ms/batch | image ms/batch | min cosine vs fp32 | R@1 t->i | R@10 t->i |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size_mb']} | {r['text_ms']} | {r['image_ms']} | {r['min_cosine_vs_fp32']} | {r['recall_at_1']} | {r['recall_at_10']} |")
    return rows


def captioner_rows(args, steps, iters):
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder)
        model, processor = save_checkpoint(checkpoint, "tiny", train_steps=steps, batch_size=32, captioner=True)
        images, _ = scenes(args.scenes, model.config.vision_config.image_size, seed=1)
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        start = time.perf_counter()
        export_captioner(model, checkpoint / "onnx", {"image": {"pixel_values": pixels[:4]}})  # raises unless equal
        export_seconds = time.perf_counter() - start
        quantize_onnx_int8(checkpoint / "onnx", checkpoint / "onnx-int8")
        greedy = dict(do_sample=False, num_beams=1)
        int8, dynamic = torchao_int8(model) if HAS_TORCHAO else None, quantize_int8(model)
        onnx = {name: OnnxCaptioner(checkpoint / name, model.generation_config) for name in ("onnx", "onnx-int8")}
        generators = {
            "fp32": lambda batch: model.generate(pixel_values=batch, **greedy).numpy(),
            **({"int8 torchao": lambda batch: int8.generate(pixel_values=batch, **greedy).numpy()} if HAS_TORCHAO else {}),
            "int8 torch dynamic": lambda batch: dynamic.generate(pixel_values=batch, **greedy).numpy(),
            "onnx": lambda batch: onnx["onnx"].generate("image", batch.numpy()),
            "onnx int8": lambda batch: onnx["onnx-int8"].generate("image", batch.numpy()),
        }
        onnx_bytes = lambda name: sum(p.stat().st_size for p in (checkpoint / name).glob("*.onnx"))  # noqa: E731
        sizes = {"fp32": model_bytes(model), "int8 torch dynamic": model_bytes(dynamic), "onnx": onnx_bytes("onnx"),
                 "onnx int8": onnx_bytes("onnx-int8"), **({"int8 torchao": model_bytes(int8)} if HAS_TORCHAO else {})}  # fmt: skip
        rows, reference = [], None
        with torch.inference_mode():
            for name, generate in generators.items():
                tokens = generate(pixels)
                reference = tokens if reference is None else reference
                differing, agreement = token_agreement(reference, tokens, onnx["onnx"].pad)
                batch = pixels[: args.batch_size]
                rows.append(
                    dict(
                        model=name, size_mb=round(sizes[name] / 1e6, 2),
                        ms_per_batch=round(1000 * median_seconds(lambda: generate(batch), iters), 1),
                        identical_captions=f"{len(tokens) - differing}/{len(tokens)}", token_agreement=round(agreement, 4),
                        distinct_captions=len({tuple(row) for row in tokens.tolist()}),  # not one caption for all
                    )
                )  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    print(
        f"\ntiny captioner trained {steps} steps of 32 generated scenes; greedy captions of {args.scenes} other scenes; "
        f"batch {args.batch_size}, {torch.get_num_threads()} torch threads; ONNX export took {export_seconds:.0f} s"
    )
    print("| model | size MB | ms/batch | captions identical to fp32 | tokens agreeing | distinct captions |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size_mb']} | {r['ms_per_batch']} | {r['identical_captions']} | {r['token_agreement']} | {r['distinct_captions']} |")
    return rows


if __name__ == "__main__":
    main()

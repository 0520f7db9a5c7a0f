"""run_clip.py's data path on a folder of photos: does the loader keep up with the model?

Builds (once, cached in --folder) a folder of JPEG photos, 640x480 by default, each a smooth background with a few
filled shapes and sensor-like noise, so that the files are the size real photos of that resolution are (~60-100 KB),
with a `metadata.jsonl` of captions. Then measures, on that folder:

- preparation: loading the folder and checking every row for unreadable files, before (the old path: every image
  decoded in full, in one process) and after (`filter_unreadable`: a 1/8-scale JPEG decode, in parallel processes);
- loader items/s: a `torch.utils.data.DataLoader` with run_clip's `ContrastiveCollator` over the training split,
  batch 64, before (images decoded in full by `datasets` in the main process, no workers: the old run_clip) and after
  (files decoded by the collator at the size the model needs, with 0 and with --workers workers);
- the model's training step rate (forward with the contrastive loss, backward, AdamW step) of the --preset model on
  those batches, in items/s: the rate the loader has to keep up with.

    python benchmarks/bench_data_path.py                     # 3,000 photos
    python benchmarks/bench_data_path.py --quick             # 300 photos, fewer batches
    python benchmarks/bench_data_path.py --device cuda --workers 8   # base preset (224 px) on the GPU
"""

import argparse
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from configuration_mm import MMConfig
from modeling_mm import MMModel
from training_mm.collators import ContrastiveCollator
from training_mm.data import filter_unreadable, load_user_dataset
from training_mm.data_workers import available_cpus
from training_mm.media_inputs import undecoded
from training_mm.processors import new_processor

COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40)}
SHAPES = ("circle", "square", "triangle")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=3000, help="photos in the folder (--quick: 300).")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--folder", default=None, help="where the photos go (default: a folder in the temp dir).")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of 'after' (default: the cores).")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=None, help="batches timed per loader (default: one epoch).")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: 10 on CPU, 50 on GPU).")
    parser.add_argument(
        "--preset", default=None, help="the model whose step rate the loader is read against (default: small on CPU, "
        "base on CUDA)."
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="300 photos, 10 batches per loader, 5 steps.")
    return parser


# ------------------------------------------------------------------------------------------------ the photo folder


def write_photo_folder(folder, num_images, width, height, seed=0):
    """`num_images` JPEG photos with shapes and noise, and their captions in metadata.jsonl; kept between runs."""
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    if metadata.is_file() and sum(1 for _ in open(metadata)) == num_images:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_images):
        # A smooth two-colour gradient, as a sky or a wall gives, then shapes, then noise as a camera sensor adds.
        top, bottom = rng.integers(40, 220, size=(2, 3))
        ramp = np.linspace(0, 1, height)[:, None, None]
        pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        names = []
        for _ in range(rng.integers(1, 4)):
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            size = int(rng.integers(height // 8, height // 3))
            x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
            box = (x, y, x + size, y + size)
            if shape == "circle":
                draw.ellipse(box, fill=COLOURS[colour])
            elif shape == "square":
                draw.rectangle(box, fill=COLOURS[colour])
            else:
                draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=COLOURS[colour])
            names.append(f"a {colour} {shape}")
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-10, 11, size=(height, width, 3), dtype=np.int16)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"{index:06d}.jpg", quality=90)
        rows.append({"file_name": f"{index:06d}.jpg", "caption": " and ".join(names)})
    metadata.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


# ------------------------------------------------------------------------------------------------ measurements


def old_check(split):
    """The old `filter_unreadable` on images: every image decoded in full, one after the other, in this process."""
    for row in undecoded(split).select_columns(["image", "caption"]):
        value = row["image"]
        Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]).load()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def loader_rate(split, collator, batch_size, workers, batches):
    """Items/s a DataLoader delivers over `batches` batches, its workers' start counted."""
    loader = DataLoader(
        split, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collator,
        generator=torch.Generator().manual_seed(0), drop_last=True,
    )  # fmt: skip
    items, start = 0, time.perf_counter()
    for _, batch in zip(range(batches), loader):
        items += batch["pixel_values"].shape[0]
    return items / (time.perf_counter() - start)


def step_rate(config, batch, device, steps):
    """Items/s of training steps (forward with the loss, backward, AdamW) of a new model on `batch`."""
    model = MMModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch["pixel_values"].shape[0] / (time.perf_counter() - start)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.num_images = 300 if args.num_images == 3000 else args.num_images
        args.batches, args.steps = args.batches or 10, args.steps or 5
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    args.preset = args.preset or ("base" if device.type == "cuda" else "small")
    workers = args.workers if args.workers is not None else available_cpus()
    datasets.disable_progress_bars()
    datasets.disable_caching()  # every preparation is measured from scratch, as on a first run
    name = f"mm-bench-photos-{args.num_images}-{args.width}x{args.height}"
    folder = args.folder or os.path.join(tempfile.gettempdir(), name)
    (_, generated) = timed(lambda: write_photo_folder(folder, args.num_images, args.width, args.height))
    sizes = [path.stat().st_size for path in Path(folder).glob("*.jpg")]
    print(f"{len(sizes)} JPEGs {args.width}x{args.height}, median {np.median(sizes) / 1024:.0f} KB, in {folder} "
          f"({generated:.1f} s to build or find)")  # fmt: skip

    splits, loaded = timed(lambda: load_user_dataset(folder))
    train = splits["train"]
    _, before_check = timed(lambda: old_check(train))
    _, after_check = timed(lambda: filter_unreadable(train))

    config = MMConfig.from_preset(args.preset)
    towers = {"text": config.text_config, "vision": config.vision_config, "audio": config.audio_config}
    processor = new_processor(towers, train)
    config = MMConfig.from_preset(args.preset, text_config={"vocab_size": len(processor.tokenizer)})
    collator = ContrastiveCollator(processor, ("image",), label_column=None)
    batches = min(args.batches or math.inf, len(train) // args.batch_size)
    loaders = {
        "before: decoded by datasets, 0 workers": (train, 0),
        "after: decoded by the collator, 0 workers": (undecoded(train), 0),
        f"after: decoded by the collator, {workers} workers": (undecoded(train), workers),
    }
    rates = {
        name: loader_rate(split, collator, args.batch_size, count, batches) for name, (split, count) in loaders.items()
    }
    batch = collator([undecoded(train)[index] for index in range(args.batch_size)])
    model_rate = step_rate(config, batch, device, args.steps or (50 if device.type == "cuda" else 10))

    image_size = config.vision_config.image_size
    print(f"\nData path of run_clip.py: {len(train)} training photos, {args.preset} preset ({image_size}px images), "
          f"batch {args.batch_size}, {available_cpus()} CPU cores, model on {device.type}")  # fmt: skip
    print(f"{'preparation (load the folder + check every row)':<52}{'seconds':>10}")
    print(f"{'before: full decode, 1 process':<52}{loaded + before_check:>10.1f}")
    print(f"{'after: filter_unreadable (1/8-scale JPEG, parallel)':<52}{loaded + after_check:>10.1f}")
    print(f"\n{'loader over ' + str(batches) + ' batches':<52}{'items/s':>10}{'x model':>10}")
    for name, rate in rates.items():
        print(f"{name:<52}{rate:>10.0f}{rate / model_rate:>10.2f}")
    print(f"{'model: training step of the ' + args.preset + ' preset':<52}{model_rate:>10.0f}")
    figures = {
        "prepare before (s)": loaded + before_check,
        "prepare after (s)": loaded + after_check,
        **{f"loader {name} (items/s)": rate for name, rate in rates.items()},
        "model step (items/s)": model_rate,
    }
    for name, value in figures.items():
        print(json.dumps({"name": name, "value": round(value, 2), "device": device.type}))
    return rates, model_rate


if __name__ == "__main__":
    main()

"""How much a model learns from a little data: mm's default recipe against transformers' CLIPModel from scratch.

For each number of training scenes (built-in data, images and captions), both models train for the same epochs on the
same rows, with the same tokenizer, image processor, batch and towers (`--preset`; CLIPModel gets a CLIPConfig of the
same widths, depths, heads, patch and image size), and are scored by the same code on the held-out `test` split:
recall@1 image->text and text->image (`training_mm.retrieval.retrieval_metrics`) and zero-shot colour and shape
accuracy over the 36 prompts "a {colour} {shape}" (`training_mm.text_to_image.zero_shot_colour_shape`) on the test
scenes of one object kind (single and count scenes; every test scene has a (colour, shape) pair never trained on).

- `mm`: `MMModel` with run_clip.py's defaults (`TRAINING_DEFAULTS`: AdamW, learning rate, weight decay, warmup,
  cosine schedule, batch 64), its multi-positive loss (rows of the same scene are positives) and its train-time
  augmentation when it is on by default (`AUGMENT_DEFAULTS`).
- `clip`: `CLIPModel` with open_clip's from-scratch recipe: AdamW (betas 0.9/0.98, eps 1e-6), learning rate 5e-4,
  weight decay 0.2, 10% warmup, cosine; CLIP's own loss (one positive per row), no augmentation.

Every finished run is appended to `--output` as one JSON line, so a long run can be read (and stopped) at any point.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_small_data.py --output small_data.jsonl
    python benchmarks/bench_small_data.py --scenes 1000 --models mm --mm-overrides '{"warmup_steps": 0.1}'
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
import transformers
from transformers import CLIPModel, Trainer, TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from bench_contrastive import matched_clip_config  # noqa: E402
from configuration_mm import MMConfig  # noqa: E402
from modeling_mm import MMModel  # noqa: E402
from run_clip import AUGMENT_DEFAULTS, TRAINING_DEFAULTS, DataTrainingArguments  # noqa: E402
from training_mm.augmentation import CaptionAwareAugmentation  # noqa: E402
from training_mm.collators import ContrastiveCollator  # noqa: E402
from training_mm.processors import image_size_of, new_processor  # noqa: E402
from training_mm.retrieval import metric_name, retrieval_metrics  # noqa: E402
from training_mm.synthetic_data import COLOURS, SHAPES, build_synthetic_dataset  # noqa: E402
from training_mm.text_to_image import zero_shot_colour_shape  # noqa: E402

# open_clip's from-scratch recipe (its README and `training/params.py` defaults for ViT models), at our batch.
CLIP_RECIPE = dict(
    learning_rate=5e-4, weight_decay=0.2, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-6, warmup_steps=0.1,
    lr_scheduler_type="cosine",
)  # fmt: skip


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, nargs="+", default=[300, 1000, 3000], help="training scenes per run.")
    parser.add_argument("--epochs", type=float, default=10, help="epochs of every run (default: run_clip's 10).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="+", choices=("mm", "clip"), default=["mm", "clip"])
    parser.add_argument("--preset", default="tiny", help="mm preset whose towers both models get (default tiny).")
    parser.add_argument("--test-scenes", type=int, default=300)
    parser.add_argument(
        "--mm-overrides", type=json.loads, default={},
        help='JSON of TrainingArguments for the mm runs, e.g. \'{"warmup_steps": 0.1}\'.',
    )  # fmt: skip
    parser.add_argument(
        "--augment", choices=("default", "on", "off"), default="default",
        help="augmentation of the mm runs: run_clip's default (--augment's default), on or off.",
    )  # fmt: skip
    parser.add_argument(
        "--augment-args", type=json.loads, default={},
        help='JSON overriding run_clip\'s AUGMENT_DEFAULTS, e.g. \'{"crop_probability": 0}\'.',
    )  # fmt: skip
    parser.add_argument("--tag", default="", help="a name for this variant in the output lines.")
    parser.add_argument("--output", default="bench_small_data.jsonl", help="JSON lines, one per finished run.")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs in --output.")
    return parser


class EosLastProcessor:
    """The mm processor for CLIPModel: token ids 2 and `vocab_size - 1` swapped.

    CLIPModel's text tower pools at the highest token id of each row when its config's `eos_token_id` is 2 (the id
    before transformers' fix of CLIP's eos), and 2 is mm's eos. With eos moved to the last id, that pooling reads the
    eos token, as CLIP's does; the embedding table learns from scratch either way."""

    def __init__(self, processor, vocab_size):
        self.processor, self.last = processor, vocab_size - 1

    def __call__(self, *args, **kwargs):
        outputs = self.processor(*args, **kwargs)
        if "input_ids" in outputs:
            ids = outputs["input_ids"]
            outputs["input_ids"] = torch.where(ids == 2, self.last, torch.where(ids == self.last, 2, ids))
        return outputs


class ClipEmbeddings(torch.nn.Module):
    """CLIPModel as the retrieval code calls a model: `model(**batch)` with text or images alone (CLIPModel's `forward`
    needs both), returning the L2-normalised `text_embeds` / `image_embeds` its `forward` would."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, **unused):
        outputs = {}
        if input_ids is not None:
            text = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            outputs["text_embeds"] = torch.nn.functional.normalize(_pooled(text), dim=-1)
        if pixel_values is not None:
            image = self.model.get_image_features(pixel_values=pixel_values)
            outputs["image_embeds"] = torch.nn.functional.normalize(_pooled(image), dim=-1)
        return outputs


def _pooled(features):
    """get_*_features' embeddings: a tensor on older transformers, `pooler_output` of an output on newer ones."""
    return getattr(features, "pooler_output", features)


def zero_shot_rows(test):
    """The test rows showing one (colour, shape), with them: single and count scenes (their label names one colour)."""
    images, colours, shapes = [], [], []
    for row in test:
        words = row["label"].split()
        named = [index for index, word in enumerate(words) if word in COLOURS]
        if len(named) == 1:
            images.append(row["image"])
            colours.append(words[named[0]])
            shapes.append(words[named[0] + 1].removesuffix("s"))
    assert set(shapes) <= set(SHAPES), shapes
    return images, colours, shapes


def train_and_score(kind, train, test, towers_config, epochs, seed, args):
    transformers.set_seed(seed)
    towers = {"text": towers_config.text_config, "vision": towers_config.vision_config, "audio": None}
    processor = new_processor(towers, train)
    tokenizer = processor.tokenizer
    config = MMConfig.from_preset(args.preset, text_config={"vocab_size": len(tokenizer)})
    recipe = {**TRAINING_DEFAULTS, "eval_strategy": "no", "save_strategy": "no", "logging_strategy": "no"}
    if kind == "mm":
        model = MMModel(config)
        recipe.update(args.mm_overrides)
        collator = ContrastiveCollator(processor, ("image",))
        on = DataTrainingArguments.augment if args.augment == "default" else args.augment == "on"
        augment = {**AUGMENT_DEFAULTS, **args.augment_args, "audio_column": None} if on else None
        if augment is not None:
            train = train.with_transform(CaptionAwareAugmentation(**augment))
    else:
        clip_config = matched_clip_config(config, "sdpa")
        clip_config.text_config.eos_token_id = len(tokenizer) - 1
        model = CLIPModel(clip_config)
        processor = EosLastProcessor(processor, len(tokenizer))
        recipe.update(CLIP_RECIPE)
        collator = ContrastiveCollator(processor, ("image",), label_column=None)
        augment = None
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, seed=seed, disable_tqdm=True, use_cpu=True, **{**recipe, "num_train_epochs": epochs}
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
        start = time.perf_counter()
        train_loss = trainer.train().training_loss
        seconds = time.perf_counter() - start
    model.eval()
    scored = model if kind == "mm" else ClipEmbeddings(model)
    recalls = retrieval_metrics(scored, processor, test, modalities=("image",), desc=f"{kind} retrieval")
    zero_shot = zero_shot_colour_shape(model, processor, *zero_shot_rows(test))
    hyper = {key: recipe[key] for key in ("learning_rate", "weight_decay", "warmup_steps", "lr_scheduler_type")}
    return {
        "model": kind,
        "tag": args.tag,
        "scenes": len(train),
        "epochs": epochs,
        "seed": seed,
        "recall@1 image->text": recalls[metric_name(1, "image", "text")],
        "recall@1 text->image": recalls[metric_name(1, "text", "image")],
        "zero-shot colour": zero_shot["colour accuracy"],
        "zero-shot shape": zero_shot["shape accuracy"],
        "train_loss": train_loss,
        "train_seconds": round(seconds, 1),
        "steps": trainer.state.global_step,
        "recipe": hyper,
        "augment": augment,
    }


METRICS = ("recall@1 image->text", "recall@1 text->image", "zero-shot colour", "zero-shot shape")


def table(path):
    """A Markdown table of the runs in `path`: the mean of each metric over seeds, per scenes, model and tag."""
    runs = {}
    for line in Path(path).read_text().splitlines():
        run = json.loads(line)
        runs.setdefault((run["scenes"], run["model"], run["tag"]), []).append(run)
    lines = ["| scenes | model | seeds | " + " | ".join(METRICS) + " |", "|" + "---|" * (3 + len(METRICS))]
    for (scenes, model, tag), group in sorted(runs.items()):
        name = {"mm": "mm", "clip": "transformers CLIPModel"}[model] + (f" ({tag})" if tag else "")
        means = [sum(run[metric] for run in group) / len(group) for metric in METRICS]
        seeds = ",".join(str(seed) for seed in sorted(run["seed"] for run in group))
        lines.append(f"| {scenes:,} | {name} | {seeds} | " + " | ".join(f"{mean:.3f}" for mean in means) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.table:
        print(table(args.output))
        return
    datasets.disable_progress_bars()
    logging.disable(logging.WARNING)
    towers_config = MMConfig.from_preset(args.preset)
    image_size = image_size_of(towers_config.vision_config)
    data = build_synthetic_dataset(
        num_train=max(args.scenes), num_validation=0, num_test=args.test_scenes, image_size=image_size, with_audio=False
    )
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"preset {args.preset} ({image_size}px), {args.epochs} epochs; test split: {len(data['test'])} scenes")
    for scenes in args.scenes:
        # Example i of a split depends only on (seed, split, i): the first N rows are the N-scene dataset.
        train = data["train"].select(range(scenes))
        for seed in args.seeds:
            for kind in args.models:
                result = train_and_score(kind, train, data["test"], towers_config, args.epochs, seed, args)
                line = json.dumps(result)
                print(line, flush=True)
                with open(args.output, "a") as output:
                    output.write(line + "\n")
    print(table(args.output))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

"""Hard negatives on the built-in data: held-out retrieval recall@1 at equal steps, with and without
hardness-weighted InfoNCE (`MMConfig.hard_negative_beta`), over several seeds.

The built-in captions come in near-misses (scenes that differ from each other in one colour, shape, position or
count), which is where weighting the hardest in-batch negatives should help if it helps anywhere. Each run trains a
new model of `--preset` on images and captions only (no audio, to fit a CPU budget) for `--steps` optimizer steps
of `--batch_size` pairs with run_clip.py's recipe, then scores the held-out test split by the published protocol
(`training_mm.retrieval.retrieval_metrics`; test scenes hold colour-shape pairs never seen in training).

    OMP_NUM_THREADS=1 python benchmarks/bench_hard_negatives.py --preset tiny --steps 300 --betas 0 0.5 --seeds 0 1 2

Prints one JSON line per run (`grep '^{"name"'`) and a table of the mean and spread over seeds.
"""

import argparse
import json
import statistics
import tempfile
import time

import transformers
from transformers import Trainer, TrainingArguments

from configuration_mm import MMConfig
from modeling_mm import MMModel
from training_mm.collators import ContrastiveCollator
from training_mm.processors import new_processor
from training_mm.retrieval import retrieval_metrics
from training_mm.synthetic_data import build_synthetic_dataset

DIRECTIONS = ("image->text", "text->image")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_train", type=int, default=1000, help="Built-in training scenes.")
    parser.add_argument("--num_test", type=int, default=300, help="Built-in test scenes (the retrieval gallery).")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.5], help="hard_negative_beta values.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    return parser


def run(preset, beta, seed, splits, steps, batch_size):
    """Trains one model; returns its held-out recall@1 per direction and the training time."""
    transformers.set_seed(seed)
    config = MMConfig.from_preset(preset)
    towers = {"text": config.text_config, "vision": config.vision_config, "audio": config.audio_config}
    processor = new_processor(towers, splits["train"])
    tokenizer = processor.tokenizer
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    text_config = {"vocab_size": len(tokenizer), **{k: v for k, v in special.items() if v is not None}}
    model = MMModel(MMConfig.from_preset(preset, text_config=text_config, hard_negative_beta=beta))
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=1e-3,
            weight_decay=0.1, warmup_steps=0.05, lr_scheduler_type="cosine", save_strategy="no", eval_strategy="no",
            report_to="none", remove_unused_columns=False, seed=seed, logging_steps=steps, disable_tqdm=True,
            use_cpu=True,
        )  # fmt: skip
        trainer = Trainer(
            model=model, args=args, train_dataset=splits["train"], data_collator=ContrastiveCollator(processor, ("image",))
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    metrics = retrieval_metrics(model, processor, splits["test"], ("image",), batch_size=128)
    return {direction: metrics[f"recall@1 {direction}"] for direction in DIRECTIONS}, seconds


def main(argv=None):
    args = build_parser().parse_args(argv)
    image_size = MMConfig.from_preset(args.preset).vision_config.image_size
    splits = build_synthetic_dataset(
        num_train=args.num_train, num_validation=0, num_test=args.num_test, image_size=image_size, with_audio=False
    )
    results = {}
    for beta in args.betas:
        for seed in args.seeds:
            recalls, seconds = run(args.preset, beta, seed, splits, args.steps, args.batch_size)
            results.setdefault(beta, []).append(recalls)
            record = dict(name="hard_negatives", preset=args.preset, steps=args.steps, beta=beta, seed=seed,
                          seconds=round(seconds, 1), **{f"recall@1 {d}": round(v, 4) for d, v in recalls.items()})  # fmt: skip
            print(json.dumps(record), flush=True)
    print(f"\n{args.preset} preset, {args.steps} steps of {args.batch_size}, {args.num_train} training scenes, "
          f"test gallery of {args.num_test} scenes, seeds {args.seeds}: held-out recall@1, mean ± stdev")  # fmt: skip
    print(f"{'beta':<8}" + "".join(f"{d:>22}" for d in DIRECTIONS))
    for beta, runs in results.items():
        cells = []
        for direction in DIRECTIONS:
            values = [r[direction] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"{beta:<8g}" + "".join(f"{cell:>22}" for cell in cells))


if __name__ == "__main__":
    main()

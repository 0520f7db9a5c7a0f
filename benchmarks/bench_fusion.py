#!/usr/bin/env python
"""Which fusion type decides best from which modalities: a measured ablation of `MMForClassification`.

For each fusion type (late, gated, concat, cross), with and without modality dropout, it trains
examples/run_classification.py on the built-in fusion tasks (match, colours, count; one model, three heads) and
measures the held-out test split with every subset of the modalities: all three, each pair, each single one. The
table shows `match` accuracy (the task built to need the image and a caption: chance is 0.5 from either alone),
then the `colours` mAP and `count` RMSE with every modality; mean ± std over the seeds.

    python benchmarks/bench_fusion.py --quick      # tiny preset, 1 seed, no dropout, match + colours: 4 runs
    python benchmarks/bench_fusion.py --quick --modality_dropout 0 0.3 --seeds 3   # the README's ablation
    python benchmarks/bench_fusion.py              # small preset, 3 seeds (hours on a CPU)

The runs go `--jobs` at a time (default: one per CPU core), each in its own process on one thread. The quick form's
4 runs are 300 steps of ~0.22 CPU-s each (collating and training the tiny preset): under 5 minutes on 2 cores once
the built-in data is cached. It trains `match` and `colours` only: at this size the `count` regression crowds out
the colour features `match` needs (docs/design.md, "Fusion"); `--tasks match colours count` puts it back.

Every run is `run_classification.main([...])` with the arguments printed at the top, so any cell can be re-run
alone. With `--json FILE` the raw metrics of every run are written there too.
"""

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

import run_classification  # noqa: E402
from configuration_mm import MMConfig  # noqa: E402
from configuration_mm.configuration_mm import MODALITIES  # noqa: E402
from training_mm.classification import modality_subsets  # noqa: E402
from training_mm.fusion_data import FUSION_TASKS, build_fusion_dataset  # noqa: E402
from training_mm.processors import image_size_of  # noqa: E402

FUSION_TYPES = ("late", "gated", "concat", "cross")
BUILTIN_SPLITS = dict(num_train=2000, num_validation=300, num_test=300)  # run_classification.py's default data
# Sizes of the two forms: (preset, train rows, test rows, optimizer steps, batch, peak learning rate, seeds). Towers
# trained from scratch learn nothing in a few dozen steps (every fusion type then answers the majority class): the
# quick form trains the tiny preset for 300 steps at a high learning rate on the default 2000 rows.
QUICK = dict(preset="tiny", num_train=2000, num_eval=300, max_steps=300, batch=32, learning_rate=3e-3, seeds=1)
FULL = dict(preset="small", num_train=2000, num_eval=300, max_steps=600, batch=32, learning_rate=1e-3, seeds=3)


def run_one(settings, fusion_type, modality_dropout, seed, output_dir, tasks=None):
    argv = [
        "--preset", settings["preset"],
        "--num_train_samples", str(settings["num_train"]),
        "--num_eval_samples", str(settings["num_eval"]),
        "--max_steps", str(settings["max_steps"]),
        "--per_device_train_batch_size", str(settings["batch"]),
        "--learning_rate", str(settings["learning_rate"]),
        "--warmup_steps", "0.05",
        "--fusion_type", fusion_type,
        "--modality_dropout", str(modality_dropout),
        "--seed", str(seed),
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--logging_steps", "50",
        "--disable_tqdm", "true",
        "--output_dir", str(output_dir),
        *(["--label_column", *tasks] if tasks else []),
    ]  # fmt: skip
    return argv, run_classification.main(argv)


def run_cell(settings, fusion_type, modality_dropout, seed, output_dir, tasks):
    """`run_one` in a worker process: one thread, the runs' own INFO logs off (the table is the output)."""
    import torch

    torch.set_num_threads(1)
    logging.disable(logging.INFO)
    return run_one(settings, fusion_type, modality_dropout, seed, output_dir, tasks)


def step_cost(preset, batch=32, steps=5):
    """CPU seconds (this process, `time.process_time`, which other processes' load does not inflate) to collate a
    batch of the built-in fusion tasks, to run one training step of `MMForClassification` (concat, the default run's
    model at `preset`) and to score one held-out row: what the default run's duration is estimated from."""
    import torch

    from modeling_mm import MMForClassification
    from training_mm.classification import ClassificationCollator, infer_tasks
    from training_mm.processors import new_processor

    config = MMConfig.from_preset(preset)
    data = build_fusion_dataset(image_size=image_size_of(config.vision_config), **BUILTIN_SPLITS)
    towers = {"text": config.text_config, "vision": config.vision_config, "audio": config.audio_config}
    processor = new_processor(towers, data["train"], None)
    tasks = infer_tasks(data["train"], list(FUSION_TASKS))
    tokenizer = processor.tokenizer
    text = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    model = MMForClassification(MMConfig.from_preset(preset, text_config=text, tasks=tasks, default_task="match"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    collator = ClassificationCollator(processor, MODALITIES, tasks)
    rows = [data["train"][i] for i in range(batch * (steps + 1))]
    collate = train = 0.0
    for step in range(steps + 1):
        start = time.process_time()
        inputs = collator(rows[step * batch : (step + 1) * batch])
        collate += time.process_time() - start
        start = time.process_time()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:  # the first step warms up
            train += time.process_time() - start
    model.eval()
    start = time.process_time()
    with torch.no_grad():
        model(**ClassificationCollator(processor, MODALITIES)(rows[:batch]))
    score = (time.process_time() - start) / batch
    return {"collate CPU-s/batch": collate / (steps + 1), "train step CPU-s": train / steps, "eval CPU-s/row": score}


def mean_std(values):
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def format_table(runs):
    subsets = [" + ".join(subset) for subset in modality_subsets(MODALITIES)]
    short = {" + ".join(subset): "+".join(name[0].upper() for name in subset) for subset in modality_subsets(MODALITIES)}
    header = f"{'fusion':<8}{'mod. dropout':>13}" + "".join(f"{short[s]:>16}" for s in subsets)
    header += f"{'colours mAP':>16}{'count RMSE':>16}"
    lines = [
        "match accuracy on the held-out test split by the modalities given (T text, I image, A audio; chance 0.5),",
        "then colours mAP and count RMSE with every modality:",
        header,
    ]
    for (fusion_type, dropout), metrics in runs.items():
        cells = [mean_std([m[f"match accuracy [{s}]"] for m in metrics]) for s in subsets]
        cells += [mean_std([m[key] for m in metrics]) if key in metrics[0] else "-" for key in ("colours mAP", "count rmse")]
        lines.append(f"{fusion_type:<8}{dropout:>13}" + "".join(f"{cell:>16}" for cell in cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Tiny preset, small data, 1 seed: a few minutes.")
    parser.add_argument("--seeds", type=int, default=None, help="Seeds per cell (default: 1 quick, 3 full).")
    parser.add_argument("--fusion_types", nargs="+", default=list(FUSION_TYPES), choices=FUSION_TYPES)
    parser.add_argument(
        "--modality_dropout", nargs="+", type=float, default=None, help="Default: 0 and 0.3 (quick: 0 only)."
    )
    parser.add_argument("--jobs", type=int, default=None, help="Runs at a time, one process each (default: the cores).")
    parser.add_argument("--max_steps", type=int, default=None, help="Override the optimizer steps of each run.")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        choices=list(FUSION_TASKS),
        help="Train these built-in tasks only (default: all; quick: match colours).",
    )
    parser.add_argument("--json", default=None, help="Also write every run's metrics to this file.")
    parser.add_argument(
        "--step_cost",
        default=None,
        choices=["tiny", "small", "base"],
        help="Only measure the CPU time of one training step of this preset on the default built-in data (one "
        "thread: run with OMP_NUM_THREADS=1), from which the default run's duration is estimated.",
    )
    parser.add_argument(
        "--tables_from",
        nargs="+",
        default=None,
        help="Print the table of the runs saved with --json in these files (e.g. parts of one ablation run as parallel "
        "processes, split by --fusion_types) instead of running anything.",
    )
    args = parser.parse_args(argv)
    if args.step_cost:
        cost = step_cost(args.step_cost)
        print(f"{args.step_cost} preset, batch 32: " + ", ".join(f"{name} {value:.3f}" for name, value in cost.items()))
        return cost
    if args.tables_from:
        raw = [run for path in args.tables_from for run in json.loads(Path(path).read_text())]
        runs = {}
        for run in raw:
            cell = run["argv"]
            key = (cell[cell.index("--fusion_type") + 1], float(cell[cell.index("--modality_dropout") + 1]))
            runs.setdefault(key, []).append(run["metrics"])
        print("run_classification.main arguments as in:\n  " + " ".join(raw[0]["argv"]))
        print(format_table(runs))
        return runs
    settings = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        settings["seeds"] = args.seeds
    if args.max_steps is not None:
        settings["max_steps"] = args.max_steps
    dropouts = args.modality_dropout or ([0.0] if args.quick else [0.0, 0.3])
    tasks = args.tasks or (["match", "colours"] if args.quick else None)
    vision = MMConfig.from_preset(settings["preset"]).vision_config
    build_fusion_dataset(image_size=image_size_of(vision), **BUILTIN_SPLITS)  # here once, not in every run
    cells = [(f, d, seed) for f in args.fusion_types for d in dropouts for seed in range(settings["seeds"])]
    jobs = max(1, min(args.jobs or os.cpu_count() or 1, len(cells)))
    print(f"{len(cells)} runs, {jobs} at a time", flush=True)

    start = time.perf_counter()
    results, raw = {}, []
    context = multiprocessing.get_context("spawn")  # a clean process per run: no torch state shared with this one
    with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {
            pool.submit(run_cell, settings, f, d, seed, Path(scratch) / f"{f}-{d}-{seed}", tasks): (f, d, seed)
            for f, d, seed in cells
        }
        for future in as_completed(futures):
            fusion_type, dropout, seed = futures[future]
            run_argv, metrics = future.result()
            results[(fusion_type, dropout, seed)] = metrics
            raw.append({"argv": run_argv, "metrics": metrics})
            print(f"[{time.perf_counter() - start:6.0f} s] {fusion_type} dropout {dropout} seed {seed}: "
                  f"match accuracy {metrics['match accuracy']:.3f}", flush=True)  # fmt: skip
            if args.json:  # after every run, so an interrupted benchmark keeps what it measured
                Path(args.json).write_text(json.dumps(raw, indent=1))
    runs = {}
    for fusion_type, dropout, seed in cells:  # the table in a fixed order, whatever order the runs finished in
        runs.setdefault((fusion_type, dropout), []).append(results[(fusion_type, dropout, seed)])
    print()
    print(f"bench_fusion {'--quick' if args.quick else '(full)'}: {settings}; run_classification.main arguments as in:")
    print("  " + " ".join(raw[0]["argv"]))
    print(format_table(runs))
    print(f"Total time: {time.perf_counter() - start:.0f} s")
    return runs


if __name__ == "__main__":
    main()

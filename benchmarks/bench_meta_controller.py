"""Does MetaControllerCallback rescue a mis-set learning rate on the real model? (issue 4, item 7)

Runs examples/run_clip.py (`main([...])`, contrastive training of the `tiny` preset on the built-in data) at the
tuned learning rate, ten times too high and ten times too low, each without and with `--meta_controller`: equal
steps, seeds, data and warmup-cosine schedule, one fixed held-out evaluation (loss on the validation split,
recall@1 on the test split, whose scenes hold colour-shape pairs never seen in training). Prints the final eval
loss and recall@1 (mean of image->text, text->image, audio->text, text->audio) side by side, each run's eval loss
as a ratio to the tuned run without the controller, whether the target is met, and one JSON line per run.

Target: with the controller, the two mis-set runs end within 10% of the tuned run's eval loss and clearly (>= 10%)
below the same runs without it, and the tuned run is not hurt.

    python benchmarks/bench_meta_controller.py --quick   # seed 0, 120 steps: 6 runs, ~1-2 min on 2 CPU cores
    python benchmarks/bench_meta_controller.py           # seeds 0-2, 300 steps: 18 runs, ~10 min on 2 CPU cores
    python benchmarks/bench_meta_controller.py --sweep   # re-measures the tuned LR first (no controller): +10 min

`TUNED_LEARNING_RATE` is the best mean eval loss of `--sweep` over `SWEEP` at these settings (AdamW, 64 pairs per
batch, 5% warmup, cosine decay, one thread): 300 steps, seeds 0-2: 2.97, 2.68, 2.71, 2.64, 3.06 for 5e-4 ... 5e-3;
120 steps (--quick): 1e-3. The first run builds the built-in data (~1 min) and caches it.
"""

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import torch
import transformers

from training_mm.meta_controller import MetaControllerCallback


REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = {
    # steps, seeds, built-in training scenes; 256 scenes in each of validation and test.
    "quick": dict(steps=120, seeds=(0,), num_train_samples=1024),
    "default": dict(steps=300, seeds=(0, 1, 2), num_train_samples=2048),
}
TUNED_LEARNING_RATE = {"quick": 1e-3, "default": 3e-3}
SWEEP = (5e-4, 1e-3, 2e-3, 3e-3, 5e-3)
SETTINGS = (("tuned", 1.0), ("10x too high", 10.0), ("10x too low", 0.1))
TARGET_RATIO = 1.10  # "within 10% of the tuned run's eval loss"
CLEARLY_AHEAD = 0.90  # with / without eval loss of a mis-set run


def load_run_clip():
    spec = spec_from_file_location("run_clip", REPO_ROOT / "examples" / "run_clip.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _CurrentStdout:
    """A stream that writes wherever sys.stdout points now, so that run_clip's log handler follows the redirect
    of each run into its log file (logging.basicConfig binds the sys.stdout of its first call)."""

    def write(self, text):
        return sys.stdout.write(text)

    def flush(self):
        sys.stdout.flush()


def train(run_clip, args, workdir, learning_rate, seed, controller):
    """One run_clip training; returns its measurements. Its console output goes to `workdir/<name>.log`."""
    name = f"lr{learning_rate:.0e}-seed{seed}-{'with' if controller else 'without'}"
    output_dir = Path(workdir) / name
    steps = args.steps
    argv = [
        "--preset", args.preset,
        "--num_train_samples", str(args.num_train_samples),
        "--num_eval_samples", "256",
        "--per_device_train_batch_size", "64",
        "--per_device_eval_batch_size", "64",
        "--learning_rate", str(learning_rate),
        "--max_steps", str(steps),
        "--seed", str(seed),
        "--eval_strategy", "steps", "--eval_steps", str(steps),  # one evaluation, after the last step
        "--save_strategy", "steps", "--save_steps", str(steps),  # the final checkpoint holds the controller state
        "--logging_steps", "50",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--output_dir", str(output_dir),
        "--overwrite_output_dir",
    ]  # fmt: skip
    if controller:
        argv.append("--meta_controller")
    start = time.perf_counter()
    with open(Path(workdir) / f"{name}.log", "w") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            metrics = run_clip.main(argv)
    seconds = time.perf_counter() - start
    recalls = [value for key, value in metrics.items() if key.startswith("recall@1 ")]
    result = {
        "eval_loss": metrics["eval_loss"],
        "recall@1": sum(recalls) / len(recalls),
        "seconds": seconds,
    }
    if controller:
        state = MetaControllerCallback()
        state.load(output_dir / f"checkpoint-{steps}")
        result.update(final_multiplier=state.multiplier, cuts=state.cuts)
    return result


def mean_over_seeds(runs, key):
    return statistics.fmean(run[key] for run in runs)


def sweep(run_clip, args, workdir):
    """Eval loss without the controller at each candidate LR (mean over seeds); returns the best LR."""
    print(f"LR sweep without the controller ({args.steps} steps, seeds {list(args.seeds)}):", flush=True)
    losses = {}
    for learning_rate in SWEEP:
        runs = [train(run_clip, args, workdir, learning_rate, seed, False) for seed in args.seeds]
        losses[learning_rate] = mean_over_seeds(runs, "eval_loss")
        per_seed = ", ".join(f"{run['eval_loss']:.3f}" for run in runs)
        print(f"  lr {learning_rate:.0e}: eval loss {losses[learning_rate]:.3f} (seeds: {per_seed})", flush=True)
    best = min(losses, key=losses.get)
    print(f"  tuned learning rate: {best:.0e}\n", flush=True)
    return best


def report(args, tuned, results, device):
    """The side-by-side table, the verdict against the target, one JSON line per run."""
    reference = mean_over_seeds(results[("tuned", False)], "eval_loss")
    print(
        f"== MetaControllerCallback on run_clip ({args.preset} preset, built-in data, {args.steps} steps, seeds "
        f"{list(args.seeds)}, tuned LR {tuned:.0e}) == torch {torch.__version__}, transformers "
        f"{transformers.__version__}, load average {os.getloadavg()[0]:.1f}"
    )
    print("eval loss: validation split, mean over seeds; x tuned: divided by the tuned run without the controller")
    columns = ("loss without", "with", "x tuned without", "with", "R@1 without", "with", "multiplier")
    rows = [("LR setting", "lr", *columns)]
    for setting, factor in SETTINGS:
        without, with_ = results[(setting, False)], results[(setting, True)]
        loss_without, loss_with = mean_over_seeds(without, "eval_loss"), mean_over_seeds(with_, "eval_loss")
        multipliers = "/".join(f"{run['final_multiplier']:.2g}" for run in with_)
        rows.append(
            (
                setting,
                f"{tuned * factor:.0e}",
                f"{loss_without:.3f}",
                f"{loss_with:.3f}",
                f"{loss_without / reference:.2f}",
                f"{loss_with / reference:.2f}",
                f"{mean_over_seeds(without, 'recall@1'):.3f}",
                f"{mean_over_seeds(with_, 'recall@1'):.3f}",
                multipliers,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"device: {device}")

    for setting, _ in SETTINGS[1:]:
        loss_with = mean_over_seeds(results[(setting, True)], "eval_loss")
        loss_without = mean_over_seeds(results[(setting, False)], "eval_loss")
        within = loss_with <= TARGET_RATIO * reference
        ahead = loss_with <= CLEARLY_AHEAD * loss_without
        print(
            f"target, {setting}: with the controller {loss_with / reference:.2f}x the tuned eval loss "
            f"({'within' if within else 'NOT within'} 10%), {loss_with / loss_without:.2f}x the run without it "
            f"({'clearly ahead' if ahead else 'NOT clearly ahead'})"
        )
    tuned_ratio = mean_over_seeds(results[("tuned", True)], "eval_loss") / reference
    print(f"tuned run with the controller: {tuned_ratio:.2f}x its eval loss without")

    for setting, factor in SETTINGS:
        for controller in (False, True):
            for seed, run in zip(args.seeds, results[(setting, controller)]):
                record = {
                    "name": f"meta_controller {setting} {'with' if controller else 'without'} seed {seed}",
                    "value": round(run["eval_loss"], 4),
                    "unit": "eval loss",
                    "ratio_to_tuned": round(run["eval_loss"] / reference, 4),
                    "recall@1": round(run["recall@1"], 4),
                    "learning_rate": tuned * factor,
                    "controller": controller,
                    "seed": seed,
                    "steps": args.steps,
                    "seconds": round(run["seconds"], 1),
                    "device": device,
                }
                if controller:
                    record.update(final_multiplier=round(run["final_multiplier"], 4), cuts=run["cuts"])
                print(json.dumps(record))
    print(flush=True)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 120 steps, 1024 training scenes (~3 min).")
    parser.add_argument("--sweep", action="store_true", help="measure the tuned LR first (no controller).")
    parser.add_argument("--learning-rate", type=float, default=None, help="tuned LR (default: TUNED_LEARNING_RATE).")
    parser.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of every run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads. The tiny model's ops are too small for more to help, and on a shared 2-core machine two "
        "threads per run were several times slower than one.",
    )
    parser.add_argument("--output-dir", default=None, help="keep the runs' folders and logs here (default: temp dir).")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    mode = "quick" if args.quick else "default"
    for key, value in MODES[mode].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.num_train_samples = MODES[mode]["num_train_samples"]
    torch.set_num_threads(args.threads)
    logging.basicConfig(handlers=[logging.StreamHandler(_CurrentStdout())])
    run_clip = load_run_clip()
    # Not common.device_label: its (args.device, args.timer) interface is for the ours-vs-theirs timing benchmarks.
    device = f"cpu: {platform.machine()}, {torch.get_num_threads()} thread(s)"
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = args.output_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_meta_controller-"))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        tuned = sweep(run_clip, args, workdir) if args.sweep else (args.learning_rate or TUNED_LEARNING_RATE[mode])
        results = {}
        for setting, factor in SETTINGS:
            for controller in (False, True):
                results[(setting, controller)] = runs = [
                    train(run_clip, args, workdir, tuned * factor, seed, controller) for seed in args.seeds
                ]
                losses = ", ".join(f"{run['eval_loss']:.3f}" for run in runs)
                print(
                    f"  {setting} ({tuned * factor:.0e}) {'with' if controller else 'without'} the controller: "
                    f"eval loss {losses} ({sum(run['seconds'] for run in runs):.0f} s)",
                    flush=True,
                )
        print()
        report(args, tuned, results, device)
    print(f"total time: {(time.perf_counter() - start) / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()

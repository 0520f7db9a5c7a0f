"""Ablation of MetaControllerCallback against the optimizers a user would pick instead.

Runs examples/run_clip.py (`main([...])`, contrastive training of the `tiny` preset on the built-in data) at the
tuned learning rate, ten times too high and ten times too low, with equal steps, seeds, data and one fixed
held-out evaluation (loss on the validation split, recall@1 on the test split), for each arm:

- `cosine`: AdamW, warmup + cosine, no controller (at the tuned rate: the tuned baseline);
- `rules`: the controller's rules alone (`policy="rules"`: cautious start, bold driver, divergence reflex);
- `full`: the controller as shipped (`policy="hypergradient"`: the rules plus the hypergradient LSTM);
- `trend`: the rules plus the redesigned LSTM (`policy="trend"`), which predicts the next window's loss/eval trend
  for a step up, down or none, learns from every window's outcome and acts only when it predicts better than a
  constant;
- `prodigy`: Prodigy (`prodigyopt`, passed through Trainer's `optimizers=`) under the same warmup + cosine; its
  rate axis is its `lr` multiplier: 1.0 as tuned, 10 and 0.1 as mis-set;
- `schedulefree`: Schedule-Free AdamW (`schedulefree`, Trainer's `optim="schedule_free_adamw"`, constant schedule,
  its own warmup) at the same three rates as AdamW.

It prints final eval loss and recall@1 (mean of image->text, text->image, audio->text, text->audio) as mean ± std
over seeds, each arm's eval loss as a ratio to the tuned `cosine` run, the tuning cost of each arm (runs needed
before it is within 10% of the tuned baseline: 1 when it is from all three rates, otherwise a sweep over `SWEEP`),
whether each controller arm ends within 10% of the tuned baseline and ahead of Prodigy and Schedule-Free from the same
mis-set rate, whether each learned policy differs from rules only by more than a standard deviation, and one JSON
line per run. It also measures the per-pair loss-weight adaptation:
the full controller with `pair_weights=True` at the tuned rate, audio recall@1 against the same run with fixed
equal weights.

    python benchmarks/bench_meta_controller.py --quick   # seed 0, 120 steps: 19 runs
    python benchmarks/bench_meta_controller.py           # seeds 0-2, 300 steps: 57 runs (~2 h on 2 CPU cores)
    python benchmarks/bench_meta_controller.py --sweep   # re-measures the tuned AdamW LR first (no controller)
    ... --jobs N                                         # N runs at a time, one thread each (results unchanged)

`TUNED_LEARNING_RATE` is the best mean eval loss of `--sweep` over `SWEEP` (AdamW, 64 pairs per batch, 5% warmup,
cosine decay, one thread): 300 steps, seeds 0-2: 2.97, 2.68, 2.71, 2.64, 3.06 for 5e-4 ... 5e-3; 120 steps
(--quick): 1e-3. The first run builds the built-in data (~1 min) and caches it.
"""

import argparse
import concurrent.futures
import contextlib
import functools
import json
import logging
import multiprocessing
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


REPO_ROOT = Path(__file__).resolve().parents[1]
# Measure the code beside this file, also where another checkout of mm is installed (run_clip imports it too).
sys.path.insert(0, str(REPO_ROOT))
import training_mm.meta_controller as meta_controller  # noqa: E402
MODES = {
    # steps, seeds, built-in training scenes; 256 scenes in each of validation and test.
    "quick": dict(steps=120, seeds=(0,), num_train_samples=1024),
    "default": dict(steps=300, seeds=(0, 1, 2), num_train_samples=2048),
}
TUNED_LEARNING_RATE = {"quick": 1e-3, "default": 3e-3}
SWEEP = (5e-4, 1e-3, 2e-3, 3e-3, 5e-3)
SETTINGS = (("tuned", 1.0), ("10x too high", 10.0), ("10x too low", 0.1))
# arm -> (what it is, controller policy or None, optimizer)
ARMS = {
    "cosine": ("AdamW, warmup + cosine, no controller", None, "adamw"),
    "rules": ("controller, rules only", "rules", "adamw"),
    "full": ("controller, rules + hypergradient LSTM (default)", "hypergradient", "adamw"),
    "trend": ("controller, rules + trend-predicting LSTM", "trend", "adamw"),
    "prodigy": ("Prodigy, warmup + cosine (rate = its lr multiplier)", None, "prodigy"),
    "schedulefree": ("Schedule-Free AdamW (own warmup)", None, "schedulefree"),
}
TARGET_RATIO = 1.10  # "within 10% of the tuned run's eval loss"
AUDIO_DIRECTIONS = ("recall@1 audio->text", "recall@1 text->audio")


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


def prodigy_trainer(trainer_cls):
    """`trainer_cls` whose optimizer is Prodigy, handed over through `optimizers=` (Trainer still builds the
    schedule). Prodigy's `lr` is a multiplier of the step size it estimates (1.0 as its authors recommend)."""
    from prodigyopt import Prodigy

    class ProdigyTrainer(trainer_cls):
        def __init__(self, *args, model=None, **kwargs):
            training_args = kwargs.pop("args")
            optimizer = Prodigy(
                [p for p in model.parameters() if p.requires_grad],
                lr=training_args.learning_rate,
                weight_decay=training_args.weight_decay,
                safeguard_warmup=True,  # recommended with a warmup schedule
                use_bias_correction=True,
            )
            super().__init__(*args, model=model, args=training_args, optimizers=(optimizer, None), **kwargs)

    return ProdigyTrainer


@contextlib.contextmanager
def patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def train(run_clip, args, workdir, arm, learning_rate, seed, **controller_kwargs):
    """One run_clip training; returns its measurements. Its console output goes to `workdir/<name>.log`."""
    _, policy, optimizer = ARMS[arm]
    tag = "-".join(f"{k}" for k in controller_kwargs)
    name = f"{arm}{'-' + tag if tag else ''}-lr{learning_rate:.0e}-seed{seed}"
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
    if optimizer == "schedulefree":
        argv += ["--optim", "schedule_free_adamw", "--lr_scheduler_type", "constant"]
    controller_kwargs = {"policy": policy, **controller_kwargs} if policy else {}
    if policy:
        argv.append("--meta_controller")
    callback = functools.partial(meta_controller.MetaControllerCallback, **controller_kwargs)
    trainer_cls = prodigy_trainer(run_clip.Trainer) if optimizer == "prodigy" else run_clip.Trainer
    start = time.perf_counter()
    with open(Path(workdir) / f"{name}.log", "w") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), contextlib.ExitStack() as stack:
            stack.enter_context(patched(meta_controller, "MetaControllerCallback", callback))
            stack.enter_context(patched(run_clip, "Trainer", trainer_cls))
            metrics = run_clip.main(argv)
    seconds = time.perf_counter() - start
    recalls = [value for key, value in metrics.items() if key.startswith("recall@1 ")]
    result = {
        "eval_loss": metrics["eval_loss"],
        "recall@1": sum(recalls) / len(recalls),
        "audio recall@1": statistics.fmean(metrics[key] for key in AUDIO_DIRECTIONS),
        "seconds": seconds,
    }
    if policy:
        state = meta_controller.MetaControllerCallback(**controller_kwargs)
        state.load(output_dir / f"checkpoint-{steps}")
        result.update(final_multiplier=state.multiplier, cuts=state.cuts)
        if state.adaptations.pair_weights:
            result["pair_weights"] = state.adaptations.pair_weights
    return result


_RUN_CLIP = None


def _train_in_worker(args, workdir, arm, learning_rate, seed, controller_kwargs):
    """`train` in a worker process of `--jobs`: each process loads run_clip once and trains on one thread."""
    global _RUN_CLIP
    if _RUN_CLIP is None:
        torch.set_num_threads(args.threads)
        logging.basicConfig(handlers=[logging.StreamHandler(_CurrentStdout())])
        _RUN_CLIP = load_run_clip()
    return train(_RUN_CLIP, args, workdir, arm, learning_rate, seed, **controller_kwargs)


def mean_std(runs, key):
    values = [run[key] for run in runs]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def formatted(runs, key, digits=3):
    mean, std = mean_std(runs, key)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(runs) > 1 else f"{mean:.{digits}f}"


def sweep(run_clip, args, workdir):
    """Eval loss of the `cosine` arm at each candidate LR (mean over seeds); returns the best LR."""
    print(f"LR sweep without the controller ({args.steps} steps, seeds {list(args.seeds)}):", flush=True)
    losses = {}
    for learning_rate in SWEEP:
        runs = [train(run_clip, args, workdir, "cosine", learning_rate, seed) for seed in args.seeds]
        losses[learning_rate] = mean_std(runs, "eval_loss")[0]
        print(f"  lr {learning_rate:.0e}: eval loss {losses[learning_rate]:.3f}", flush=True)
    best = min(losses, key=losses.get)
    print(f"  tuned learning rate: {best:.0e}\n", flush=True)
    return best


def rate_of(arm, tuned, factor):
    return factor if ARMS[arm][2] == "prodigy" else tuned * factor


def report(args, tuned, results, weighted, device):
    """The ablation table, tuning costs, verdicts, the pair-weight measurement, one JSON line per run."""
    reference = mean_std(results[("cosine", "tuned")], "eval_loss")[0]
    print(
        f"== MetaControllerCallback ablation on run_clip ({args.preset} preset, built-in data, {args.steps} steps, "
        f"seeds {list(args.seeds)}, tuned AdamW LR {tuned:.0e}) == torch {torch.__version__}, transformers "
        f"{transformers.__version__}, load average {os.getloadavg()[0]:.1f}"
    )
    print("eval loss: validation split; R@1: test split, mean of 4 directions; x tuned: / tuned cosine eval loss")
    rows = [("arm", "LR setting", "lr", "eval loss", "x tuned", "recall@1", "final multiplier")]
    for arm in ARMS:
        for setting, factor in SETTINGS:
            runs = results[(arm, setting)]
            multipliers = "/".join(f"{run['final_multiplier']:.2g}" for run in runs) if "final_multiplier" in runs[0] else ""
            rows.append(
                (
                    arm,
                    setting,
                    f"{rate_of(arm, tuned, factor):.0e}",
                    formatted(runs, "eval_loss"),
                    f"{mean_std(runs, 'eval_loss')[0] / reference:.2f}",
                    formatted(runs, "recall@1"),
                    multipliers,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"device: {device}\n")

    loss = {key: mean_std(runs, "eval_loss")[0] for key, runs in results.items()}
    print("tuning cost (runs before a setting within 10% of the tuned baseline is known):")
    for arm in ARMS:
        robust = all(loss[(arm, setting)] <= TARGET_RATIO * reference for setting, _ in SETTINGS)
        cost = "1 (within 10% from every rate)" if robust else f"{len(SWEEP)} (an LR sweep; not within 10% from every rate)"
        print(f"  {arm:13s} {cost}")
    print()
    for arm in ("rules", "full", "trend"):
        for setting, _ in SETTINGS[1:]:
            ratio = loss[(arm, setting)] / reference
            ahead = [other for other in ("prodigy", "schedulefree") if loss[(arm, setting)] < loss[(other, setting)]]
            print(
                f"target, {arm}, {setting}: {ratio:.2f}x the tuned eval loss "
                f"({'within' if ratio <= TARGET_RATIO else 'NOT within'} 10%); ahead of "
                f"{', '.join(ahead) if ahead else 'neither anchor'} from the same rate"
            )
    print()
    for arm in ("full", "trend"):
        for setting, _ in SETTINGS:
            learned, rules = mean_std(results[(arm, setting)], "eval_loss"), mean_std(results[("rules", setting)], "eval_loss")
            spread = max(learned[1], rules[1])
            verdict = "within one std of" if abs(learned[0] - rules[0]) <= spread else (
                "better than" if learned[0] < rules[0] else "worse than"
            )
            print(f"LSTM check, {arm} vs rules only, {setting}: {learned[0]:.3f} vs {rules[0]:.3f}: {verdict} rules only")
    print()
    equal = results[("full", "tuned")]
    print(
        "pair-weight adaptation (full controller, tuned rate): audio recall@1 (mean of audio->text, text->audio) "
        f"{formatted(weighted, 'audio recall@1')} with pair_weights=True vs {formatted(equal, 'audio recall@1')} with "
        f"fixed equal weights; eval loss {formatted(weighted, 'eval_loss')} vs {formatted(equal, 'eval_loss')}; final "
        f"weights {[run.get('pair_weights') for run in weighted]}"
    )
    print()
    for (arm, setting), runs in results.items():
        factor = dict(SETTINGS)[setting]
        for seed, run in zip(args.seeds, runs):
            record = {
                "name": f"meta_controller ablation {arm} {setting} seed {seed}",
                "value": round(run["eval_loss"], 4),
                "unit": "eval loss",
                "ratio_to_tuned": round(run["eval_loss"] / reference, 4),
                "recall@1": round(run["recall@1"], 4),
                "audio_recall@1": round(run["audio recall@1"], 4),
                "learning_rate": rate_of(arm, tuned, factor),
                "steps": args.steps,
                "seconds": round(run["seconds"], 1),
                "device": device,
            }
            record.update({k: run[k] for k in ("final_multiplier", "cuts") if k in run})
            print(json.dumps(record))
    print(flush=True)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 120 steps, 1024 training scenes.")
    parser.add_argument("--sweep", action="store_true", help="measure the tuned AdamW LR first (no controller).")
    parser.add_argument("--learning-rate", type=float, default=None, help="tuned LR (default: TUNED_LEARNING_RATE).")
    parser.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of every run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run (default all).")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (one thread each).")
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
    device = f"cpu: {platform.machine()}, {torch.get_num_threads()} thread(s) per run, {args.jobs} run(s) at a time"
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = args.output_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_meta_controller-"))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        tuned = sweep(run_clip, args, workdir) if args.sweep else (args.learning_rate or TUNED_LEARNING_RATE[mode])
        # Every run is independent: with --jobs N they run in N processes (one thread each).
        jobs = [
            ((arm, setting), (arm, rate_of(arm, tuned, factor), seed, {}))
            for arm in ARMS
            if arm in args.arms or arm == "cosine"
            for setting, factor in SETTINGS
            for seed in args.seeds
        ] + [(("pair_weights", "tuned"), ("full", tuned, seed, {"pair_weights": True})) for seed in args.seeds]
        if args.jobs > 1:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
                futures = [pool.submit(_train_in_worker, args, workdir, *job) for _, job in jobs]
                outcomes = [future.result() for future in futures]
        else:
            outcomes = [train(run_clip, args, workdir, arm, lr, seed, **kw) for _, (arm, lr, seed, kw) in jobs]
        results = {}
        for (key, (arm, lr, seed, _)), run in zip(jobs, outcomes):
            results.setdefault(key, []).append(run)
        weighted = results.pop(("pair_weights", "tuned"))
        for (arm, setting), runs in results.items():
            losses = ", ".join(f"{run['eval_loss']:.3f}" for run in runs)
            seconds = sum(run["seconds"] for run in runs)
            print(f"  {arm} {setting}: eval loss {losses} ({seconds:.0f} s)", flush=True)
        losses = ", ".join(f"{run['eval_loss']:.3f}" for run in weighted)
        print(f"  full + pair weights, tuned: eval loss {losses}\n", flush=True)
        if set(ARMS) <= {arm for arm, _ in results}:
            report(args, tuned, results, weighted, device)
        else:
            print("(the full report needs every arm)")
    print(f"total time: {(time.perf_counter() - start) / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()

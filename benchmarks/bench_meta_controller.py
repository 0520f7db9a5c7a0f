"""Ablation of MetaControllerCallback against the optimizers a user would pick instead, on two training tasks.

Each task is one of this project's example scripts, run through its `main([...])` on the built-in data with the
`tiny` preset:

- `clip`: examples/run_clip.py, contrastive training on the built-in scenes; task metric recall@1 on the test split
  (mean of image->text, text->image and, when the data has audio, audio->text, text->audio);
- `fusion`: examples/run_classification.py, the fusion classifier on the built-in fusion tasks (match, colours,
  count; their losses summed, `--task_loss_weighting sum`, so eval losses compare across arms); task metrics
  match accuracy and colours mAP on the test split.

At the tuned learning rate, ten times too high and ten times too low, with equal steps, seeds, data and one fixed
held-out evaluation (loss on the validation split, the task metric on the test split), for each arm:

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

Per task it prints final eval loss and the task metric as mean ± std over seeds, each arm's eval loss as a ratio to
the tuned `cosine` run, the tuning cost of each arm (runs needed before it is within 10% of the tuned baseline: 1
when it is from all three rates, otherwise a sweep over `SWEEP`), whether each controller arm ends within 10% of the
tuned baseline and ahead of Prodigy and Schedule-Free from the same mis-set rate, whether each learned policy differs
from rules only by more than a standard deviation, and one JSON line per run.

It also measures the per-pair loss-weight adaptation on a weak modality (`clip` task, when the built-in data has
audio, i.e. espeak-ng is installed): every audio clip (training, validation and test alike) gets its own fixed white
noise at `--weak-audio-snr` dB (default 0: noise as loud as the speech), so that audio learns slower than images; at
the tuned rate, the full controller with `pair_weights=True` against the same runs with fixed equal weights, at
equal steps: recall@1 of the weak (audio) and the strong (image) modality.

    python benchmarks/bench_meta_controller.py --quick   # clip only, seed 0, 60 steps: 20 runs, one per CPU core
    python benchmarks/bench_meta_controller.py           # both tasks, seeds 0-2, 300 steps: 114 runs (108 w/o audio)
    python benchmarks/bench_meta_controller.py --sweep   # re-measures each task's tuned AdamW LR first
    ... --device cuda --jobs 8                           # 8 runs at a time sharing one GPU (the default there)
    ... --results runs.jsonl                             # stream each finished run there; runs already in it are kept
    ... --deadline-minutes 8                             # start no run that would not end within 8 minutes
    ... --data-only                                      # build the built-in data the runs read, print where; exit

Runs are ordered seed by seed, so a run stopped by `--deadline-minutes` (or killed: `--results` keeps every finished
run) still reports complete tables for its first seeds. A run that fails is reported and the others go on. Each run
measures only what the report shows (see `measured_only_as_reported`: no retrieval baseline, mAP/nDCG or per-subset
classification metrics, which would take most of a run's time on a GPU).

`TUNED_LEARNING_RATE` is the best mean eval loss of `--sweep` over `SWEEP` (AdamW, 5% warmup, cosine decay, with
audio). clip (64 pairs per batch), 300 steps, seeds 0-2: 2.97, 2.68, 2.71, 2.64, 3.06 for 5e-4 ... 5e-3; 120 steps:
1e-3. fusion (32 items per batch), 300 steps, seed 0: 1.488, 1.396, 1.344, 1.380, 1.448. The `--quick` rates (60
steps) were not swept: they are those of 120 steps (clip) and 300 steps (fusion). The first run builds the built-in
data (~1 min with audio) and caches it under $MM_CACHE/builtin.
"""

import argparse
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import zlib
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import numpy as np
import torch
import transformers


REPO_ROOT = Path(__file__).resolve().parents[1]
# Measure the code beside this file, also where another checkout of mm is installed (the scripts import it too).
sys.path.insert(0, str(REPO_ROOT))
import training_mm.media_inputs as media_inputs  # noqa: E402
import training_mm.meta_controller as meta_controller  # noqa: E402
import training_mm.retrieval as retrieval  # noqa: E402
from configuration_mm import MMConfig  # noqa: E402
from training_mm.classification import evaluate_split  # noqa: E402
from training_mm.data_workers import available_cpus  # noqa: E402
from training_mm.fusion_data import build_fusion_dataset  # noqa: E402
from training_mm.synthetic_data import build_synthetic_dataset  # noqa: E402

# task -> (script, built-in data builder, items per training batch, task metrics reported: (result key, label))
# colours: mAP, not micro-F1 (which stays 0 while no colour's probability passes 0.5, as in 300 tiny-preset steps)
FUSION_METRICS = (("match accuracy", "match acc"), ("colours mAP", "colours mAP"))
TASKS = {
    "clip": ("run_clip", build_synthetic_dataset, 64, (("recall@1", "R@1"),)),
    "fusion": ("run_classification", build_fusion_dataset, 32, FUSION_METRICS),
}
NUM_EVAL_SAMPLES = {"clip": 256, "fusion": 300}  # items in each of validation and test
MODES = {
    # steps, seeds, tasks; training items per task.
    "quick": dict(steps=60, seeds=(0,), tasks=("clip",), num_train_samples={"clip": 1024, "fusion": 2000}),
    "default": dict(steps=300, seeds=(0, 1, 2), tasks=tuple(TASKS), num_train_samples={"clip": 2048, "fusion": 2000}),
}
TUNED_LEARNING_RATE = {"quick": {"clip": 1e-3, "fusion": 2e-3}, "default": {"clip": 3e-3, "fusion": 2e-3}}
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
IMAGE_DIRECTIONS = ("recall@1 image->text", "recall@1 text->image")
# DataLoader workers per run on a GPU at most: the tiny model's batches are decoded faster than that.
MAX_WORKERS_PER_RUN = 4
# Runs sharing one GPU by default (at most half the cores): a tiny-preset run leaves a GPU nearly idle, and its
# CPU side (data, evaluation, saving) wants about two cores.
GPU_JOBS = 8


def noisy(decode_audio, snr_db):
    """`decode_audio` that adds white noise at `snr_db` to each clip; the noise is fixed per clip (seeded by its
    samples), so a clip sounds the same in training, evaluation and retrieval: a weak, noisy modality."""

    def decode_with_noise(value, sampling_rate=None):
        waveform, rate = decode_audio(value, sampling_rate=sampling_rate)
        rng = np.random.default_rng(zlib.crc32(waveform.tobytes()))
        power = float(np.mean(waveform**2)) or 1e-12
        noise = rng.standard_normal(waveform.shape).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
        return waveform + noise, rate

    return decode_with_noise


def load_script(name):
    spec = spec_from_file_location(name, REPO_ROOT / "examples" / f"{name}.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _CurrentStdout:
    """A stream that writes wherever sys.stdout points now, so that the scripts' log handler follows the redirect
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


# ------------------------------------------------------------------------------------------------ device


def resolve_device(args):
    """Fills in `args.device` (auto: cuda when there is one), `args.jobs`, and `args.threads` and `args.workers` (per
    run).

    On a CPU, by default one run per core, each on one thread (the tiny model's ops are too small for more to help,
    and on a shared 2-core machine two threads per run were several times slower than one), decoding its batches
    itself. On a GPU, by default `GPU_JOBS` runs share it and the machine's cores: each gets `cores // jobs`, one for
    its training process and the rest (at most `MAX_WORKERS_PER_RUN`) as DataLoader workers decoding the next batches.
    """
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; pass --device cpu (or auto).")
    if args.jobs is None:
        args.jobs = available_cpus() if args.device == "cpu" else max(1, min(GPU_JOBS, available_cpus() // 2))
    share = max(1, available_cpus() // args.jobs)
    if args.workers is None:
        args.workers = min(MAX_WORKERS_PER_RUN, share - 1) if args.device == "cuda" else 0
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else max(1, share - args.workers)


def device_label(args):
    """The report's "device" line: where the runs trained, and how they shared the machine."""
    sharing = (
        f"{args.jobs} run(s) at a time, {args.threads} torch thread(s) and {args.workers} DataLoader worker(s) per "
        f"run, {available_cpus()} CPU cores; torch {torch.__version__}, transformers {transformers.__version__}"
    )
    if args.device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)} (one GPU shared by the runs), {sharing}"
    return f"cpu: {platform.machine()}, {sharing}"


# ------------------------------------------------------------------------------------------------ one run


def run_name(task, arm, learning_rate, seed, snr_db=None, **controller_kwargs):
    tag = "-".join(f"{k}" for k in controller_kwargs) + ("" if snr_db is None else f"-audio{snr_db:g}dB")
    return f"{task}-{arm}{'-' + tag.strip('-') if tag else ''}-lr{learning_rate:.0e}-seed{seed}"


def script_argv(args, task, learning_rate, seed, output_dir):
    """The command line of one run of the task's script: `args.steps` steps, one evaluation after the last step and
    one checkpoint there (which holds the controller's state)."""
    steps = args.steps
    argv = [
        "--preset", args.preset,
        "--num_train_samples", str(args.num_train_samples[task]),
        "--num_eval_samples", str(NUM_EVAL_SAMPLES[task]),
        "--per_device_train_batch_size", str(TASKS[task][2]),
        "--per_device_eval_batch_size", "64",
        "--learning_rate", str(learning_rate),
        "--max_steps", str(steps),
        "--seed", str(seed),
        "--eval_strategy", "steps", "--eval_steps", str(steps),
        "--save_strategy", "steps", "--save_steps", str(steps),
        "--logging_steps", "50",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--output_dir", str(output_dir),
        "--overwrite_output_dir",
        "--dataloader_num_workers", str(args.workers),
        "--dataloader_persistent_workers", str(args.workers > 0).lower(),
        "--dataloader_pin_memory", str(args.device == "cuda").lower(),
    ]  # fmt: skip
    if args.device == "cpu":
        argv += ["--use_cpu", "true"]
    if task == "fusion":
        argv += ["--task_loss_weighting", "sum"]
    return argv


def train(scripts, args, workdir, task, arm, learning_rate, seed, snr_db=None, **controller_kwargs):
    """One training run of `task`'s script (`scripts`: name -> loaded module); returns its measurements. Its console
    output goes to `workdir/<name>.log`. With `snr_db`, every audio clip is noised (see `noisy`)."""
    _, policy, optimizer = ARMS[arm]
    name = run_name(task, arm, learning_rate, seed, snr_db, **controller_kwargs)
    output_dir = Path(workdir) / name
    script = scripts[TASKS[task][0]]
    argv = script_argv(args, task, learning_rate, seed, output_dir)
    if optimizer == "schedulefree":
        argv += ["--optim", "schedule_free_adamw", "--lr_scheduler_type", "constant"]
    controller_kwargs = {"policy": policy, **controller_kwargs} if policy else {}
    if policy:
        argv.append("--meta_controller")
    callback = functools.partial(meta_controller.MetaControllerCallback, **controller_kwargs)
    trainer_cls = prodigy_trainer(script.Trainer) if optimizer == "prodigy" else script.Trainer
    start = time.perf_counter()
    with open(Path(workdir) / f"{name}.log", "w") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), contextlib.ExitStack() as stack:
            stack.enter_context(patched(meta_controller, "MetaControllerCallback", callback))
            stack.enter_context(patched(script, "Trainer", trainer_cls))
            if snr_db is not None:
                stack.enter_context(patched(media_inputs, "decode_audio", noisy(media_inputs.decode_audio, snr_db)))
            for module, attribute, value in measured_only_as_reported(script, task):
                stack.enter_context(patched(module, attribute, value))
            metrics = script.main(argv)
    result = {"eval_loss": metrics["eval_loss"], "seconds": time.perf_counter() - start}
    if task == "clip":
        recalls = [value for key, value in metrics.items() if key.startswith("recall@1 ")]
        result["recall@1"] = sum(recalls) / len(recalls)
        for modality, directions in (("audio", AUDIO_DIRECTIONS), ("image", IMAGE_DIRECTIONS)):
            if all(key in metrics for key in directions):
                result[f"{modality} recall@1"] = statistics.fmean(metrics[key] for key in directions)
    else:
        result.update({key: metrics[key] for key, _ in TASKS[task][3]})
    if policy:
        state = meta_controller.MetaControllerCallback(**controller_kwargs)
        state.load(output_dir / f"checkpoint-{args.steps}")
        result.update(final_multiplier=state.multiplier, cuts=state.cuts)
        if state.adaptations.pair_weights:
            result["pair_weights"] = state.adaptations.pair_weights
    return result


def measured_only_as_reported(script, task):
    """(module, name, replacement) for the scripts' held-out measurements this benchmark does not report, which would
    take most of a run's time on a GPU (they run on the CPU): run_clip's retrieval before training (its baseline) and
    the mAP/nDCG after it (scikit-learn, per query); run_classification's metrics with each subset of the modalities
    (only those with all of them are reported). The run's own log and model card then lack them."""
    if task == "clip":
        measure = script.retrieval_metrics

        def recall_after_training_only(*args, desc="Retrieval", **kwargs):
            if desc == "Retrieval before":
                return {}
            return {key: value for key, value in measure(*args, desc=desc, **kwargs).items() if key.startswith("recall@")}

        def not_measured(*args, ndcg_at=retrieval.NDCG_AT, **kwargs):
            return {"mAP": math.nan, f"nDCG@{ndcg_at}": math.nan}  # dropped by recall_after_training_only

        return [
            (script, "retrieval_metrics", recall_after_training_only),
            (script, "format_recall_table", lambda *args: "(retrieval table: see the benchmark's report)"),
            (retrieval, "ranking_metrics", not_measured),
        ]

    def with_every_modality(model, processor, split, modalities, batch_size, label_columns=None):
        return {tuple(modalities): evaluate_split(model, processor, split, modalities, batch_size, label_columns)}

    return [(script, "ablation", with_every_modality)]


_SCRIPTS = {}


def scripts_loaded():
    """The example scripts as modules, loaded once per process."""
    if not _SCRIPTS:
        _SCRIPTS.update({script: load_script(script) for script, *_ in TASKS.values()})
    return _SCRIPTS


def _train_in_worker(args, workdir, job):
    """`train` in a worker process of `--jobs`."""
    if not _SCRIPTS:
        torch.set_num_threads(args.threads)
        logging.basicConfig(handlers=[logging.StreamHandler(_CurrentStdout())])
    task, arm, learning_rate, seed, snr_db, kwargs = job
    return train(scripts_loaded(), args, workdir, task, arm, learning_rate, seed, snr_db, **kwargs)


# ------------------------------------------------------------------------------------------------ many runs


class ResultsFile:
    """One JSON line per finished run, written as it finishes; runs already in the file are not run again."""

    def __init__(self, path, args, device):
        self.path, self.args, self.device, self.done, self.seconds = path, args, device, {}, []
        if path and os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    record = json.loads(line)
                    self.done[self._key(record["run"], record.get("task", "clip"))] = record
            print(f"{len(self.done)} finished run(s) read from {path}", flush=True)

    def _key(self, name, task):
        return name, self.args.steps, self.args.num_train_samples[task], self.args.preset

    def get(self, name, task):
        return self.done.get(self._key(name, task))

    def add(self, name, task, result):
        record = {"run": name, "task": task, "steps": self.args.steps,
                  "num_train_samples": self.args.num_train_samples[task], "preset": self.args.preset,
                  "device": self.device, **result}  # fmt: skip
        self.done[self._key(name, task)] = record
        self.seconds.append(result["seconds"])
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        print(f"  finished {name}: eval loss {result['eval_loss']:.3f} ({result['seconds']:.0f} s)", flush=True)


def run_jobs(todo, args, workdir, store):
    """Runs `todo` ([(name, job)]) `--jobs` at a time, each result into `store`. With `--deadline-minutes`, a run is
    started only while the time left exceeds the longest run finished so far. Returns the names not started and those
    that failed (each failure is printed with its traceback; the other runs go on)."""
    start = time.perf_counter()
    pending, failed = list(todo), []

    def may_start():
        if args.deadline_minutes is None:
            return True
        return time.perf_counter() - start + max(store.seconds, default=0.0) <= 60 * args.deadline_minutes

    def finished(name, job, run):
        try:
            store.add(name, job[0], run())
        except Exception:  # one broken arm must not cost the runs of all the others
            failed.append(name)
            print(f"  FAILED {name} (its log: {Path(workdir) / name}.log):\n{traceback.format_exc()}", flush=True)

    if args.jobs == 1:
        while pending and may_start():
            name, job = pending.pop(0)
            finished(name, job, lambda: train(scripts_loaded(), args, workdir, *job[:5], **job[5]))
    else:
        # Every run is independent: with --jobs N they run in N processes ("spawn": CUDA cannot be forked).
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            running = {}
            while True:
                while pending and len(running) < args.jobs and may_start():
                    name, job = pending.pop(0)
                    running[pool.submit(_train_in_worker, args, workdir, job)] = (name, job)
                if not running:
                    break
                done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    name, job = running.pop(future)
                    finished(name, job, future.result)
    if pending:
        print(f"deadline ({args.deadline_minutes:g} min): {len(pending)} run(s) not started", flush=True)
    return [name for name, _ in pending], failed


def built_in_data(args, task):
    """Builds (or loads) the task's built-in data in this process, before any run reads it; returns it."""
    build = TASKS[task][1]
    image_size = MMConfig.from_preset(args.preset).vision_config.image_size
    samples = args.num_train_samples[task]
    evaluation = NUM_EVAL_SAMPLES[task]
    return build(num_train=samples, num_validation=evaluation, num_test=evaluation, image_size=image_size)


def describe_data(task, data):
    folder = Path(data["train"].cache_files[0]["filename"]).parents[1]
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    audio = "with audio" if "audio" in data["train"].column_names else "NO audio (espeak-ng not found)"
    rows = {split: len(rows) for split, rows in data.items()}
    return f"{task}: {folder} ({size / 2**20:.1f} MiB, {audio}, {rows})"


# ------------------------------------------------------------------------------------------------ report


def mean_std(runs, key):
    values = [run[key] for run in runs]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def formatted(runs, key, digits=3):
    mean, std = mean_std(runs, key)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(runs) > 1 else f"{mean:.{digits}f}"


def rate_of(arm, tuned, factor):
    return factor if ARMS[arm][2] == "prodigy" else tuned * factor


def devices_of(runs):
    """The "device" line of a report: where its runs trained, as each run recorded it (a report may combine runs of
    several invocations, e.g. from a `--results` file written elsewhere)."""
    return " | ".join(sorted({run.get("device", "not recorded") for run in runs}))


def report(args, task, tuned, results):
    """The task's ablation table, tuning costs, verdicts, one JSON line per run. `results`: (arm, setting) -> the runs
    that finished; rows or verdicts whose runs did not finish are left out (and said so)."""
    if not results.get(("cosine", "tuned")):
        print(f"== {task}: no tuned `cosine` run finished: no table (the reference is missing) ==\n")
        return
    reference = mean_std(results[("cosine", "tuned")], "eval_loss")[0]
    # Runs recorded by an older version of this benchmark may lack a metric added since: it is then left out.
    recorded = [(key, label) for key, label in TASKS[task][3] if all(key in run for runs in results.values() for run in runs)]
    if len(recorded) < len(TASKS[task][3]):
        print(f"(not recorded by every run, left out: {[key for key, _ in TASKS[task][3] if (key, _) not in recorded]})")
    metrics = recorded
    print(
        f"== MetaControllerCallback ablation, task {task} ({TASKS[task][0]}, {args.preset} preset, built-in data, "
        f"{args.steps} steps, tuned AdamW LR {tuned:.0e}) == load average now {os.getloadavg()[0]:.1f}"
    )
    labels = [label for _, label in metrics]
    print(f"eval loss: validation split; {', '.join(labels)}: test split; x tuned: / tuned cosine eval loss")
    rows = [("arm", "LR setting", "lr", "seeds", "eval loss", "x tuned", *labels, "final multiplier")]
    missing = []
    for arm in ARMS:
        for setting, factor in SETTINGS:
            runs = results.get((arm, setting))
            if not runs:
                missing.append(f"{arm} {setting}")
                continue
            multipliers = "/".join(f"{run['final_multiplier']:.2g}" for run in runs) if "final_multiplier" in runs[0] else ""
            rows.append(
                (
                    arm,
                    setting,
                    f"{rate_of(arm, tuned, factor):.0e}",
                    str(len(runs)),
                    formatted(runs, "eval_loss"),
                    f"{mean_std(runs, 'eval_loss')[0] / reference:.2f}",
                    *(formatted(runs, key) for key, _ in metrics),
                    multipliers,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"device: {devices_of(run for runs in results.values() for run in runs)}")
    if missing:
        print(f"not run or not finished: {', '.join(missing)}")
    print()

    loss = {key: mean_std(runs, "eval_loss")[0] for key, runs in results.items() if runs}
    print("tuning cost (runs before a setting within 10% of the tuned baseline is known):")
    for arm in ARMS:
        if not all((arm, setting) in loss for setting, _ in SETTINGS):
            continue
        robust = all(loss[(arm, setting)] <= TARGET_RATIO * reference for setting, _ in SETTINGS)
        cost = "1 (within 10% from every rate)" if robust else f"{len(SWEEP)} (an LR sweep; not within 10% from every rate)"
        print(f"  {arm:13s} {cost}")
    print()
    for arm in ("rules", "full", "trend"):
        for setting, _ in SETTINGS[1:]:
            if (arm, setting) not in loss:
                continue
            ratio = loss[(arm, setting)] / reference
            anchors = [other for other in ("prodigy", "schedulefree") if (other, setting) in loss]
            ahead = [other for other in anchors if loss[(arm, setting)] < loss[(other, setting)]]
            print(
                f"target, {arm}, {setting}: {ratio:.2f}x the tuned eval loss "
                f"({'within' if ratio <= TARGET_RATIO else 'NOT within'} 10%); ahead of "
                f"{', '.join(ahead) if ahead else 'neither anchor'} from the same rate"
                + ("" if len(anchors) == 2 else f" (of the anchors only {anchors or 'none'} finished)")
            )
    print()
    for arm in ("full", "trend"):
        for setting, _ in SETTINGS:
            if (arm, setting) not in loss or ("rules", setting) not in loss:
                continue
            learned, rules = mean_std(results[(arm, setting)], "eval_loss"), mean_std(results[("rules", setting)], "eval_loss")
            spread = max(learned[1], rules[1], 5e-4)  # below the printed precision: a tie (also with one seed)
            verdict = "within one std of" if abs(learned[0] - rules[0]) <= spread else (
                "better than" if learned[0] < rules[0] else "worse than"
            )
            print(f"LSTM check, {arm} vs rules only, {setting}: {learned[0]:.3f} vs {rules[0]:.3f}: {verdict} rules only")
    print()
    for (arm, setting), runs in results.items():
        factor = dict(SETTINGS)[setting]
        for run in runs:
            record = {
                "name": f"meta_controller ablation {task} {arm} {setting} seed {run['seed']}",
                "value": round(run["eval_loss"], 4),
                "unit": "eval loss",
                "ratio_to_tuned": round(run["eval_loss"] / reference, 4),
                **{key: round(run[key], 4) for key, _ in metrics},
                "learning_rate": rate_of(arm, tuned, factor),
                "steps": args.steps,
                "seconds": round(run["seconds"], 1),
                "device": run.get("device"),
            }
            record.update({k: run[k] for k in ("audio recall@1", "final_multiplier", "cuts") if k in run})
            print(json.dumps(record))
    print(flush=True)


def report_pair_weights(args, tuned, pairs):
    """The pair-weight adaptation on the weak (noised) audio: each modality's recall, equal against adapted weights."""
    print(
        f"== Per-pair loss weights on a weak modality: audio noised at {args.weak_audio_snr:g} dB SNR; full "
        f"controller, task clip, tuned LR {tuned:.0e}, {args.steps} steps =="
    )
    print("R@1: test split; audio = mean of audio->text, text->audio; image = mean of image->text, text->image")
    for label, key in (("fixed equal weights", "equal"), ("pair_weights=True", "adaptive")):
        runs = pairs.get(key)
        if not runs:
            print(f"  {label:20s} not run or not finished")
            continue
        print(
            f"  {label:20s} audio R@1 {formatted(runs, 'audio recall@1')}  "
            f"image R@1 {formatted(runs, 'image recall@1')}  eval loss {formatted(runs, 'eval_loss')}  "
            f"seeds {len(runs)}"
        )
    for run in pairs.get("adaptive", []):
        weights = ", ".join(f"{pair} {weight:.2f}" for pair, weight in (run.get("pair_weights") or {}).items())
        print(f"  final weights, seed {run['seed']}: {weights}")
    print(f"device: {devices_of(run for runs in pairs.values() for run in runs)}")
    for key, runs in pairs.items():
        for run in runs:
            record = {
                "name": f"meta_controller pair weights {key} audio {args.weak_audio_snr:g} dB seed {run['seed']}",
                "value": round(run["audio recall@1"], 4),
                "unit": "audio recall@1",
                "image_recall@1": round(run["image recall@1"], 4),
                "eval_loss": round(run["eval_loss"], 4),
                "steps": args.steps,
                "seconds": round(run["seconds"], 1),
                "device": run.get("device"),
            }
            print(json.dumps(record))
    print(flush=True)


# ------------------------------------------------------------------------------------------------ main


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="task clip, 1 seed, 60 steps, 1024 training scenes.")
    parser.add_argument("--sweep", action="store_true", help="measure each task's tuned AdamW LR first.")
    parser.add_argument(
        "--learning-rate", type=float, nargs="+", default=None, help="tuned LR per task (default TUNED_LEARNING_RATE)."
    )
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None, help="default: all (--quick: clip).")
    parser.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of every run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run (default all).")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="where the runs train.")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time, one process each (see resolve_device).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (see resolve_device).")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers per run (default: 0 on CPU).")
    parser.add_argument(
        "--deadline-minutes", type=float, default=None,
        help="start a run only while more time is left than the longest run so far took; report what finished.",
    )  # fmt: skip
    parser.add_argument("--output-dir", default=None, help="keep the runs' folders and logs here (default: temp dir).")
    parser.add_argument(
        "--results", default=None, help="JSONL file: each finished run is appended; runs already in it are reused."
    )
    parser.add_argument(
        "--weak-audio-snr", type=float, default=0.0, help="SNR (dB) of the noise on each clip in the pair-weight runs."
    )
    parser.add_argument("--pair-weights-only", action="store_true", help="run only the pair-weight measurement.")
    parser.add_argument("--data-only", action="store_true", help="build the built-in data, print where it is; exit.")
    return parser


def settings_of(args):
    """Parsed arguments with the mode's defaults filled in."""
    mode = "quick" if args.quick else "default"
    for key in ("steps", "seeds", "tasks"):
        if getattr(args, key) is None:
            setattr(args, key, MODES[mode][key])
    args.num_train_samples = MODES[mode]["num_train_samples"]
    if args.pair_weights_only:
        args.tasks = ("clip",)
    if args.learning_rate is not None and len(args.learning_rate) != len(args.tasks):
        raise SystemExit(f"--learning-rate takes one rate per task ({list(args.tasks)}), got {args.learning_rate}.")
    args.tuned = dict(zip(args.tasks, args.learning_rate or [TUNED_LEARNING_RATE[mode][t] for t in args.tasks]))
    resolve_device(args)
    return args


def main(argv=None):
    args = settings_of(build_parser().parse_args(argv))
    torch.set_num_threads(args.threads)
    logging.basicConfig(handlers=[logging.StreamHandler(_CurrentStdout())])
    print(f"device: {device_label(args)}", flush=True)
    start = time.perf_counter()
    # Built here, once, before any run reads it (parallel runs would otherwise each build the same data).
    data = {task: built_in_data(args, task) for task in args.tasks}
    print("built-in data (under $MM_CACHE/builtin):\n" + "\n".join(f"  {describe_data(t, d)}" for t, d in data.items()))
    if args.data_only:
        return data
    has_audio = "clip" in data and "audio" in data["clip"]["train"].column_names
    results = {}
    with contextlib.ExitStack() as stack:
        workdir = args.output_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_meta_controller-"))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        store = ResultsFile(args.results, args, device_label(args))
        if args.sweep:
            args.tuned = sweep(args, workdir, store)
        snr = args.weak_audio_snr
        jobs = []  # (key in the report, (task, arm, lr, seed, snr_db, controller kwargs)); seed by seed
        for seed in args.seeds:
            for task in args.tasks:
                if not args.pair_weights_only:
                    jobs += [
                        ((task, arm, setting), (task, arm, rate_of(arm, args.tuned[task], factor), seed, None, {}))
                        for arm in ARMS
                        if arm in args.arms or arm == "cosine"
                        for setting, factor in SETTINGS
                    ]
                if task == "clip" and has_audio:
                    jobs += [
                        (("pairs", key, ""), ("clip", "full", args.tuned["clip"], seed, snr, kwargs))
                        for key, kwargs in (("equal", {}), ("adaptive", {"pair_weights": True}))
                    ]
        if "clip" in args.tasks and not has_audio:
            print("The per-pair loss-weight measurement needs audio, which the built-in data lacks here: not run.")
        names = [run_name(*job[:5], **job[5]) for _, job in jobs]
        todo = [(name, job) for name, (_, job) in zip(names, jobs) if store.get(name, job[0]) is None]
        print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already in {args.results}", flush=True)
        not_started, failed = run_jobs(todo, args, workdir, store)
        for name, (key, job) in zip(names, jobs):
            run = store.get(name, job[0])
            if run is not None:
                results.setdefault(key, []).append({**run, "seed": job[3]})
        print()
        if has_audio and "clip" in args.tasks:
            pairs = {key: results.pop(("pairs", key, ""), []) for key in ("equal", "adaptive")}
            report_pair_weights(args, args.tuned["clip"], pairs)
        if not args.pair_weights_only:
            for task in args.tasks:
                task_results = {(arm, setting): runs for (t, arm, setting), runs in results.items() if t == task}
                report(args, task, args.tuned[task], task_results)
    if failed:
        print(f"FAILED runs ({len(failed)}): {', '.join(failed)}")
    if not_started:
        print(f"not started before the deadline ({len(not_started)}): {', '.join(not_started)}")
    print(f"total time: {(time.perf_counter() - start) / 60:.1f} min")
    return results


def sweep(args, workdir, store):
    """Eval loss of the `cosine` arm at each `SWEEP` LR (mean over seeds), per task; returns {task: best LR}."""
    todo = [
        (run_name(task, "cosine", lr, seed), (task, "cosine", lr, seed, None, {}))
        for task in args.tasks
        for lr in SWEEP
        for seed in args.seeds
    ]
    run_jobs([(name, job) for name, job in todo if store.get(name, job[0]) is None], args, workdir, store)
    tuned = {}
    for task in args.tasks:
        print(f"LR sweep of task {task} without the controller ({args.steps} steps, seeds {list(args.seeds)}):")
        losses = {}
        for lr in SWEEP:
            runs = [store.get(name, task) for name, job in todo if job[0] == task and job[2] == lr]
            if all(runs):
                losses[lr] = statistics.fmean(run["eval_loss"] for run in runs)
                print(f"  lr {lr:.0e}: eval loss {losses[lr]:.3f}")
        tuned[task] = min(losses, key=losses.get) if losses else args.tuned[task]
        print(f"  tuned learning rate: {tuned[task]:.0e}\n", flush=True)
    return tuned


if __name__ == "__main__":
    main()

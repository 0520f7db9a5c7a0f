"""What every mm benchmark shares: command-line options, a timer, FLOP counting, and the report.

Each benchmark compares one of ours against its Hugging Face counterpart in the same process, on the same
inputs, dtype, attention back-end and device, and returns a list of `Result`s; `report` prints them as a table
with ours/theirs ratios and as one JSON line each (`name, ours, theirs, ratio, unit, device`), so a run can be
read by a person and grepped by a script (`grep '^{"name"'`).
"""

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import transformers

DTYPES = ("float32", "bfloat16", "float16")

# Dense (no sparsity) peak tensor-core FLOP/s for bf16/fp16, by a substring of torch.cuda.get_device_name().
# Checked in order, so "H100 PCIe"/"H100 NVL" are matched before the SXM (HBM3) part that reports plain "H100".
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
)


@dataclass
class Result:
    """One measurement of ours against theirs. `ours`/`theirs` are None where it cannot be taken (`note` says why)."""

    name: str
    ours: float | None
    theirs: float | None
    unit: str
    device: str
    note: str = ""

    @property
    def ratio(self):
        if self.ours is None or self.theirs is None or self.theirs == 0:
            return None
        return self.ours / self.theirs

    def to_json(self):
        def rounded(value):
            return None if value is None else round(value, 4)

        record = dict(
            name=self.name,
            ours=rounded(self.ours),
            theirs=rounded(self.theirs),
            ratio=rounded(self.ratio),
            unit=self.unit,
            device=self.device,
        )
        if self.note:
            record["note"] = self.note
        return json.dumps(record)


def add_common_args(parser):
    """Options every benchmark takes, so `run_all.py` can pass one command line to each."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--dtype", choices=("auto", *DTYPES), default="auto", help="auto: bfloat16 on CUDA, float32 on CPU."
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (ours and theirs).")
    parser.add_argument(
        "--preset",
        choices=("tiny", "small", "base"),
        default=None,
        help="mm preset the sizes are matched to; default 'small' on CPU, 'base' on CUDA.",
    )
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="attn_implementation of both models.")
    parser.add_argument(
        "--quick", action="store_true", help="small batches and few iterations (< 1 min on 2 CPU cores)."
    )
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (the median is reported).")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations before timing.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (the real measure). cpu: this process's CPU time, for comparing on a busy shared "
        "CPU machine, where other processes' load swamps wall time; run it single-threaded (OMP_NUM_THREADS=1).",
    )
    return parser


def resolve_args(args):
    """Fills the `auto`/None options in place from the device, and returns `args`."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch.cuda.is_available() is False.")
    if args.device == "cuda" and args.timer == "cpu":
        raise SystemExit("--timer cpu measures host CPU time, not GPU work: use --timer wall with --device cuda.")
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.preset is None:
        args.preset = "base" if args.device == "cuda" else "small"
    if args.warmup is None:
        args.warmup = 3 if args.device == "cuda" and args.compile else (1 if args.quick else 2)
    if args.iters is None:
        args.iters = 3 if args.quick else (20 if args.device == "cuda" else 9)
    return args


def device_label(args):
    """What the numbers ran on, e.g. 'cuda: NVIDIA H100 80GB HBM3' or 'cpu: x86_64, 2 threads'."""
    if args.device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    label = f"cpu: {platform.machine()}, {torch.get_num_threads()} threads"
    return label + (", process CPU time" if args.timer == "cpu" else "")


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(ours_fn, theirs_fn, args, warmup=None):
    """Median seconds per call of each function over `args.iters` rounds, after `warmup` (default `args.warmup`)
    untimed calls of each (compilation, allocator growth, lazy CUDA init).

    The rounds alternate (ours, theirs, ours, ...), which spreads any drift of the machine (other processes,
    clocks, caches) evenly over both; that matters on a shared 2-core CPU.
    """
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    for _ in range(args.warmup if warmup is None else warmup):
        ours_fn()
        theirs_fn()
    times = {ours_fn: [], theirs_fn: []}
    for _ in range(args.iters):
        for fn in (ours_fn, theirs_fn):
            synchronize(args.device)
            start = clock()
            fn()
            synchronize(args.device)
            times[fn].append(clock() - start)
    return statistics.median(times[ours_fn]), statistics.median(times[theirs_fn])


def count_flops(fn):
    """FLOPs of one call of `fn` (matmuls, convolutions, attention), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_flops(device, dtype):
    """(peak FLOP/s, which GPU entry it came from), or (None, reason) where MFU cannot be stated."""
    if not str(device).startswith("cuda"):
        return None, "n/a (no GPU)"
    if dtype not in (torch.bfloat16, torch.float16):
        return None, f"n/a (peak known for bf16/fp16 only, not {dtype})"
    name = torch.cuda.get_device_name()
    for key, flops in PEAK_FLOPS:
        if key in name:
            return flops, f"{key} peak {flops / 1e12:.0f} TFLOP/s dense bf16"
    return None, f"n/a (no peak FLOP/s listed for {name!r}; add it to benchmarks/common.py PEAK_FLOPS)"


def model_tag(args, batch_size):
    """What a model measurement's numbers depend on, for its name: preset, batch, dtype, attention, compile."""
    return f"{args.preset} b{batch_size} {args.dtype} {args.attn}{' compiled' if args.compile else ''}"


def model_settings(args):
    """The settings a model benchmark's numbers depend on, for its table's title."""
    return f"{args.dtype}, attn={args.attn}, compile={'on' if args.compile else 'off'}, seed={args.seed}"


def report(results, title, json_lines=True):
    """Prints a table (with ratios ours/theirs) followed by one JSON line per result."""
    # The load average says how busy the machine was (other processes skew CPU timings).
    print(
        f"== {title} == torch {torch.__version__}, transformers {transformers.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rows = [("benchmark", "ours", "theirs", "ours/theirs", "unit")]
    for r in results:
        rows.append(
            (
                r.name,
                _fmt(r.ours, r.note),
                _fmt(r.theirs, r.note),
                "-" if r.ratio is None else f"{r.ratio:.2f}x",
                r.unit,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for device in dict.fromkeys(r.device for r in results):
        print(f"device: {device}")
    if json_lines:
        for r in results:
            print(r.to_json())
    print(flush=True)


def _fmt(value, note):
    if value is None:
        return note or "n/a"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def run_script(build_parser, run, title, argv=None):
    """The `main` of every benchmark: parse, resolve the auto options, run, report; returns the results.

    `title(args)` names the comparison and the settings it ran with.
    """
    args = resolve_args(build_parser().parse_args(argv))
    torch.manual_seed(args.seed)
    results = run(args)
    report(results, title(args))
    return results


def new_parser(description):
    return add_common_args(argparse.ArgumentParser(description=description))

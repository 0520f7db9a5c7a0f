"""Attention for long inputs: forward+backward time and peak memory of local, block-sparse and linear attention
(ours) against full attention with SDPA (theirs), and eager, from 256 to 16k positions.

Two targets: one encoder layer (`MMEncoderLayer`) and the whole audio tower (`MMAudioModel`: stem, every layer,
pooling, its positions stretched to the longest length), both of `--preset`'s audio tower, at batch 1 with no
padding. One measurement = forward, a loss (mean of the squared outputs), backward. The variants' settings are the
config defaults unless given: window 128 (local), blocks of 64 (block-sparse), no global tokens.

Memory is the growth of the process's resident set (VmHWM after resetting it through /proc/self/clear_refs, minus
VmRSS before, after `malloc_trim`) on CPU, `torch.cuda.max_memory_allocated()` growth on CUDA. Before each run its
memory is predicted from the shapes (`predict_bytes`); a run predicted above `--max-gib` is not run and reads
"skipped: needs X GiB", so the benchmark never meets the machine's OOM killer. After the table: the crossover length
of each variant (the shortest measured length from which it is faster than SDPA at every longer length), where SDPA
ran out of the memory cap, and the linear attention's memory at 16k over 4k.

    python benchmarks/bench_attention.py --quick                 # 256, 1k, 4k; a couple of minutes on 2 CPU cores
    python benchmarks/bench_attention.py                         # 256 -> 16k, small preset, CPU
    python benchmarks/bench_attention.py --device cuda           # base preset, bf16
"""

import ctypes
import gc
import re
import statistics
import time

import torch

from common import Result, device_label, new_parser, run_script, synchronize
from configuration_mm import MMConfig
from modeling_mm import MMAudioModel
from modeling_mm.modeling_mm_layers import MMEncoderLayer
from modeling_mm.modeling_mm_long_attention import block_offsets

GIB = 2**30
# What each measured implementation sets on the tower's config; "sdpa" is the reference ("theirs").
IMPLEMENTATIONS = {
    "sdpa": dict(attention_type="full", attn="sdpa"),
    "eager": dict(attention_type="full", attn="eager"),
    "local": dict(attention_type="local", attn="sdpa"),
    "block_sparse": dict(attention_type="block_sparse", attn="sdpa"),
    "linear": dict(attention_type="linear", attn="sdpa"),
}
TARGETS = ("layer", "audio tower")


def build_parser():
    parser = new_parser(__doc__.splitlines()[0])
    parser.set_defaults(iters=0, warmup=1)  # iters 0: 3 timed calls, 1 with --quick
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="positions after the audio stem (default 256 512 1k 2k 4k 8k 16k; quick: 256 1k 4k).")
    parser.add_argument("--implementations", nargs="+", choices=list(IMPLEMENTATIONS), default=list(IMPLEMENTATIONS))
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--max-gib", type=float, default=6.0,
                        help="runs predicted to need more memory than this are skipped (CPU machines are shared).")
    parser.add_argument("--attention-window", type=int, default=None)
    parser.add_argument("--attention-block-size", type=int, default=None)
    parser.add_argument("--num-global-tokens", type=int, default=0)
    return parser  # fmt: skip


def tower_config(args, implementation, length):
    settings = dict(IMPLEMENTATIONS[implementation])
    attn = settings.pop("attn")
    if settings["attention_type"] in ("local", "block_sparse"):
        settings["num_global_tokens"] = args.num_global_tokens
    for name in ("attention_window", "attention_block_size"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    config = MMConfig.from_preset(args.preset, audio_config=dict(max_source_positions=length, **settings))
    config = config.audio_config
    config._attn_implementation = attn
    return config


def keys_per_query(config, length):
    """How many keys each query's scores hold: the quadratic part of attention's memory."""
    if config.attention_type == "full":
        return 0 if config._attn_implementation == "sdpa" else length  # SDPA's CPU/GPU kernels keep no T x T
    if config.attention_type == "linear":
        return 0
    if config.attention_type == "local":
        return 3 * min(config.attention_window, length) + config.num_global_tokens
    num_blocks = -(-length // config.attention_block_size)
    return len(block_offsets(num_blocks)) * config.attention_block_size + config.num_global_tokens


def predict_bytes(config, length, target, element_size):
    """Peak memory of one forward+backward, from the shapes: per layer, ~24 (B, T, hidden) activations (kept for the
    backward, and their gradients) and the score-sized (B, heads, T, keys) tensors: ~4 for eager attention (scores,
    probabilities, their gradients), ~7 for the blocked variants (also the mask, the masked scores, the gathered
    keys and values); one layer's worth more on top of what every layer keeps. Measured peaks are 0.3-1.0x this."""
    keys = keys_per_query(config, length)
    score_tensors = 4 if config.attention_type == "full" else 7
    per_layer = element_size * length * (24 * config.hidden_size + score_tensors * config.num_attention_heads * keys)
    layers = 1 if target == "layer" else config.num_hidden_layers
    return (layers + 1) * per_layer


def build(config, target, args):
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    length = config.max_source_positions
    generator = torch.Generator().manual_seed(args.seed)
    if target == "layer":
        module = MMEncoderLayer(config).to(args.device, dtype)
        inputs = torch.randn(1, length, config.hidden_size, generator=generator).to(args.device, dtype)
        inputs.requires_grad_(True)
        forward = lambda: module(inputs, None)[0]  # noqa: E731
    else:
        module = MMAudioModel(config).to(args.device, dtype)
        features = torch.randn(1, config.num_mel_bins, 2 * length, generator=generator).to(args.device, dtype)
        forward = lambda: module(features).last_hidden_state  # noqa: E731
    module.train()

    def step():
        module.zero_grad(set_to_none=True)
        forward().float().pow(2).mean().backward()

    return step


class PeakMemory:
    """Peak memory growth of what runs inside the `with` block, in bytes (`.peak`)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap pages back, so they count when reused
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            self.start = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.peak = _status_bytes("VmHWM") - self.start


def _status_bytes(field):
    with open("/proc/self/status") as f:
        return 1024 * int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def measure(step, args):
    """(median seconds of `args.iters` calls, peak memory bytes of one call), after `args.warmup` calls."""
    for _ in range(args.warmup):
        step()
    with PeakMemory(args.device) as memory:
        step()
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    times = []
    for _ in range(args.iters):
        synchronize(args.device)
        start = clock()
        step()
        synchronize(args.device)
        times.append(clock() - start)
    return statistics.median(times), memory.peak


def run(args):
    args.iters = args.iters or (1 if args.quick else 3)
    lengths = args.lengths or ((256, 1024, 4096) if args.quick else (256, 512, 1024, 2048, 4096, 8192, 16384))
    element_size = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    device = device_label(args)
    # One untimed step first, so the first row does not pay for the process's one-time set-up (thread pools, ...).
    build(tower_config(args, "sdpa", lengths[0]), "layer", args)()
    measured = {}  # (target, implementation, length) -> (seconds, bytes, predicted bytes) or a note
    for target in args.targets:
        for length in lengths:
            for implementation in args.implementations:
                config = tower_config(args, implementation, length)
                need = predict_bytes(config, length, target, element_size)
                if need > args.max_gib * GIB:
                    measured[target, implementation, length] = f"skipped: needs {need / GIB:.1f} GiB"
                else:
                    seconds, peak = measure(build(config, target, args), args)
                    measured[target, implementation, length] = (seconds, peak, need)
                    gc.collect()
                print(f"  {target} {implementation} T={length}: {_cell(measured[target, implementation, length])}",
                      flush=True)  # fmt: skip
    print_tables(measured, args, lengths)
    return results_of(measured, args, lengths, device)


def results_of(measured, args, lengths, device):
    """One time and one memory `Result` per (target, implementation, length); theirs = SDPA's."""
    results = []
    for target in args.targets:
        for implementation in [name for name in args.implementations if name != "sdpa"]:
            for length in lengths:
                ours, theirs = measured[target, implementation, length], measured.get((target, "sdpa", length))
                theirs = theirs if isinstance(theirs, tuple) else None
                note = ours if isinstance(ours, str) else ""
                ours = ours if isinstance(ours, tuple) else None
                name = f"{target} fwd+bwd {implementation} vs sdpa T={length} {args.preset} {args.dtype}"
                results.append(Result(f"{name} time", ours and 1e3 * ours[0], theirs and 1e3 * theirs[0], "ms",
                                      device, note))  # fmt: skip
                results.append(Result(f"{name} peak memory", ours and ours[1] / 2**20, theirs and theirs[1] / 2**20,
                                      "MiB", device, note))  # fmt: skip
    return results


def print_tables(measured, args, lengths):
    """Per target: a time table and a memory table (rows: lengths, columns: implementations), then crossovers."""
    for target in args.targets:
        for what, index, unit in (("time", 0, "ms"), ("peak memory", 1, "MiB")):
            print(f"\n{target}, forward+backward {what} ({unit}), {args.preset} audio tower widths, {args.dtype}, "
                  f"{device_label(args)}")  # fmt: skip
            rows = [["T", *args.implementations]]
            for length in lengths:
                row = [str(length)]
                for implementation in args.implementations:
                    cell = measured[target, implementation, length]
                    scale = 1e3 if index == 0 else 2**-20
                    row.append(cell if isinstance(cell, str) else f"{cell[index] * scale:,.0f}")
                rows.append(row)
            _print_rows(rows)
        if "sdpa" not in args.implementations:
            continue
        for implementation in [name for name in args.implementations if name != "sdpa"]:
            print(f"{target}: {implementation} faster than sdpa from T = "
                  f"{crossover(measured, target, implementation, lengths)}")  # fmt: skip
        oom = [length for length in lengths if isinstance(measured[target, "sdpa", length], str)]
        print(f"{target}: sdpa beyond the {args.max_gib:g} GiB cap from T = {oom[0] if oom else 'not reached'}")
        if "linear" in args.implementations and {4096, 16384} <= set(lengths):
            at_4k, at_16k = measured[target, "linear", 4096], measured[target, "linear", 16384]
            if isinstance(at_4k, tuple) and isinstance(at_16k, tuple):
                print(f"{target}: linear peak memory 16k / 4k = {at_16k[1] / at_4k[1]:.2f}x (linear in T: 4x)")
    print()


def crossover(measured, target, implementation, lengths):
    """The shortest measured length from which `implementation` is faster than SDPA at every longer length where it
    ran (a run of it skipped for memory says nothing); SDPA skipped for memory counts as slower."""
    first = None
    for length in lengths:
        ours, theirs = measured[target, implementation, length], measured[target, "sdpa", length]
        if isinstance(ours, str):
            continue
        faster = isinstance(theirs, str) or ours[0] < theirs[0]
        first = (first or length) if faster else None
    return first or f"not reached (measured up to {lengths[-1]})"


def _cell(cell):
    if isinstance(cell, str):
        return cell
    return f"{1e3 * cell[0]:,.1f} ms, {cell[1] / 2**20:,.1f} MiB (predicted {cell[2] / 2**20:,.1f} MiB)"


def _print_rows(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * width for width in widths))


def title(args):
    return f"Long-input attention vs full SDPA, forward+backward, {args.preset} audio tower, {args.dtype}"


def main(argv=None):
    return run_script(build_parser, run, title, argv)


if __name__ == "__main__":
    main()

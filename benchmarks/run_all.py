"""Runs every mm benchmark in one process and ends with one summary table.

Every option is passed to each benchmark (see `common.add_common_args`). On CUDA the model benchmarks run twice,
without and with `torch.compile`; on CPU once, uncompiled (add `--compile` for a compiled pass too: compiling
takes minutes on 2 cores).

    python benchmarks/run_all.py --quick            # < 1 min on 2 CPU cores
    python benchmarks/run_all.py                    # CPU: small preset, float32
    python benchmarks/run_all.py --device cuda      # GPU: base preset, bf16, eager and compiled
"""

import argparse
import sys
import time

import torch

import bench_audio_features
import bench_contrastive
import bench_generation
from common import report

MODEL_BENCHMARKS = (bench_contrastive, bench_generation)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only what decides the passes is read here; each benchmark parses (and validates) the whole command line.
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--device", default="auto")
    probe.add_argument("--compile", action="store_true")
    known, _ = probe.parse_known_args(argv)
    on_cuda = known.device == "cuda" or (known.device == "auto" and torch.cuda.is_available())
    base_argv = [arg for arg in argv if arg != "--compile"]
    compile_passes = [[]] + ([["--compile"]] if on_cuda or known.compile else [])

    start = time.perf_counter()
    results = []
    for module in MODEL_BENCHMARKS:
        for extra in compile_passes:
            results += module.main(base_argv + extra)
    results += bench_audio_features.main(base_argv)
    report(results, f"summary ({time.perf_counter() - start:.0f} s)", json_lines=False)
    return results


if __name__ == "__main__":
    main()

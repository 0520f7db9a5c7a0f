"""MMFeatureExtractor against transformers' WhisperFeatureExtractor on 30 s clips (clips/s).

Both compute 80-bin log-mel spectrograms of 16 kHz audio with a 400-sample FFT and a 160-sample hop, so a 30 s
clip gives 3000 frames from each; both run their torch path on `--device` and return torch tensors. Timed from
the list of numpy clips to the returned `BatchFeature`, at batch 1 (one request) and a larger batch (a collator).

    python benchmarks/bench_audio_features.py
    python benchmarks/bench_audio_features.py --device cuda
"""

from functools import partial

import numpy as np
from transformers import WhisperFeatureExtractor

from common import Result, device_label, new_parser, run_script, time_pair
from processing_mm import MMFeatureExtractor

SAMPLING_RATE = 16000
CLIP_SECONDS = 30


def build_parser():
    parser = new_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="clips per call (default: 1 16; quick: 1 4)."
    )
    return parser


def make_clips(batch_size, seed):
    """Speech-like test signals: noise under a slow loudness envelope, different per clip, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    samples = SAMPLING_RATE * CLIP_SECONDS
    envelope = 0.5 + 0.5 * np.sin(np.linspace(0, 40 * np.pi, samples, dtype=np.float32))
    return [0.1 * rng.standard_normal(samples, dtype=np.float32) * envelope for _ in range(batch_size)]


def run(args):
    device = device_label(args)
    ours = MMFeatureExtractor(feature_size=80, max_length=CLIP_SECONDS * 100)
    theirs = WhisperFeatureExtractor(feature_size=80, chunk_length=CLIP_SECONDS)
    results = []
    for batch_size in args.batch_sizes or ((1, 4) if args.quick else (1, 16)):
        clips = make_clips(batch_size, args.seed)
        call = dict(sampling_rate=SAMPLING_RATE, return_tensors="pt", device=args.device)
        run_ours, run_theirs = partial(ours, clips, **call), partial(theirs, clips, **call)
        # The first warm-up call, checked: 30 s at a 10 ms hop is 3000 frames from both.
        frames = (run_ours()["input_features"].shape[-1], run_theirs()["input_features"].shape[-1])
        if frames != (3000, 3000):
            raise RuntimeError(f"expected 3000 frames from both extractors, got {frames}")
        warmup = max(0, args.warmup - 1)
        t_ours, t_theirs = time_pair(run_ours, run_theirs, args, warmup)
        name = f"log-mel 30 s b{batch_size}"
        results.append(Result(name, batch_size / t_ours, batch_size / t_theirs, "clips/s", device))
    return results


def title(args):
    return f"MMFeatureExtractor vs WhisperFeatureExtractor (30 s clips), device={args.device}"


def main(argv=None):
    return run_script(build_parser, run, title, argv)


if __name__ == "__main__":
    main()

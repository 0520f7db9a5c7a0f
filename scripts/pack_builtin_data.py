#!/usr/bin/env python
"""Copy the built-in data's cache with its audio re-encoded as Ogg/Opus, small enough to carry to a machine that
cannot build the data itself (no espeak-ng there, e.g. a GPU machine without internet).

The default data (3000/300/300 scenes, 64 px, as run_clip.py builds it) is ~240 MB of WAV audio; as Opus at the
default level it is ~35 MB. Opus is lossy (about 20 dB SNR against the WAV, speech still clear), so figures measured
on the packed copy are of slightly degraded clips: say so next to them. The copy keeps the cache's folder name, so
pointing MM_CACHE at `<output>` makes every example load it as the built-in data:

    python scripts/pack_builtin_data.py outputs/gpu/cache          # then, on the other machine:
    MM_CACHE=outputs/gpu/cache python examples/run_clip.py
"""

import argparse
import io
from pathlib import Path

import soundfile as sf

from training_mm.audio_decoding import SAMPLING_RATE, decode_audio
from training_mm.synthetic_data import build_synthetic_dataset


def to_opus(audio, compression_level):
    """One `{"bytes", "path"}` audio value (any format soundfile reads) as Ogg/Opus bytes at 16 kHz."""
    wave, _ = decode_audio(audio, sampling_rate=SAMPLING_RATE)
    buffer = io.BytesIO()
    sf.write(buffer, wave, SAMPLING_RATE, format="OGG", subtype="OPUS", compression_level=compression_level)
    return {"bytes": buffer.getvalue(), "path": audio["path"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="The MM_CACHE folder to write (its builtin/<key> subfolder).")
    parser.add_argument("--num_train_samples", type=int, default=3000)
    parser.add_argument("--num_eval_samples", type=int, default=300)
    parser.add_argument("--image_size", type=int, default=64, help="The judge's image size (small preset: 64).")
    parser.add_argument("--compression_level", type=float, default=0.9, help="libsndfile's: 0 best, 1 smallest.")
    args = parser.parse_args(argv)
    sizes = dict(num_train=args.num_train_samples, num_validation=args.num_eval_samples, image_size=args.image_size)
    splits = build_synthetic_dataset(**sizes, num_test=args.num_eval_samples)  # from this machine's cache
    source = Path(splits["train"].cache_files[0]["filename"]).parents[1]
    packed = splits.map(
        lambda audio: {"audio": to_opus(audio, args.compression_level)},
        input_columns=["audio"],  # the other columns are copied as they are, images undecoded
        features=splits["train"].features,
        keep_in_memory=True,  # no cache files beside the source
        desc="Re-encoding the audio as Opus",
    )
    target = args.output / "builtin" / source.name
    packed.save_to_disk(str(target))
    megabytes = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
    print(f"{target}: {megabytes:.1f} MB (from {source})")


if __name__ == "__main__":
    main()

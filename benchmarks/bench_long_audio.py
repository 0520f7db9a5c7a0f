"""What each attention variant costs in quality on long audio: text<->audio retrieval after equal training steps.

The audio tower of the `small-long-audio` preset (30 s of positions) is trained with full attention (SDPA, the
reference: "theirs") and with each long-input variant (local, block-sparse, linear: "ours"), on long clips built
from the built-in spoken captions: each caption, spoken by espeak-ng (1-3 s), is placed at a random offset in
`--clip-seconds` of low noise, so the tower must find a short event anywhere in a long input and carry it to the
pooled embedding. The text tower is trained with it from scratch (same seed, data order and recipe for every run);
the image tower is not used. Reported: recall@1 and @5 in both directions on held-out clips, and the training time
per step, each variant next to full attention.

    python benchmarks/bench_long_audio.py --quick        # 8 s clips, 40 steps: checks the script, not a measurement
    python benchmarks/bench_long_audio.py                 # 20 s clips, 300 steps, 1 seed
    python benchmarks/bench_long_audio.py --seeds 0 1 2   # mean ± std over seeds
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from configuration_mm import MMConfig
from modeling_mm import MMModel
from processing_mm import MMFeatureExtractor, train_tokenizer
from training_mm.collators import group_ids
from training_mm.data import SAMPLING_RATE, decode_audio
from training_mm.retrieval import recall_at_k
from training_mm.synthetic_data import build_synthetic_dataset

VARIANTS = ("full", "local", "block_sparse", "linear")
NOISE_LEVEL = 0.003  # background noise amplitude (speech peaks near 1): about -40 dB


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--clip-seconds", type=float, default=None, help="default 20 (quick: 8).")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 300, quick 40).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-clips", type=int, default=None, help="default 1000 (quick 200).")
    parser.add_argument("--test-clips", type=int, default=None, help="default 300 (quick 100).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also append one JSON line per run to this file.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when present.")
    return parser


def resolve(args):
    quick = args.quick
    args.clip_seconds = args.clip_seconds or (8.0 if quick else 20.0)
    args.steps = args.steps or (40 if quick else 300)
    args.train_clips = args.train_clips or (200 if quick else 1000)
    args.test_clips = args.test_clips or (100 if quick else 300)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch.cuda.is_available() is False.")
    return args


def long_clips(split, clip_seconds, seed):
    """Each row's spoken caption at a random offset in `clip_seconds` of low noise (16 kHz float32)."""
    rng = np.random.default_rng(seed)
    length = int(clip_seconds * SAMPLING_RATE)
    clips = []
    for row in tqdm(split, desc="long clips", leave=False):
        speech, _ = decode_audio(row["audio"], sampling_rate=SAMPLING_RATE)
        speech = speech[:length]
        clip = (NOISE_LEVEL * rng.standard_normal(length)).astype(np.float32)
        start = rng.integers(0, length - len(speech) + 1)
        clip[start : start + len(speech)] += speech
        clips.append(clip)
    return clips


def featurize(clips, extractor, batch_size=64):
    """Log-mel features of every clip, padded to the longest: (N, mels, frames) and the frame mask (N, frames)."""
    features, masks = [], []
    for start in range(0, len(clips), batch_size):
        out = extractor(
            clips[start : start + batch_size], sampling_rate=SAMPLING_RATE, return_tensors="pt", padding="max_length"
        )
        features.append(out["input_features"])
        masks.append(out["audio_attention_mask"])
    return torch.cat(features), torch.cat(masks)


def new_model(variant, args, vocab_size, seed):
    torch.manual_seed(seed)
    config = MMConfig.from_preset(
        "small-long-audio",
        text_config={"vocab_size": vocab_size},
        audio_config={"attention_type": variant},
    )
    return MMModel(config)


def train_and_score(variant, seed, data, args):
    model = new_model(variant, args, len(data["tokenizer"]), seed).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.05)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, args.steps // 10), args.steps)
    generator = torch.Generator().manual_seed(seed)
    train = data["train"]
    order = torch.randperm(len(train["ids"]), generator=generator)
    train = {name: value.to(args.device) if torch.is_tensor(value) else value for name, value in train.items()}
    model.train()
    start = time.perf_counter()
    losses = []
    for step in tqdm(range(args.steps), desc=f"{variant} seed {seed}", leave=False):
        index = order[(step * args.batch_size) % len(order) :][: args.batch_size]
        if len(index) < args.batch_size:  # wrapped around: a new epoch's order
            order = torch.randperm(len(train["ids"]), generator=generator)
            index = order[: args.batch_size]
        loss = model(
            input_ids=train["ids"][index],
            attention_mask=train["mask"][index],
            input_features=train["features"][index],
            audio_attention_mask=train["audio_mask"][index],
            group_ids=train["groups"][index],
            return_loss=True,
        ).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{variant} seed {seed}: loss became {loss.item()} at step {step}.")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds_per_step = (time.perf_counter() - start) / args.steps
    test = {name: value.to(args.device) if torch.is_tensor(value) else value for name, value in data["test"].items()}
    return {**score(model, test), "s/step": seconds_per_step, "final loss": statistics.mean(losses[-10:])}


@torch.no_grad()
def score(model, test, batch_size=64):
    model.eval()
    texts, audios = [], []
    for start in range(0, len(test["ids"]), batch_size):
        part = slice(start, start + batch_size)
        texts.append(model.get_text_features(input_ids=test["ids"][part], attention_mask=test["mask"][part]).pooler_output)
        audios.append(
            model.get_audio_features(
                input_features=test["features"][part], audio_attention_mask=test["audio_mask"][part]
            ).pooler_output
        )
    text = torch.nn.functional.normalize(torch.cat(texts), dim=-1).cpu()
    audio = torch.nn.functional.normalize(torch.cat(audios), dim=-1).cpu()
    keys = test["labels"]
    metrics = {}
    for name, (queries, gallery) in {"text->audio": (text, audio), "audio->text": (audio, text)}.items():
        for k, value in recall_at_k(queries, gallery, keys, keys, ks=(1, 5)).items():
            metrics[f"R@{k} {name}"] = value
    return metrics


def prepare_data(args):
    splits = build_synthetic_dataset(
        num_train=args.train_clips, num_validation=0, num_test=args.test_clips, image_size=32
    )
    if "audio" not in splits["train"].column_names:
        raise SystemExit("The built-in data has no audio (espeak-ng missing): `apt-get install espeak-ng`.")
    config = MMConfig.from_preset("small-long-audio")
    tokenizer = train_tokenizer(
        list(splits["train"]["caption"]),
        vocab_size=config.text_config.vocab_size,
        model_max_length=config.text_config.max_position_embeddings,
    )
    frames = int(args.clip_seconds * 100)  # the feature extractor's 10 ms hop
    if frames // 2 > config.audio_config.max_source_positions:
        raise SystemExit(
            f"--clip-seconds {args.clip_seconds} is longer than the preset's audio positions "
            f"({config.audio_config.max_source_positions * 2 / 100:.0f} s)."
        )
    extractor = MMFeatureExtractor(feature_size=config.audio_config.num_mel_bins, max_length=frames)
    data = {"tokenizer": tokenizer}
    for name, split in (("train", splits["train"]), ("test", splits["test"])):
        text = tokenizer(list(split["caption"]), padding=True, truncation=True, return_tensors="pt")
        features, audio_mask = featurize(long_clips(split, args.clip_seconds, seed=len(name)), extractor)
        data[name] = {
            "ids": text["input_ids"],
            "mask": text["attention_mask"],
            "features": features,
            "audio_mask": audio_mask,
            "labels": list(split["label"]),
            "groups": group_ids(split["label"]),
        }
    return data


def main(argv=None):
    args = resolve(build_parser().parse_args(argv))
    data = prepare_data(args)
    positions = data["train"]["features"].shape[-1] // 2
    print(
        f"{args.clip_seconds:g} s clips ({positions} positions after the stem), {len(data['train']['ids'])} train / "
        f"{len(data['test']['ids'])} test clips, {args.steps} steps of {args.batch_size}, seeds {args.seeds}, "
        f"{device_description(args.device)}"
    )
    runs = {}
    for seed in args.seeds:  # seed by seed: a run stopped early still compares every variant on its first seeds
        for variant in args.variants:
            result = train_and_score(variant, seed, data, args)
            runs.setdefault(variant, []).append(result)
            line = json.dumps({"variant": variant, "seed": seed, **{k: round(v, 4) for k, v in result.items()}})
            print(line, flush=True)
            if args.json:
                with open(args.json, "a") as handle:
                    handle.write(line + "\n")
    args.test_labels = list(data["test"]["labels"])
    report(runs, args)


def device_description(device):
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}, float32"
    return f"cpu, {torch.get_num_threads()} torch thread(s), float32"


def report(runs, args):
    columns = list(next(iter(runs.values()))[0])
    print(f"\n| attention | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for variant, results in runs.items():
        cells = []
        for column in columns:
            values = [result[column] for result in results]
            mean = statistics.mean(values)
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{mean:.3f}{spread}")
        print(f"| {variant}{' (reference)' if variant == 'full' else ''} | {' | '.join(cells)} |")
    labels = args.test_labels
    chance = statistics.mean(labels.count(label) / len(labels) for label in labels)
    print(f"Chance R@1: {chance:.3f} (test clips sharing a scene label count as hits).")


if __name__ == "__main__":
    main()

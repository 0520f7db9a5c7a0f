#!/usr/bin/env python
"""Text-to-speech training of mm's head (`MMForTextToSpeech`): the text tower of a contrastive checkpoint (frozen by
default) drives a non-autoregressive mel decoder trained on the built-in spoken captions; Griffin-Lim makes the
waveform. The saved folder speaks with `pipeline("text-to-speech", model=folder, trust_remote_code=True)`.

With no arguments it starts from `outputs/run_clip-small` (trained first by run_clip.py when missing), trains on the
built-in data with `Trainer`, and prints, for held-out test captions, the mel-cepstral distortion of the generated
clips against the espeak-ng references, audio->text retrieval recall by the contrastive model and the WER of a
speech-to-text mm captioner's transcripts (`outputs/run_captioning-audio`, trained first by run_captioning.py on the
contrastive model's towers when missing), each next to the real clips (the ceiling) and to noise and silence (the
floor); it writes WAV samples and the model folder to outputs/run_text_to_speech:

    python examples/run_text_to_speech.py
    python examples/run_text_to_speech.py --captioner_name_or_path none          # no WER (no captioner to train)
    python examples/run_text_to_speech.py --captioner_name_or_path my_captioner  # run_captioning.py --modality audio

WER is part of this script rather than a benchmark of its own because it scores the clips the script has just
generated, next to MCD and recall on the same clips.

`main(argv)` is importable and returns the measured metrics.
"""

import json
import logging
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from configuration_mm import MMConfig, MMSpeechConfig
from modeling_mm import MMForConditionalGeneration, MMForTextToSpeech, MMModel
from training_mm.captioning import generate_captions
from training_mm.default_checkpoint import DEFAULT_CAPTIONER, ensure_captioner, ensure_checkpoint
from training_mm.output_folder import check_output_dir
from training_mm.processors import load_processor
from training_mm.data_workers import dataloader_workers
from training_mm.script_arguments import DataArguments, GenerationArguments, setup_logging
from training_mm.splits import load_splits
from training_mm.trainer_steps import train_and_collect_losses
from training_mm.data import SAMPLING_RATE, decode_audio
from training_mm.retrieval import recall_at_k
from training_mm.text_to_speech import TextToSpeechCollator, mel_cepstral_distortion

logger = logging.getLogger("run_text_to_speech")


@dataclass
class ModelArguments(GenerationArguments):
    """The speech head on the text tower of `--text_model_name_or_path` (its judge by default too), and the optional
    speech-to-text captioner that measures the WER."""

    train_text_model: bool = field(default=False, metadata={"help": "Train the text tower too (default: frozen)."})
    captioner_name_or_path: str = field(
        default=DEFAULT_CAPTIONER,
        metadata={"help": "An mm speech-to-text captioner (run_captioning.py --modality audio) that transcribes the "
                          "generated, real, noise and silent clips for their WER (jiwer). The default is trained by "
                          "run_captioning.py on the judge's towers if missing; `none` skips the WER."},
    )
    hidden_size: int = 192
    num_hidden_layers: int = 3


@dataclass
class SpeechTrainingArguments(TrainingArguments):
    output_dir: str = "outputs/run_text_to_speech"
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write into a non-empty --output_dir."})
    per_device_train_batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: float = 0.05
    lr_scheduler_type: str = "cosine"
    num_train_epochs: float = 4.0
    logging_steps: float = 20
    eval_strategy: str = "no"
    save_strategy: str = "no"
    remove_unused_columns: bool = False
    report_to: str = "none"
    # The collator decodes the clips and computes their log-mels in these workers (see data_workers).
    dataloader_num_workers: int = dataloader_workers()


def main(argv=None):
    """Runs the script with `argv` (default: sys.argv[1:]); returns the measured metrics as a flat dict."""
    # 1. Arguments.
    parser = HfArgumentParser((ModelArguments, DataArguments, SpeechTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    setup_logging(training_args, "run_text_to_speech")
    output_dir = Path(training_args.output_dir)
    check_output_dir(output_dir, training_args.overwrite_output_dir, None)
    set_seed(training_args.seed)

    # 2. The starting checkpoint (text tower + judge), 3. the data (the checkpoint's image size: run_clip's cache).
    path = ensure_checkpoint(model_args.text_model_name_or_path, data_args)
    judge_path = ensure_checkpoint(model_args.judge_path(), data_args)
    judge = MMModel.from_pretrained(judge_path).eval()
    judge_processor = load_processor(judge_path, judge.config)
    captioner_path = None
    if model_args.captioner_name_or_path.lower() != "none":
        captioner_path = ensure_captioner(model_args.captioner_name_or_path, judge_path, data_args)
    processor = load_processor(path, MMConfig.from_pretrained(path))
    splits, dataset_name, _ = load_splits(data_args, training_args, judge.config.vision_config.image_size)
    if "audio" not in splits["train"].column_names:
        raise ValueError(f"{dataset_name!r} has no audio column to learn speech from; install espeak-ng or pass data.")

    # 4. The model: the checkpoint's text tower, a new speech head.
    speech = dict(
        hidden_size=model_args.hidden_size,
        intermediate_size=4 * model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=4,
    )
    config = MMConfig.from_pretrained(path)
    config.speech_config = MMSpeechConfig(**speech)
    model = MMForTextToSpeech.from_pretrained(path, config=config)
    if not model_args.train_text_model:
        model.freeze_text_model()
    collator = TextToSpeechCollator(processor.tokenizer, model.mel_spectrogram, model.config.speech_config.max_frames)

    # 5. Training.
    trainer = Trainer(model=model, args=training_args, train_dataset=splits["train"], data_collator=collator)
    metrics = train_and_collect_losses(trainer, None)
    model = trainer.model.eval()

    # 6. Measurement on held-out captions, 7. the folder with WAV samples.
    if training_args.should_save:
        held_out = "test" if "test" in splits else "validation"
        rows = list(islice(splits[held_out], model_args.num_eval_prompts))
        measured, clips = evaluate(model, processor, judge, judge_processor, rows, captioner_path)
        metrics.update(measured)
        print(format_report(measured, len(rows), held_out))
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        write_samples(output_dir / "samples", rows, clips)
        (output_dir / "all_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
        logger.info("Saved the model, its processor, WAV samples and all_results.json to %s", output_dir)
    return metrics


@torch.no_grad()
def speak(model, tokenizer, captions, batch_size=16):
    """Generated waveforms (numpy, trimmed to their length) of `captions`, made on the model's device."""
    clips = []
    for start in tqdm(range(0, len(captions), batch_size), desc="Speaking"):
        tokens = tokenizer(captions[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        tokens = {name: tokens[name].to(model.device) for name in ("input_ids", "attention_mask")}
        out = model.generate_speech(**tokens)
        clips += [wave[:length].cpu().numpy() for wave, length in zip(out.waveform, out.waveform_lengths.tolist())]
    return clips


def transcribe(captioner, processor, clips, batch_size=32):
    """Greedy transcriptions of 16 kHz waveforms by an mm speech-to-text captioner (on its own device)."""
    rows = [{"audio": (clip, SAMPLING_RATE)} for clip in clips]
    return generate_captions(captioner, processor, rows, "audio", batch_size, {"num_beams": 1, "do_sample": False})


def word_error_rate(captions, transcripts):
    """Corpus WER (jiwer): word edits over all reference words. An empty transcript loses every word of its caption
    (jiwer refuses empty strings; a one-word placeholder costs the same edits: one substitution, the rest deleted)."""
    return float(jiwer.wer(captions, [text or "<empty>" for text in transcripts]))


@torch.no_grad()
def evaluate(model, processor, judge, judge_processor, rows, captioner_path=None):
    """MCD against the references, audio->text recall by the judge and (with a captioner) WER, for the generated
    clips, the real clips, and noise and silence of the same length (noise as loud as the real clip): the real clips
    are the ceiling the generated ones are read against, noise and silence the floor."""
    captions = [row["caption"] for row in rows]
    keys = [row.get("label", row["caption"]) for row in rows]
    real = [decode_audio(row["audio"], sampling_rate=SAMPLING_RATE)[0] for row in rows]
    rng = np.random.default_rng(0)
    clips = {
        "generated": speak(model, processor.tokenizer, captions),
        "real": real,
        "noise": [rng.normal(0, np.sqrt(np.mean(r**2)) + 1e-4, r.shape).astype(np.float32) for r in real],
        "silence": [np.zeros_like(r) for r in real],
    }
    captioner = None
    if captioner_path:
        captioner = MMForConditionalGeneration.from_pretrained(captioner_path).to(model.device)
        captioner_processor = load_processor(captioner_path, captioner.config)
    judge = judge.to(model.device)

    def log_mel(wave):
        return model.mel_spectrogram(torch.from_numpy(wave)[None].to(model.device))[0].cpu().numpy()

    def features(output):  # get_*_features are projected but not normalised (as CLIP's); recall compares unit vectors
        return torch.nn.functional.normalize(output.pooler_output, dim=-1).cpu()

    text = judge_processor(text=captions, padding=True, return_tensors="pt").to(model.device)
    text_embeds = features(judge.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]))
    references = [log_mel(r) for r in real]
    metrics = {}
    for name, waves in clips.items():
        if name != "real":
            mcd = [mel_cepstral_distortion(log_mel(w), r) for w, r in zip(waves, references)]
            metrics[f"{name} mcd"] = float(np.mean(mcd))
        audio = judge_processor(audio=waves, sampling_rate=SAMPLING_RATE, return_tensors="pt").to(model.device)
        audio_embeds = features(
            judge.get_audio_features(
                input_features=audio["input_features"], audio_attention_mask=audio.get("audio_attention_mask")
            )
        )
        recalls = recall_at_k(audio_embeds, text_embeds, keys, keys, ks=(1, 5))
        metrics.update({f"{name} recall@{k} audio->text": value for k, value in recalls.items()})
        if captioner is not None:
            metrics[f"{name} wer"] = word_error_rate(captions, transcribe(captioner, captioner_processor, waves))
    return metrics, clips


def write_samples(folder, rows, clips, count=8):
    folder.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows[:count]):
        for name in ("generated", "real"):
            sf.write(folder / f"{index:02d}-{name}.wav", clips[name][index], SAMPLING_RATE)
        (folder / f"{index:02d}.txt").write_text(row["caption"] + "\n")


def format_report(metrics, count, split):
    columns = [("MCD (dB)", "mcd"), ("R@1 a->t", "recall@1 audio->text"), ("R@5 a->t", "recall@5 audio->text")]
    if any(key.endswith(" wer") for key in metrics):
        columns.append(("WER", "wer"))
    lines = [
        f"{count} held-out {split} captions; MCD against the espeak-ng reference (DTW-aligned); recall among the "
        f"{count} captions by the contrastive model:",
        f"{'clips':<12}" + "".join(f"{title:>12}" for title, _ in columns),
    ]
    for name in ("generated", "real", "noise", "silence"):
        cells = [metrics.get(f"{name} {key}") for _, key in columns]
        lines.append(f"{name:<12}" + "".join(f"{'-':>12}" if c is None else f"{c:>12.3f}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    main()

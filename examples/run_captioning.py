#!/usr/bin/env python
"""Caption training of an mm model (`MMForConditionalGeneration`): text from images, or from audio (transcribing
or captioning speech), with `Trainer`, evaluated by generation with BLEU and CIDEr-D on a held-out split.

With no arguments it trains the `small` preset on the built-in data (generated and cached on first use) to caption
its images, prints BLEU and CIDEr-D of greedy captions on the held-out test split before and after training, and
writes a Hub-ready folder (weights, processor, remote code with the pipelines, a model card) to
outputs/run_captioning-small:

    python examples/run_captioning.py
    python examples/run_captioning.py --modality audio                        # transcribe the spoken captions
    python examples/run_captioning.py --dataset_name my_photos/ --caption_column text --output_dir outputs/photos
    python examples/run_captioning.py --model_name_or_path outputs/run_clip-small   # decoder on trained towers
    python examples/run_captioning.py --contrastive_loss_weight 1.0           # CoCa: captioning + contrastive loss

It follows run_clip.py (and transformers' examples/pytorch/contrastive-image-text/run_clip.py): `HfArgumentParser`
over three dataclasses, one `main` in numbered steps, and a collator that builds `labels`, so `Trainer` needs no
subclass; the data, output-folder and Hub steps are run_clip.py's own functions. `main(argv)` is importable and
returns the measured metrics.
"""

import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Literal

import datasets
import torch
import transformers
from datasets import IterableDataset
from tqdm.auto import tqdm
from transformers import AutoTokenizer, HfArgumentParser, Trainer, TrainingArguments

from configuration_mm import MMConfig
from modeling_mm import MMForConditionalGeneration
from processing_mm import MMFeatureExtractor, MMImageProcessor, MMProcessor, train_tokenizer
from training_mm.caption_metrics import caption_metrics
from training_mm.data import SAMPLING_RATE, decode_audio
from training_mm.hub import describe_model, write_model_card

# examples/ is not a package: run_clip.py sits next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_clip import (  # noqa: E402
    RUN_ARTIFACTS,
    TOKENIZER_STREAM_SAMPLES,
    check_hub_repo_is_empty,
    check_output_dir,
    image_size_of,
    load_splits,
    push_staged,
    resolve_resume,
)

logger = logging.getLogger("run_captioning")

PIPELINE_TASKS = {"image": "image-to-text", "audio": "automatic-speech-recognition"}


@dataclass
class ModelArguments:
    """Which model to train: a preset from scratch, or an mm checkpoint (a captioner, or a contrastive MMModel whose
    towers a new decoder learns to read)."""

    preset: Literal["tiny", "small", "base"] = field(
        default="small",
        metadata={"help": "Model size when starting from scratch: tiny (tests), small (the CPU default), base."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An mm checkpoint (Hub id or folder) and its processor: a captioner to continue, or an "
                          "MMModel from run_clip.py, whose towers are kept and whose decoder starts untrained."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "A tokenizer (Hub id or folder) for a new model. Default: one trained on the training "
                          "captions with the preset's vocabulary size."},
    )
    contrastive_loss_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of the contrastive loss added to the captioning loss (CoCa). Default: the "
                          "checkpoint's, or 0 (captioning only) for a new model."},
    )


@dataclass
class DataTrainingArguments:
    """Where the captioned images/audio come from, and what to caption from. Default: the built-in scenes."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset, a folder in imagefolder/audiofolder layout with metadata.jsonl/.csv, a "
                          "CSV/JSONL file of paths and captions, or a save_to_disk folder. Default: the built-in data."},
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: `image` if present)."})
    caption_column: str = field(default="caption", metadata={"help": "Caption (target text) column."})
    audio_column: str | None = field(default=None, metadata={"help": "Audio column (default: `audio` if present)."})
    modality: Literal["image", "audio"] | None = field(
        default=None, metadata={"help": "Caption from images or from audio. Default: image if the data has images."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the data (larger than memory); needs --max_steps."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    max_eval_samples: int | None = field(
        default=300, metadata={"help": "Held-out rows captioned for BLEU/CIDEr (generation is the slow part)."}
    )
    num_train_samples: int = field(default=3000, metadata={"help": "Built-in data: training scenes."})
    num_eval_samples: int = field(default=300, metadata={"help": "Built-in data: scenes in each of validation and test."})


@dataclass
class CaptioningTrainingArguments(TrainingArguments):
    """`TrainingArguments` with this script's defaults, sized so that the default run (data generation, training,
    two evaluations, saving) takes a few minutes on 2 CPU cores; every one can be overridden."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into a non-empty --output_dir (never done without this flag)."}
    )
    generation_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest caption written at evaluation. Default: the model's (its text length)."}
    )
    generation_num_beams: int = field(default=1, metadata={"help": "Beams at evaluation (1: greedy)."})
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: float = 0.05
    lr_scheduler_type: str = "cosine"
    num_train_epochs: float = 3.0
    logging_steps: float = 20
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    save_total_limit: int | None = 2
    # The collator reads the raw `image`/`audio`/`caption` columns.
    remove_unused_columns: bool = False
    # Evaluation during training reports the captioning loss; BLEU/CIDEr come from generation, before and after.
    prediction_loss_only: bool = True
    dataloader_num_workers: int = 0


class CaptioningCollator:
    """Rows -> `MMForConditionalGeneration.forward` arguments: the processed image or audio, the caption as
    `input_ids`, and `labels` = the caption's ids with -100 at padding (the model shifts them)."""

    def __init__(self, processor, modality):
        self.processor = processor
        self.modality = modality

    def __call__(self, rows):
        batch = self.processor(
            text=[row["caption"] for row in rows], return_tensors="pt", **media_inputs(rows, self.modality)
        )
        batch = dict(batch)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


def media_inputs(rows, modality):
    """The processor arguments for the image or audio of `rows`."""
    if modality == "image":
        return {"images": [row["image"] for row in rows]}
    audio = [decode_audio(row["audio"], sampling_rate=SAMPLING_RATE)[0] for row in rows]
    return {"audio": audio, "sampling_rate": SAMPLING_RATE}


def main(argv=None):
    """Runs the script with `argv` (default: sys.argv[1:]); returns the measured metrics as a flat dict: `bleu` and
    `cider` after training, `baseline bleu`/`baseline cider` before it, `train_loss`, and `eval_loss` (validation)
    when there was an evaluation."""
    # 1. Arguments.
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    output_dir = Path(training_args.output_dir)
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    check_output_dir(output_dir, training_args.overwrite_output_dir, resume)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # pushed once, at the end, below
    repo_id = training_args.hub_model_id or output_dir.name
    if push_to_hub:
        check_hub_repo_is_empty(repo_id, training_args.hub_token)
    transformers.set_seed(training_args.seed)

    # 2. Data: splits with `caption` and `image` and/or `audio`; captions are measured on test (else validation).
    config = (
        MMConfig.from_pretrained(model_args.model_name_or_path)
        if model_args.model_name_or_path
        else MMConfig.from_preset(model_args.preset)
    )
    splits, dataset_name, dataset_type = load_splits(data_args, training_args, image_size_of(config.vision_config))
    train_split, eval_split = splits["train"], splits.get("validation")
    modality = data_args.modality or ("image" if "image" in train_split.column_names else "audio")
    if modality not in train_split.column_names:
        raise ValueError(
            f"--modality {modality}: {dataset_name!r} has no {modality} column (columns: {train_split.column_names}); "
            f"pass --{modality}_column NAME or choose the other modality."
        )
    caption_split_name = "test" if "test" in splits else "validation"
    if caption_split_name not in splits:
        raise ValueError(
            f"{dataset_name!r} has no test or validation split to measure captions on (splits: {sorted(splits)})."
        )
    if isinstance(train_split, IterableDataset) and training_args.max_steps <= 0:
        raise ValueError("Streamed data has no length, so the run needs --max_steps (optimizer steps) to know when to stop.")
    if eval_split is None and training_args.eval_strategy != "no":
        logger.warning("No validation split: training without evaluation.")
        training_args.eval_strategy = "no"
    if training_args.ddp_find_unused_parameters is None:
        # The towers captions are not made from (and the text tower, without CoCa) get no gradient, which DDP
        # treats as an error unless told.
        training_args.ddp_find_unused_parameters = True
    caption_rows = list(islice(splits[caption_split_name], data_args.max_eval_samples))
    references = reference_captions(caption_rows, splits[caption_split_name])

    # 3. Processor and 4. model.
    processor = build_processor(model_args, config, train_split)
    model = build_model(model_args, processor.tokenizer)
    logger.info("Model: %s", describe_model(model))

    # 5. Captions of the held-out split before training: the baseline the trained numbers are read against.
    generate_kwargs = {"num_beams": training_args.generation_num_beams, "do_sample": False}
    if training_args.generation_max_new_tokens is not None:
        generate_kwargs["max_new_tokens"] = training_args.generation_max_new_tokens
    model.to(training_args.device)
    batch_size = training_args.per_device_eval_batch_size
    baseline_captions = generate_captions(model, processor, caption_rows, modality, batch_size, generate_kwargs)
    baseline = caption_metrics(baseline_captions, references)

    # 6. Training.
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_split,
        eval_dataset=eval_split if training_args.eval_strategy != "no" else None,
        data_collator=CaptioningCollator(processor, modality),
        processing_class=processor,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {"train_loss": train_result.training_loss}
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    if eval_losses:
        metrics["eval_loss"] = eval_losses[-1]

    # 7. Captions after training, next to the baseline.
    captions = generate_captions(trainer.model, processor, caption_rows, modality, batch_size, generate_kwargs)
    after = caption_metrics(captions, references)
    metrics.update(after)
    metrics.update({f"baseline {name}": value for name, value in baseline.items()})
    if training_args.should_log:
        print(format_report(baseline, after, caption_split_name, caption_rows, references, captions, baseline_captions))

    # 8. The Hub-ready folder: weights + remote code (pipelines included), processor, model card.
    check_output_dir(output_dir, training_args.overwrite_output_dir, resume, ignore=RUN_ARTIFACTS)
    trainer.save_model(str(output_dir))
    if training_args.should_save:
        (output_dir / "training_args.bin").unlink(missing_ok=True)  # a Hub folder holds no pickles
        write_model_card(
            output_dir,
            model_name=repo_id.split("/")[-1],
            metrics=after,
            task_type=PIPELINE_TASKS[modality],
            dataset_name=dataset_name,
            dataset_type=dataset_type,
            dataset_split=caption_split_name,
            hyperparameters=hyperparameters(model_args, training_args, trainer, modality),
            model_description=describe_model(trainer.model),
            base_model=model_args.model_name_or_path,
            modalities=("text", modality),
            repo_id=repo_id,
        )
        logger.info("Wrote the model, processor and model card to %s", output_dir)
        if push_to_hub:
            commit = push_staged(output_dir, repo_id, training_args)
            logger.info("Pushed %s to the Hub: %s", output_dir, commit.commit_url)
    return metrics


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, CaptioningTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    known, _ = parser.parse_known_args(argv)
    if known.output_dir is None:
        argv += ["--output_dir", f"outputs/run_captioning-{known.preset}"]
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def setup_logging(training_args):
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO if training_args.should_log else logging.WARNING
    for name in ("run_captioning", "run_clip", "training_mm"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()


# ------------------------------------------------------------------------------------------------ processor & model


def build_processor(model_args, config, train_split):
    if model_args.model_name_or_path:
        return MMProcessor.from_pretrained(model_args.model_name_or_path)
    text_length = config.text_config.max_position_embeddings
    if model_args.tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name)
        tokenizer.model_max_length = min(tokenizer.model_max_length, text_length)
    else:
        captions = (
            (row["caption"] for row in train_split.select_columns(["caption"]).take(TOKENIZER_STREAM_SAMPLES))
            if isinstance(train_split, IterableDataset)
            else train_split["caption"]
        )
        tokenizer = train_tokenizer(captions, vocab_size=config.text_config.vocab_size, model_max_length=text_length)
        logger.info("Trained a tokenizer on the training captions: %d tokens", len(tokenizer))
    image_size = config.vision_config.image_size
    return MMProcessor(
        image_processor=MMImageProcessor(size=image_size, crop_size=image_size),
        feature_extractor=MMFeatureExtractor(
            feature_size=config.audio_config.num_mel_bins, max_length=2 * config.audio_config.max_source_positions
        ),
        tokenizer=tokenizer,
    )


def build_model(model_args, tokenizer):
    """A captioner from the checkpoint (an MMModel checkpoint gives its towers; the decoder starts untrained), or a
    new one from the preset, sized to the tokenizer."""
    overrides = {}
    if model_args.contrastive_loss_weight is not None:
        overrides["contrastive_loss_weight"] = model_args.contrastive_loss_weight
    if model_args.model_name_or_path:
        model = MMForConditionalGeneration.from_pretrained(model_args.model_name_or_path, **overrides)
        if len(tokenizer) > model.config.decoder_config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only "
                f"{model.config.decoder_config.vocab_size}."
            )
        return model
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    text_config = {"vocab_size": len(tokenizer), **{k: v for k, v in special.items() if v is not None}}
    return MMForConditionalGeneration(MMConfig.from_preset(model_args.preset, text_config=text_config, **overrides))


# ------------------------------------------------------------------------------------------------ evaluation


def reference_captions(rows, split):
    """Each row's references: every caption of its scene (rows with the same `label`) in the split, so that a
    correct caption worded another way still matches; without labels, the row's own caption."""
    if "label" not in split.column_names or isinstance(split, IterableDataset):
        return [[row["caption"]] for row in rows]
    by_label = defaultdict(list)
    for label, caption in zip(split["label"], split["caption"]):
        if caption not in by_label[label]:
            by_label[label].append(caption)
    return [by_label[row["label"]] for row in rows]


@torch.no_grad()
def generate_captions(model, processor, rows, modality, batch_size, generate_kwargs):
    """Greedy (or beam) captions of `rows`' images or audio, as strings."""
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    captions = []
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="Captioning", unit="batch"):
            inputs = processor(return_tensors="pt", **media_inputs(rows[start : start + batch_size], modality))
            inputs = {
                key: value.to(parameter.device, parameter.dtype if value.is_floating_point() else value.dtype)
                for key, value in inputs.items()
            }
            sequences = model.generate(**inputs, **generate_kwargs)
            captions += [text.strip() for text in processor.batch_decode(sequences, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return captions


# ------------------------------------------------------------------------------------------------ reporting


def format_report(before, after, split_name, rows, references, captions, baseline_captions, examples=5):
    lines = [
        f"Captions of {len(rows)} held-out {split_name} items, scored against {sum(map(len, references))} references:",
        f"{'':<8}{'untrained':>12}{'trained':>12}",
        f"{'BLEU':<8}{before['bleu']:>12.2f}{after['bleu']:>12.2f}",
        f"{'CIDEr-D':<8}{before['cider']:>12.3f}{after['cider']:>12.3f}",
    ]
    for refs, caption, baseline_caption in list(zip(references, captions, baseline_captions))[:examples]:
        lines.append(f"  reference: {refs[0]!r}\n    trained: {caption!r}\n  untrained: {baseline_caption!r}")
    return "\n".join(lines)


def hyperparameters(model_args, training_args, trainer, modality):
    args = training_args
    return {
        "starting point": model_args.model_name_or_path or f"{model_args.preset} preset, from scratch",
        "captions from": modality,
        "contrastive loss weight (CoCa)": trainer.model.config.contrastive_loss_weight,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "processes": args.world_size,
        "optimizer steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 2),
        "evaluation decoding": f"{'greedy' if args.generation_num_beams == 1 else f'{args.generation_num_beams} beams'}",
        "seed": args.seed,
    }


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Contrastive (CLIP-style) training of an mm model: captions against images and/or spoken audio, with `Trainer`.

With no arguments it trains the `small` preset on the built-in data (generated and cached on first use), prints
retrieval recall@1/5/10 on the held-out split before and after training, and writes a Hub-ready folder
(weights, processor, remote code, a README.md model card with the measured numbers) to outputs/run_clip-small:

    python examples/run_clip.py
    python examples/run_clip.py --dataset_name my_photos/ --caption_column text --output_dir outputs/photos
    python examples/run_clip.py --text_encoder path/to/bert --vision_encoder path/to/vit --dataset_name data.csv
    python examples/run_clip.py --model_name_or_path outputs/run_clip-small --dataset_name my_photos/
    python examples/run_clip.py --resume_from_checkpoint last        # continue a killed run in its output_dir
    python examples/run_clip.py --model_name_or_path ckpt --dataset_name coco/ --do_train false   # evaluate only
    accelerate launch --multi_gpu --num_processes 2 examples/run_clip.py --use_cpu --preset tiny  # docs/distributed.md

It follows transformers' examples/pytorch/contrastive-image-text/run_clip.py: `HfArgumentParser` over three
dataclasses, one `main` in numbered steps, and a collator that sets `return_loss=True`, so `Trainer` needs no
subclass. The steps it shares with run_captioning.py and run_lora.py (output-folder and Hub checks, data splits, a new
processor, the Hub-ready folder) are in training_mm (script_arguments, splits, processors, output_folder, trainer_steps). `main(argv)` is importable and returns the measured metrics.
"""

import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import transformers
from datasets import IterableDataset
from transformers import AutoConfig, AutoImageProcessor, HfArgumentParser, Trainer, TrainingArguments

from configuration_mm import MMConfig
from modeling_mm import MMModel
from training_mm.output_folder import prepare_output, push_output_folder, save_evaluation_results, save_output_folder
from training_mm.processors import image_size_of, load_processor, new_processor
from training_mm.script_arguments import DataArguments, parse_script_args, setup_logging
from training_mm.splits import check_splits, load_splits
from training_mm.trainer_steps import (
    META_CONTROLLER_HELP,
    meta_controller_callback,
    run_before_reporting,
    train_and_collect_losses,
    trainer_hyperparameters,
)
from training_mm.augmentation import CaptionAwareAugmentation
from training_mm.collators import ContrastiveCollator
from training_mm.data_workers import dataloader_workers
from training_mm.hub import describe_model
from training_mm.media_inputs import undecoded
from training_mm.nonfinite_guard import NonFiniteGuardCallback
from training_mm.retrieval import (
    DIRECTIONS,
    MIN_GALLERY,
    PROTOCOL,
    RECALL_AT,
    RetrievalGallery,
    metric_name,
    retrieval_metrics,
)
from training_mm.safe_loading import from_pretrained_safetensors, refuse_pickled_weights

logger = logging.getLogger("run_clip")


@dataclass
class ModelArguments:
    """Which model to train: a preset from scratch, an mm checkpoint, or towers from existing checkpoints."""

    preset: Literal["tiny", "small", "base"] = field(
        default="small",
        metadata={"help": "Model size when starting from scratch: tiny (tests), small (the CPU default), base."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An mm checkpoint (Hub id or folder) to continue training, with its processor."},
    )
    text_encoder: str | None = field(
        default=None,
        metadata={"help": "Text tower from any AutoModel checkpoint or folder (e.g. a BERT), with its tokenizer."},
    )
    vision_encoder: str | None = field(
        default=None, metadata={"help": "Vision tower from any AutoModel checkpoint or folder (e.g. a ViT)."}
    )
    audio_encoder: str | None = field(
        default=None,
        metadata={
            "help": "Audio tower from an AutoModel checkpoint or folder that takes log-mel input_features, e.g. a "
            "Whisper (its encoder) or a Qwen2-Audio encoder."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "A tokenizer (Hub id or folder). Default: the checkpoint's or the text encoder's, else one "
            "trained on the training captions with the preset's vocabulary size."
        },
    )
    loss_type: Literal["clip", "siglip"] | None = field(
        default=None, metadata={"help": "Contrastive loss of a new model (default clip); a checkpoint keeps its own."}
    )
    hard_negative_beta: float | None = field(
        default=None,
        metadata={
            "help": "Hard negatives: weight each in-batch negative by softmax(beta * logit) over its row's negatives "
            "(hardness-weighted InfoNCE); 0 turns it off. Default: the checkpoint's, or 0 for a new model."
        },
    )
    meta_controller: bool = field(default=False, metadata={"help": META_CONTROLLER_HELP})


@dataclass
class DataTrainingArguments(DataArguments):
    """Where the captioned images/audio come from (default: the built-in synthetic scenes), and where they go."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into a non-empty --output_dir (never done without this flag)."}
    )
    augment: bool = field(
        default=False,
        metadata={
            "help": "Train-time augmentation of the training images (training_mm.augmentation): flips that mirror "
            "left/right in the caption, and crops that keep every shape; evaluation splits are left as they are."
        },
    )
    min_retrieval_gallery: int = field(
        default=MIN_GALLERY,
        metadata={
            "help": "Report (and publish in the model card) retrieval recall only on a held-out split of at least this "
            "many distinct items (labels, else captions); below it, the log and the card say it was not measured."
        },
    )


# `TrainingArguments` defaults of this script, chosen by measurement for the default run (the small preset on
# the built-in data, 2 CPU cores): ~0.6 s per step of 64 pairs with audio, so 10 epochs (470 steps) train in ~5
# minutes, and the whole run (cold data generation ~35 s, baseline, training with an evaluation per epoch, final
# retrieval, saving) stays under 10. It takes every held-out retrieval direction from ~0.01 to 0.3-0.5 recall@1 and
# over 0.9 recall@10. Every one can be overridden on the command line.
TRAINING_DEFAULTS = dict(
    # Train, then measure (`--do_train false`: measure the checkpoint only, as transformers' examples' --do_eval).
    do_train=True,
    # 64 pairs per process: enough in-batch negatives to learn from, small enough for ~0.6 s steps on a CPU.
    per_device_train_batch_size=64,
    per_device_eval_batch_size=64,
    # From scratch, small towers: a high rate with a short warmup and cosine decay to zero over the 470 steps. Warmup
    # 0.1, weight decay 0.2, learning rate 5e-4 and open_clip's AdamW settings measured no better on little data
    # (benchmarks/bench_small_data.py, README "Learning from little data").
    learning_rate=1e-3,
    weight_decay=0.1,
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    num_train_epochs=10,
    logging_steps=20,
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=2,
    # The collator reads the raw `image`/`caption`/`audio`/`label` columns.
    remove_unused_columns=False,
    # Evaluation reports the contrastive loss only; retrieval is measured separately over the whole split.
    prediction_loss_only=True,
    report_to="none",
    # Images and audio are decoded and processed by the collator, in these worker processes: on a GPU machine the
    # cores left over (so the data keeps up with the GPU), on a CPU-only one none (training already uses every core).
    dataloader_num_workers=dataloader_workers(),
    dataloader_persistent_workers=dataloader_workers() > 0,
    # Pinned memory only speeds up copies to a GPU; without one, torch warns about it at every epoch.
    dataloader_pin_memory=torch.cuda.is_available(),
)

# `CaptionAwareAugmentation` arguments of --augment, chosen by measurement (benchmarks/bench_small_data.py).
AUGMENT_DEFAULTS = dict(flip_probability=0.5, crop_probability=0.5, crop_scale=(0.6, 1.0))


def main(argv=None):
    """Runs the script with `argv` (default: sys.argv[1:]); returns the measured metrics as a flat dict:
    `recall@k query->gallery` after training, `baseline recall@k query->gallery` before it (both only on a held-out
    split of at least --min_retrieval_gallery distinct items), `train_loss`, and `eval_loss` (validation) when there
    was an evaluation."""
    # 1. Arguments.
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args, "run_clip")
    output = prepare_output(training_args, data_args.overwrite_output_dir)  # fails here, not after training
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size == 1:
        raise RuntimeError(
            f"{launched} processes were launched, but each would train alone (TrainingArguments found no devices to "
            "share): on CPUs, pass --use_cpu, e.g. `accelerate launch --multi_gpu --num_processes 2 "
            "examples/run_clip.py --use_cpu ...` (see docs/distributed.md)."
        )
    transformers.set_seed(training_args.seed)

    # 2. Data: splits with `caption` and `image` and/or `audio` (and `label` for the built-in data).
    towers = tower_configs(model_args)
    splits, dataset_name, dataset_type = load_splits(data_args, training_args, image_size_of(towers["vision"]))
    # Files stay undecoded until the collator reads them (in the DataLoader's workers), at the size the model needs.
    splits = {split_name: undecoded(split) for split_name, split in splits.items()}
    train_split, eval_split = splits["train"], splits.get("validation")
    retrieval_split_name = check_splits(splits, dataset_name, training_args, measured="retrieval")
    modalities = tuple(name for name in ("image", "audio") if name in train_split.column_names)
    if training_args.ddp_find_unused_parameters is None:
        # The tower of an absent modality gets no gradient, which DDP treats as an error unless told; with every
        # modality present, each of our parameters gets one, and DDP can skip the search for unused ones.
        external = model_args.text_encoder or model_args.vision_encoder or model_args.audio_encoder
        training_args.ddp_find_unused_parameters = len(modalities) < 2 or bool(external)

    # 3. Processor: the checkpoint's, or an image processor, feature extractor and tokenizer sized for the towers.
    processor = build_processor(model_args, towers, train_split)

    # 4. Model.
    model = build_model(model_args, processor.tokenizer)
    logger.info("Model: %s", describe_model(model))

    # 5. Retrieval on the held-out split before training: the baseline the trained numbers are read against (with
    # --do_train false, the evaluation itself); only on a gallery large enough for recall@k to mean something.
    retrieval_split = splits[retrieval_split_name]
    gallery = RetrievalGallery.of(retrieval_split, retrieval_split_name, data_args.min_retrieval_gallery)
    (logger.info if gallery.measured else logger.warning)(gallery.note)
    model.to(training_args.device)
    measure = partial(
        retrieval_metrics, processor=processor, dataset=retrieval_split, modalities=modalities,
        batch_size=training_args.per_device_eval_batch_size,
    )  # fmt: skip
    if not training_args.do_train:
        metrics = measure(model, desc="Retrieval") if gallery.measured else {}
        if training_args.should_log:
            print(format_recall_table(None, metrics, gallery) if gallery.measured else gallery.note)
        save_evaluation_results(training_args, metrics)
        return metrics
    baseline = measure(model, desc="Retrieval before") if gallery.measured else {}

    # 6. Training, stopped at the first non-finite loss or gradient (and before saving non-finite weights).
    callbacks = []
    if model_args.meta_controller:
        pretrained = any(
            (model_args.model_name_or_path, model_args.text_encoder, model_args.vision_encoder, model_args.audio_encoder)
        )
        callbacks.append(meta_controller_callback(pretrained))
    if data_args.augment:
        train_split = augmented(train_split, modalities)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_split,
        eval_dataset=eval_split if training_args.eval_strategy != "no" else None,
        data_collator=ContrastiveCollator(processor, modalities),
        processing_class=processor,
        callbacks=callbacks,
    )
    for callback in callbacks:
        run_before_reporting(trainer, callback)  # so `--report_to tensorboard` also plots the meta_* values
    # Last, so that on a NaN the meta-controller's own guard (which names its multiplier) speaks first.
    trainer.add_callback(NonFiniteGuardCallback())
    global_batch = training_args.per_device_train_batch_size * training_args.world_size
    logger.info(
        "Training on %d process(es): each step's contrastive loss compares every item with all %d items of the global "
        "batch (%d per process x %d; embeddings gathered across processes).",
        training_args.world_size, global_batch, training_args.per_device_train_batch_size, training_args.world_size,
    )
    metrics = train_and_collect_losses(trainer, output.resume)

    # 7. Retrieval after training, next to the baseline.
    after = measure(trainer.model, desc="Retrieval after") if gallery.measured else {}
    metrics.update(after)
    metrics.update({f"baseline {name}": value for name, value in baseline.items()})
    if training_args.should_log:
        print(format_recall_table(baseline, after, gallery) if gallery.measured else gallery.note)

    # 8. The Hub-ready folder: weights + remote code, processor, model card with the numbers just measured.
    save_output_folder(
        trainer,
        output,
        data_args.overwrite_output_dir,
        metrics=after,
        task_type="zero-shot-image-classification" if "image" in modalities else "zero-shot-audio-classification",
        dataset_name=dataset_name,
        dataset_type=dataset_type,
        dataset_split=retrieval_split_name,
        evaluation_note=gallery.note,
        evaluation_protocol=PROTOCOL,
        hyperparameters=hyperparameters(model_args, trainer, modalities),
        base_model=model_args.model_name_or_path,
        modalities=("text", *modalities),
    )
    push_output_folder(output, training_args)
    return metrics


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    model_args, data_args, training_args = parse_script_args(parser, argv, default_output_dir=default_output_dir)
    encoders = (model_args.text_encoder, model_args.vision_encoder, model_args.audio_encoder)
    if model_args.model_name_or_path and any(encoders):
        raise ValueError(
            "--model_name_or_path continues an mm checkpoint, which has its own towers; drop --text_encoder/"
            "--vision_encoder/--audio_encoder, or drop --model_name_or_path to compose a new model from them."
        )
    if not training_args.do_train and not (model_args.model_name_or_path or any(encoders)):
        raise ValueError(
            "--do_train false evaluates a trained model: pass --model_name_or_path (an mm checkpoint) or the "
            "--*_encoder towers to score."
        )
    if model_args.hard_negative_beta is not None and model_args.hard_negative_beta < 0:
        raise ValueError(f"--hard_negative_beta must be >= 0 (0: off), got {model_args.hard_negative_beta}.")
    return model_args, data_args, training_args


def default_output_dir(known):
    """outputs/run_clip-<preset> for a training run, outputs/run_clip-eval-<checkpoint name> for an evaluation."""
    if known.do_train:
        return f"outputs/run_clip-{known.preset}"
    return f"outputs/run_clip-eval-{Path(known.model_name_or_path or 'encoders').name}"


# ------------------------------------------------------------------------------------------------ processor & model


def augmented(train_split, modalities):
    """The training split with `CaptionAwareAugmentation` applied as rows are read (lazily, in the loader's workers)."""
    if "image" not in modalities:
        raise ValueError("--augment augments images, and this training data has none; drop --augment.")
    augmentation = CaptionAwareAugmentation(**AUGMENT_DEFAULTS, audio_column="audio" if "audio" in modalities else None)
    if isinstance(train_split, IterableDataset):
        return train_split.map(augmentation, batched=True, batch_size=1)
    return train_split.with_transform(augmentation)


def tower_configs(model_args):
    """The config of each tower the model will have: from the named encoder, the checkpoint, or the preset. A checkpoint
    or encoder whose weights are pickled is refused here, before the data is loaded."""
    if model_args.model_name_or_path:
        refuse_pickled_weights(model_args.model_name_or_path, MMModel)
        config = MMConfig.from_pretrained(model_args.model_name_or_path)
    else:
        config = MMConfig.from_preset(model_args.preset)
    towers = {"text": config.text_config, "vision": config.vision_config, "audio": config.audio_config}
    for name in towers:
        path = getattr(model_args, f"{name}_encoder")
        if path is not None:
            refuse_pickled_weights(path)
            towers[name] = AutoConfig.from_pretrained(path, trust_remote_code=False)
    return towers


def build_processor(model_args, towers, train_split):
    """The checkpoint's processor, or a new one sized for the towers, with the text encoder's tokenizer (else one
    trained on the captions) and, for a pretrained vision tower, the normalisation it was trained with."""
    if model_args.model_name_or_path:
        return load_processor(model_args.model_name_or_path, tokenizer_name=model_args.tokenizer_name)
    image_kwargs = {}
    if model_args.vision_encoder:
        try:
            reference = AutoImageProcessor.from_pretrained(model_args.vision_encoder, trust_remote_code=False)
            image_kwargs = {"image_mean": reference.image_mean, "image_std": reference.image_std}
        except (OSError, ValueError, AttributeError):
            logger.warning("%s has no image processor; normalising with CLIP's mean/std.", model_args.vision_encoder)
    tokenizer_source = model_args.tokenizer_name or model_args.text_encoder
    return new_processor(towers, train_split, tokenizer_source, image_kwargs)


def build_model(model_args, tokenizer):
    if model_args.model_name_or_path:
        model = from_pretrained_safetensors(MMModel, model_args.model_name_or_path)
        if model_args.loss_type and model_args.loss_type != model.config.loss_type:
            raise ValueError(
                f"{model_args.model_name_or_path} was trained with loss_type={model.config.loss_type!r}; continuing it "
                f"with --loss_type {model_args.loss_type} is not supported. Drop --loss_type or start a new model."
            )
        if model_args.hard_negative_beta is not None:
            model.config.hard_negative_beta = model_args.hard_negative_beta
        vocab_size = model.config.text_config.vocab_size
        if len(tokenizer) > vocab_size:
            raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {vocab_size}.")
        return model

    overrides = {"loss_type": model_args.loss_type or "clip", "hard_negative_beta": model_args.hard_negative_beta or 0}
    if not model_args.text_encoder:
        special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
        overrides["text_config"] = {"vocab_size": len(tokenizer), **{k: v for k, v in special.items() if v is not None}}
    config = MMConfig.from_preset(model_args.preset, **overrides)
    encoders = {f"{name}_encoder": getattr(model_args, f"{name}_encoder") for name in ("text", "vision", "audio")}
    if any(encoders.values()):
        return MMModel.from_encoders(**encoders, config=config)
    return MMModel(config)


# ------------------------------------------------------------------------------------------------ reporting & export


def format_recall_table(before, after, gallery):
    """The retrieval figures of each direction: recall@1/5/10 (before -> after training, or as measured when
    `before` is None), mAP and nDCG@10."""
    width = 18 if before is not None else 10
    lines = [
        gallery.note,
        "recall@k: before -> after training" if before is not None else "Retrieval of the checkpoint",
        f"{'':<13}" + "".join(f"{f'recall@{k}':>{width}}" for k in RECALL_AT) + f"{'mAP':>8}{'nDCG@10':>9}",
    ]
    for query, gallery_modality in DIRECTIONS:
        direction = f"{query}->{gallery_modality}"
        if metric_name(1, query, gallery_modality) not in after:
            continue
        cells = [
            (f"{before[name]:.3f} -> " if before is not None else "") + f"{after[name]:.3f}"
            for name in (metric_name(k, query, gallery_modality) for k in RECALL_AT)
        ]
        lines.append(
            f"{direction:<13}" + "".join(f"{cell:>{width}}" for cell in cells)
            + f"{after[f'mAP {direction}']:>8.3f}{after[f'nDCG@10 {direction}']:>9.3f}"
        )
    return "\n".join(lines)


def hyperparameters(model_args, trainer, modalities):
    args = trainer.args
    values = {
        "starting point": model_args.model_name_or_path
        or ", ".join(
            f"{name} tower from {getattr(model_args, f'{name}_encoder')}"
            for name in ("text", "vision", "audio")
            if getattr(model_args, f"{name}_encoder")
        )
        or f"{model_args.preset} preset, from scratch",
        "modalities": ", ".join(("text", *modalities)),
        "loss": trainer.model.config.loss_type,
        "hard-negative beta": trainer.model.config.hard_negative_beta,
        "contrastive batch (global)": args.per_device_train_batch_size * args.world_size,
        **trainer_hyperparameters(trainer),
    }
    if model_args.meta_controller:
        values["learning-rate meta-controller"] = "on"
    return values


if __name__ == "__main__":
    main()

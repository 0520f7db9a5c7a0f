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
    accelerate launch --multi_gpu --num_processes 2 examples/run_clip.py --use_cpu --preset tiny  # docs/distributed.md

It follows transformers' examples/pytorch/contrastive-image-text/run_clip.py: `HfArgumentParser` over three
dataclasses, one `main` in numbered steps, and a collator that sets `return_loss=True`, so `Trainer` needs no
subclass. `main(argv)` is importable and returns the measured metrics.
"""

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import datasets
import torch
import transformers
from datasets import IterableDataset
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from configuration_mm import MMConfig
from modeling_mm import MMModel
from processing_mm import MMFeatureExtractor, MMImageProcessor, MMProcessor, train_tokenizer
from training_mm.collators import ContrastiveCollator
from training_mm.data import filter_unreadable, load_user_dataset
from training_mm.hub import SYNTHETIC_DATASET, describe_model, push_folder_to_hub, write_model_card
from training_mm.retrieval import DIRECTIONS, RECALL_AT, metric_name, retrieval_metrics
from training_mm.synthetic_data import build_synthetic_dataset

logger = logging.getLogger("run_clip")

# Captions read to train a tokenizer when the training data is streamed (a stream has no length to read to the end).
TOKENIZER_STREAM_SAMPLES = 100_000
# What the trainer writes into output_dir on its way; anything else there belongs to someone else.
RUN_ARTIFACTS = ("checkpoint-*", "runs")


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
        metadata={"help": "Audio tower from an AutoModel checkpoint or folder that takes log-mel input_features."},
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
    meta_controller: bool = field(
        default=False,
        metadata={"help": "Scale the learning rate with training_mm.meta_controller.MetaControllerCallback."},
    )


@dataclass
class DataTrainingArguments:
    """Where the captioned images/audio come from (default: the built-in synthetic scenes), and where they go."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset, a folder in imagefolder/audiofolder layout with metadata.jsonl/.csv, a CSV/JSONL "
            "file of paths and captions, or a save_to_disk folder. Default: the built-in data."
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: `image` if present)."})
    caption_column: str = field(default="caption", metadata={"help": "Caption column."})
    audio_column: str | None = field(default=None, metadata={"help": "Audio column (default: `audio` if present)."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the data (larger than memory). Needs --max_steps, and --save_strategy steps with "
            "--save_steps N for checkpoints along the way (an epoch of a stream may never end)."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    num_train_samples: int = field(default=3000, metadata={"help": "Built-in data: training scenes."})
    num_eval_samples: int = field(
        default=300, metadata={"help": "Built-in data: scenes in each of validation and test."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into a non-empty --output_dir (never done without this flag)."}
    )


# `TrainingArguments` defaults of this script, chosen by measurement for the default run (the small preset on
# the built-in data, 2 CPU cores): ~0.6 s per step of 64 pairs with audio, so 10 epochs (470 steps) train in ~5
# minutes, and the whole run (cold data generation ~35 s, baseline, training with an evaluation per epoch, final
# retrieval, saving) stays under 10. It takes every held-out retrieval direction from ~0.01 to 0.3-0.5 recall@1 and
# over 0.9 recall@10. Every one can be overridden on the command line.
TRAINING_DEFAULTS = dict(
    # 64 pairs per process: enough in-batch negatives to learn from, small enough for ~0.6 s steps on a CPU.
    per_device_train_batch_size=64,
    per_device_eval_batch_size=64,
    # From scratch, small towers: a high rate with a short warmup and cosine decay to zero over the 470 steps.
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
    dataloader_num_workers=0,
    # Pinned memory only speeds up copies to a GPU; without one, torch warns about it at every epoch.
    dataloader_pin_memory=torch.cuda.is_available(),
)


def main(argv=None):
    """Runs the script with `argv` (default: sys.argv[1:]); returns the measured metrics as a flat dict:
    `recall@k query->gallery` after training, `baseline recall@k query->gallery` before it, `train_loss`, and
    `eval_loss` (validation) when there was an evaluation."""
    # 1. Arguments.
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    output_dir = Path(training_args.output_dir)
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    training_args.resume_from_checkpoint = resume  # the meta-controller restores its state from there
    check_output_dir(output_dir, data_args.overwrite_output_dir, resume)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # pushed once, at the end, below
    repo_id = training_args.hub_model_id or output_dir.name
    if push_to_hub:
        check_hub_repo_is_empty(repo_id, training_args.hub_token)
    # Evaluation computes the loss even without `labels` (a model with a `labels` argument would otherwise get
    # none, see Trainer.prediction_step); the collator passes labels as a model input.
    training_args.label_names = []
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
    train_split, eval_split = splits["train"], splits.get("validation")
    retrieval_split_name = "test" if "test" in splits else "validation"
    if retrieval_split_name not in splits:
        raise ValueError(
            f"{dataset_name!r} has no test or validation split to measure retrieval on (splits: {sorted(splits)}); "
            "give it more than one row or a validation/test split."
        )
    modalities = tuple(name for name in ("image", "audio") if name in train_split.column_names)
    if training_args.ddp_find_unused_parameters is None:
        # The tower of an absent modality gets no gradient, which DDP treats as an error unless told; with every
        # modality present, each of our parameters gets one, and DDP can skip the search for unused ones.
        external = model_args.text_encoder or model_args.vision_encoder or model_args.audio_encoder
        training_args.ddp_find_unused_parameters = len(modalities) < 2 or bool(external)
    if isinstance(train_split, IterableDataset) and training_args.max_steps <= 0:
        raise ValueError("Streamed data has no length: pass --max_steps (optimizer steps) to say when to stop.")
    if eval_split is None and training_args.eval_strategy != "no":
        logger.warning("No validation split: training without evaluation.")
        training_args.eval_strategy = "no"

    # 3. Processor: the checkpoint's, or an image processor, feature extractor and tokenizer sized for the towers.
    processor = build_processor(model_args, towers, train_split)

    # 4. Model.
    model = build_model(model_args, processor.tokenizer)
    logger.info("Model: %s", describe_model(model))

    # 5. Retrieval on the held-out split before training: the baseline the trained numbers are read against.
    retrieval_split = splits[retrieval_split_name]
    model.to(training_args.device)
    baseline = retrieval_metrics(
        model, processor, retrieval_split, modalities, training_args.per_device_eval_batch_size, desc="Retrieval before"
    )

    # 6. Training.
    callbacks = []
    if model_args.meta_controller:
        from training_mm.meta_controller import MetaControllerCallback

        callbacks.append(MetaControllerCallback())
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_split,
        eval_dataset=eval_split if training_args.eval_strategy != "no" else None,
        data_collator=ContrastiveCollator(processor, modalities),
        processing_class=processor,
        callbacks=callbacks,
    )
    global_batch = training_args.per_device_train_batch_size * training_args.world_size
    logger.info(
        "Training on %d process(es): each step's contrastive loss compares every item with all %d items of the global "
        "batch (%d per process x %d; embeddings gathered across processes).",
        training_args.world_size, global_batch, training_args.per_device_train_batch_size, training_args.world_size,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {"train_loss": train_result.training_loss}
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    if eval_losses:
        metrics["eval_loss"] = eval_losses[-1]

    # 7. Retrieval after training, next to the baseline.
    after = retrieval_metrics(
        trainer.model, processor, retrieval_split, modalities, training_args.per_device_eval_batch_size,
        desc="Retrieval after",
    )
    metrics.update(after)
    metrics.update({f"baseline {name}": value for name, value in baseline.items()})
    if training_args.should_log:
        print(format_recall_table(baseline, after, retrieval_split_name, retrieval_split))

    # 8. The Hub-ready folder: weights + remote code, processor, model card with the numbers just measured.
    check_output_dir(output_dir, data_args.overwrite_output_dir, resume, ignore=RUN_ARTIFACTS)
    trainer.accelerator.wait_for_everyone()  # every process checked before any writes
    trainer.save_model(str(output_dir))  # every process: FSDP/DeepSpeed gather the weights here
    if training_args.should_save:
        # Trainer pickles its arguments next to the weights; a Hub folder holds no pickles.
        (output_dir / "training_args.bin").unlink(missing_ok=True)
        write_model_card(
            output_dir,
            model_name=repo_id.split("/")[-1],
            metrics=after,
            task_type="zero-shot-image-classification" if "image" in modalities else "zero-shot-audio-classification",
            dataset_name=dataset_name,
            dataset_type=dataset_type,
            dataset_split=retrieval_split_name,
            hyperparameters=hyperparameters(model_args, training_args, trainer, modalities),
            model_description=describe_model(trainer.model),
            base_model=model_args.model_name_or_path,
            modalities=("text", *modalities),
            repo_id=repo_id,
        )
        logger.info("Wrote the model, processor and model card to %s", output_dir)
        if push_to_hub:
            commit = push_staged(output_dir, repo_id, training_args)
            logger.info("Pushed %s to the Hub: %s", output_dir, commit.commit_url)
    return metrics


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    argv = list(sys.argv[1:] if argv is None else argv)
    known, _ = parser.parse_known_args(argv)
    if known.output_dir is None:
        argv += ["--output_dir", f"outputs/run_clip-{known.preset}"]
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    encoders = (model_args.text_encoder, model_args.vision_encoder, model_args.audio_encoder)
    if model_args.model_name_or_path and any(encoders):
        raise ValueError(
            "--model_name_or_path continues an mm checkpoint, which has its own towers; drop --text_encoder/"
            "--vision_encoder/--audio_encoder, or drop --model_name_or_path to compose a new model from them."
        )
    return model_args, data_args, training_args


def setup_logging(training_args):
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO if training_args.should_log else logging.WARNING
    for name in ("run_clip", "training_mm"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()


def resolve_resume(value, output_dir):
    """`--resume_from_checkpoint last` means the newest checkpoint in output_dir; a path must exist."""
    if value is None:
        return None
    if value == "last":
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            raise FileNotFoundError(f"--resume_from_checkpoint last: no checkpoint-* folder in {output_dir} to resume.")
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such folder (or pass `last`).")
    return value


def check_output_dir(output_dir, overwrite, resume, ignore=()):
    """Refuses to write into a non-empty folder unless asked to (or continuing the run that is there).

    Checked before training and again before writing; the second time, what this run wrote itself (`ignore`:
    checkpoints, TensorBoard logs) does not count.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file; choose a folder.")
    if overwrite or resume or not output_dir.is_dir():
        return
    entries = sorted(p.name for p in output_dir.iterdir() if not any(p.match(pattern) for pattern in ignore))
    if entries:
        checkpoint = get_last_checkpoint(str(output_dir))
        hint = f" or --resume_from_checkpoint last to continue from {checkpoint}," if checkpoint else ""
        raise FileExistsError(
            f"Output folder {output_dir} is not empty ({len(entries)} entries: {', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}). Pass --overwrite_output_dir to write into it anyway,{hint} "
            "or choose another --output_dir."
        )


def check_hub_repo_is_empty(repo_id, token):
    """Fails before training, not after, when --push_to_hub would be refused (see push_folder_to_hub)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(token=token)
    if "/" not in repo_id:
        repo_id = f"{api.whoami()['name']}/{repo_id}"
    try:
        files = [path for path in api.list_repo_files(repo_id) if path != ".gitattributes"]
    except RepositoryNotFoundError:
        return
    if files:
        raise FileExistsError(
            f"--push_to_hub: the Hub repo {repo_id} already has {len(files)} file(s), and this script never overwrites "
            "a repo. Choose another --hub_model_id, or push the finished folder yourself with "
            "training_mm.hub.push_folder_to_hub(folder, repo_id, overwrite=True)."
        )


# ------------------------------------------------------------------------------------------------ data


def load_splits(data_args, training_args, image_size):
    """Returns (splits, readable dataset name, dataset id for the model card)."""
    if data_args.dataset_name is None:
        # One process builds (or loads) the cached data while the others wait, then they all load the cache.
        with training_args.main_process_first(desc="building the built-in data"):
            splits = build_synthetic_dataset(
                num_train=data_args.num_train_samples,
                num_validation=data_args.num_eval_samples,
                num_test=data_args.num_eval_samples,
                image_size=image_size,
            )
        name, dataset_type = "mm built-in synthetic scenes", SYNTHETIC_DATASET
    else:
        with training_args.main_process_first(desc="loading the dataset"):
            splits = load_user_dataset(
                data_args.dataset_name,
                image_column=data_args.image_column,
                caption_column=data_args.caption_column,
                audio_column=data_args.audio_column,
                streaming=data_args.streaming,
            )
            # Rows whose image/audio cannot be decoded or whose caption is empty are logged with a count and dropped.
            splits = {split_name: filter_unreadable(split) for split_name, split in splits.items()}
        name = dataset_type = data_args.dataset_name
    splits = dict(splits)
    if data_args.max_train_samples is not None:
        train = splits["train"]
        splits["train"] = (
            train.take(data_args.max_train_samples)
            if isinstance(train, IterableDataset)
            else train.select(range(min(data_args.max_train_samples, len(train))))
        )
    for split_name, split in splits.items():
        size = "streamed" if isinstance(split, IterableDataset) else f"{len(split)} rows"
        logger.info("Split %s: %s, columns %s", split_name, size, split.column_names)
    return splits, name, dataset_type


# ------------------------------------------------------------------------------------------------ processor & model


def tower_configs(model_args):
    """The config of each tower the model will have: from the named encoder, the checkpoint, or the preset."""
    if model_args.model_name_or_path:
        config = MMConfig.from_pretrained(model_args.model_name_or_path)
    else:
        config = MMConfig.from_preset(model_args.preset)
    towers = {"text": config.text_config, "vision": config.vision_config, "audio": config.audio_config}
    for name in towers:
        path = getattr(model_args, f"{name}_encoder")
        if path is not None:
            towers[name] = AutoConfig.from_pretrained(path)
    return towers


def image_size_of(vision_config):
    size = getattr(vision_config, "image_size", 224)
    return size if isinstance(size, int) else max(size)


def build_processor(model_args, towers, train_split):
    checkpoint = model_args.model_name_or_path
    if checkpoint:
        # Built from this package's classes: a checkpoint's own copies of them (remote code) are never executed.
        return MMProcessor(
            image_processor=MMImageProcessor.from_pretrained(checkpoint),
            feature_extractor=MMFeatureExtractor.from_pretrained(checkpoint),
            tokenizer=AutoTokenizer.from_pretrained(model_args.tokenizer_name or checkpoint),
        )

    max_text_length = getattr(towers["text"], "max_position_embeddings", 512)
    tokenizer_source = model_args.tokenizer_name or model_args.text_encoder
    if tokenizer_source:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        # Longer texts would index past the text tower's position table.
        tokenizer.model_max_length = min(tokenizer.model_max_length, max_text_length)
    else:
        captions = (
            (row["caption"] for row in train_split.select_columns(["caption"]).take(TOKENIZER_STREAM_SAMPLES))
            if isinstance(train_split, IterableDataset)
            else train_split["caption"]
        )
        # Deterministic for the same captions, so every process of a distributed run trains the same tokenizer.
        tokenizer = train_tokenizer(
            captions, vocab_size=towers["text"].vocab_size, model_max_length=max_text_length
        )
        logger.info("Trained a tokenizer on the training captions: %d tokens", len(tokenizer))

    image_size = image_size_of(towers["vision"])
    image_kwargs = {}
    if model_args.vision_encoder:
        # A pretrained vision tower expects the normalisation it was trained with.
        try:
            reference = AutoImageProcessor.from_pretrained(model_args.vision_encoder)
            image_kwargs = {"image_mean": reference.image_mean, "image_std": reference.image_std}
        except (OSError, ValueError, AttributeError):
            logger.warning("%s has no image processor; normalising with CLIP's mean/std.", model_args.vision_encoder)
    audio = towers["audio"]
    return MMProcessor(
        image_processor=MMImageProcessor(size=image_size, crop_size=image_size, **image_kwargs),
        feature_extractor=MMFeatureExtractor(
            feature_size=getattr(audio, "num_mel_bins", 80),
            max_length=2 * getattr(audio, "max_source_positions", 500),
        ),
        tokenizer=tokenizer,
    )


def build_model(model_args, tokenizer):
    if model_args.model_name_or_path:
        model = MMModel.from_pretrained(model_args.model_name_or_path)
        if model_args.loss_type and model_args.loss_type != model.config.loss_type:
            raise ValueError(
                f"{model_args.model_name_or_path} was trained with loss_type={model.config.loss_type!r}; continuing it "
                f"with --loss_type {model_args.loss_type} is not supported. Drop --loss_type or start a new model."
            )
        vocab_size = model.config.text_config.vocab_size
        if len(tokenizer) > vocab_size:
            raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {vocab_size}.")
        return model

    overrides = {"loss_type": model_args.loss_type or "clip"}
    if not model_args.text_encoder:
        special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
        overrides["text_config"] = {"vocab_size": len(tokenizer), **{k: v for k, v in special.items() if v is not None}}
    config = MMConfig.from_preset(model_args.preset, **overrides)
    encoders = {f"{name}_encoder": getattr(model_args, f"{name}_encoder") for name in ("text", "vision", "audio")}
    if any(encoders.values()):
        return MMModel.from_encoders(**encoders, config=config)
    return MMModel(config)


# ------------------------------------------------------------------------------------------------ reporting & export


def format_recall_table(before, after, split_name, split):
    size = f"{len(split)} items" if hasattr(split, "__len__") else "streamed"
    lines = [
        f"Retrieval on the held-out {split_name} split ({size}); a hit is a top-k item with the query's label",
        "(its caption where there are no labels).",
        "recall@k: before -> after training",
        f"{'':<13}" + "".join(f"{f'recall@{k}':>18}" for k in RECALL_AT),
    ]
    for query, gallery in DIRECTIONS:
        if metric_name(1, query, gallery) not in after:
            continue
        cells = [
            f"{before[metric_name(k, query, gallery)]:.3f} -> {after[metric_name(k, query, gallery)]:.3f}"
            for k in RECALL_AT
        ]
        lines.append(f"{query + '->' + gallery:<13}" + "".join(f"{cell:>18}" for cell in cells))
    return "\n".join(lines)


def hyperparameters(model_args, training_args, trainer, modalities):
    args = training_args
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
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "processes": args.world_size,
        "contrastive batch (global)": args.per_device_train_batch_size * args.world_size,
        "optimizer steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 2),
        "seed": args.seed,
    }
    if model_args.meta_controller:
        values["learning-rate meta-controller"] = "on"
    return values


def push_staged(output_dir, repo_id, training_args):
    """Pushes the folder without the run's checkpoints and logs, which stay local."""
    with tempfile.TemporaryDirectory() as staging:
        staged = Path(staging) / "model"
        shutil.copytree(output_dir, staged, ignore=shutil.ignore_patterns(*RUN_ARTIFACTS))
        return push_folder_to_hub(
            staged, repo_id, token=training_args.hub_token, private=bool(training_args.hub_private_repo)
        )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Classification, multi-label tagging and regression from any mix of text, image and audio (`MMForClassification`),
with `Trainer`.

With no arguments it trains the `small` preset on the built-in fusion tasks (generated and cached on first use):
`match` (does the caption, written or spoken, describe the image? negatives differ in one colour), `colours` (which
colours the image or the caption show, multi-label) and `count` (objects in the image, regression), one head each on
one fused representation. It prints the held-out metrics with every subset of the modalities (the ablation table) and
writes a Hub-ready folder (weights, processor, remote code, a model card with the numbers) to
outputs/run_classification-small:

    python examples/run_classification.py
    python examples/run_classification.py --fusion_type cross --modality_dropout 0.3
    python examples/run_classification.py --model_name_or_path outputs/run_clip-small --freeze_towers_steps 100
    python examples/run_classification.py --dataset_name memes/ --label_column hateful --output_dir outputs/memes
    python examples/run_classification.py --dataset_name data.csv --label_column tags stars --problem_type ...

User data comes from the same sources as run_clip.py (a folder with metadata.jsonl/.csv, a CSV/JSONL file, a
save_to_disk folder, a Hub dataset, streaming). Each `--label_column` is a task: a list-valued column is multi-label,
a float column regression, an integer or string column single-label classification (classes: those seen in
training, written to the config's `id2label`); `--problem_type` overrides that (integers may be a count). The first
column is the `default_task`, the head that single-modality pipelines answer with (or pass --default_task).

The steps it shares with the other examples (output-folder and Hub checks, data splits, a new processor, the
Hub-ready folder) are in training_mm (script_arguments, splits, processors, output_folder, trainer_steps); batching, metrics (scikit-learn) and the ablation in
training_mm/classification.py. `main(argv)` is importable and returns the measured metrics.
"""

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
import transformers
from datasets import IterableDataset
from transformers import AutoConfig, HfArgumentParser, Trainer, TrainingArguments

from configuration_mm import MMConfig
from modeling_mm import MMForClassification
from training_mm.classification import (
    MODALITY_COLUMNS,
    ClassificationCollator,
    FreezeTowersCallback,
    check_held_out_labels,
    ablation,
    format_ablation_table,
    infer_tasks,
    pipeline_task,
)
from training_mm.output_folder import prepare_output, push_output_folder, save_output_folder
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
from training_mm.hub import describe_model
from training_mm.fusion_data import FUSION_TASKS, build_fusion_dataset

logger = logging.getLogger("run_classification")


@dataclass
class ModelArguments:
    """Which model to train (a preset from scratch, an mm checkpoint's towers, or existing encoders) and its fusion."""

    preset: Literal["tiny", "small", "base"] = field(
        default="small", metadata={"help": "Model size when starting from scratch: tiny (tests), small, base."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "An mm checkpoint (Hub id or folder): an MMModel's towers get new fusion layers and heads; an "
            "MMForClassification with the same tasks continues training."
        },
    )
    text_encoder: str | None = field(default=None, metadata={"help": "Text tower from any AutoModel checkpoint."})
    vision_encoder: str | None = field(default=None, metadata={"help": "Vision tower from any AutoModel checkpoint."})
    audio_encoder: str | None = field(
        default=None, metadata={"help": "Audio tower from an AutoModel checkpoint taking log-mel input_features."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "A tokenizer. Default: the checkpoint's or the text encoder's, else trained."}
    )
    fusion_type: Literal["late", "concat", "cross", "gated"] | None = field(
        default=None, metadata={"help": "How modalities are fused (default: concat, or the checkpoint's)."}
    )
    fusion_num_layers: int | None = field(
        default=None, metadata={"help": "Fusion transformer layers for concat/cross (default: the preset's, 2)."}
    )
    modality_dropout: float | None = field(
        default=None,
        metadata={"help": "Probability of hiding each modality of an item in training (at least one stays). Default 0."},
    )
    focal_loss_gamma: float | None = field(
        default=None, metadata={"help": "> 0: focal loss for classification tasks (imbalanced labels). Default 0."}
    )
    task_loss_weighting: Literal["uncertainty", "sum"] | None = field(
        default=None, metadata={"help": "Several tasks: learned uncertainty weighting (default) or a plain sum."}
    )
    freeze_towers_steps: int = field(
        default=0, metadata={"help": "Staged training: keep the towers frozen for the first N optimizer steps."}
    )
    meta_controller: bool = field(default=False, metadata={"help": META_CONTROLLER_HELP})


@dataclass
class ClassificationDataArguments(DataArguments):
    """`DataArguments` plus the label columns (tasks) and the output-folder guard."""

    label_column: list[str] | None = field(
        default=None,
        metadata={"help": "Label column(s), one task each. Default: the built-in tasks match, colours, count."},
    )
    problem_type: Literal["single_label_classification", "multi_label_classification", "regression"] | None = field(
        default=None, metadata={"help": "Override the problem type the label values suggest (for every column)."}
    )
    default_task: str | None = field(
        default=None, metadata={"help": "The task single-modality pipelines answer with (default: the first column)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into a non-empty --output_dir (never done without this flag)."}
    )


# `TrainingArguments` defaults of this script, for the default run (small preset, built-in fusion tasks, 2 CPU cores).
TRAINING_DEFAULTS = dict(
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    learning_rate=5e-4,
    weight_decay=0.05,
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    num_train_epochs=6,
    logging_steps=20,
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=1,
    remove_unused_columns=False,  # the collator reads the raw columns
    prediction_loss_only=True,  # evaluation reports eval_loss; the metrics come from the held-out ablation
    report_to="none",
    dataloader_num_workers=0,
    dataloader_pin_memory=torch.cuda.is_available(),
)
BUILTIN_SIZES = dict(num_train_samples=2000, num_eval_samples=300)


def main(argv=None):
    """Runs the script with `argv` (default: sys.argv[1:]); returns the measured metrics as a flat dict:
    `<task> <metric>` with every modality, `<task> <metric> [<modalities>]` for each subset, `train_loss` and
    `eval_loss`."""
    # 1. Arguments.
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args, "run_classification")
    output = prepare_output(training_args, data_args.overwrite_output_dir)
    transformers.set_seed(training_args.seed)

    # 2. Data: `caption` / `image` / `audio` columns and the label columns.
    base_config = base_model_config(model_args)
    splits, dataset_name, dataset_type, label_columns = load_classification_splits(
        data_args, training_args, image_size_of(base_config.vision_config)
    )
    train_split, eval_split = splits["train"], splits.get("validation")
    held_out_name = check_splits(splits, dataset_name, training_args, measured="the metrics")
    modalities = tuple(name for name, column in MODALITY_COLUMNS.items() if column in train_split.column_names)
    tasks = infer_tasks(train_split, label_columns, data_args.problem_type)
    check_held_out_labels(splits, tasks)
    logger.info("Tasks: %s; modalities: %s", {name: spec["problem_type"] for name, spec in tasks.items()}, modalities)

    # 3. Processor and 4. model.
    processor = build_processor(model_args, base_config, train_split)
    model = build_model(model_args, data_args, base_config, tasks, processor.tokenizer)
    logger.info("Model: %s", describe_model(model))
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = True  # absent modalities and frozen towers get no gradient

    # 5. Training.
    callbacks = [FreezeTowersCallback(model_args.freeze_towers_steps)] if model_args.freeze_towers_steps else []
    controller = None
    if model_args.meta_controller:
        pretrained = bool(model_args.model_name_or_path or any(encoder_paths(model_args).values()))
        controller = meta_controller_callback(pretrained)
        callbacks.append(controller)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_split,
        eval_dataset=eval_split if training_args.eval_strategy != "no" else None,
        data_collator=ClassificationCollator(processor, modalities, tasks, single_task=len(tasks) == 1),
        processing_class=processor,
        callbacks=callbacks,
    )
    if controller is not None:
        run_before_reporting(trainer, controller)  # so `--report_to tensorboard` also plots the meta_* values
    metrics = train_and_collect_losses(trainer, output.resume)

    # 6. Held-out metrics with every subset of the modalities.
    held_out = splits[held_out_name]
    if isinstance(held_out, IterableDataset):
        held_out = held_out.take(data_args.num_eval_samples)
    specs = trainer.model.config.task_specs()
    results = ablation(trainer.model, processor, held_out, modalities, training_args.per_device_eval_batch_size)
    everything = results[modalities]
    card_metrics = {f"{task} {name}": value for task, values in everything.items() for name, value in values.items()}
    metrics.update(card_metrics)
    for subset, subset_results in results.items():
        for task, values in subset_results.items():
            metrics.update({f"{task} {name} [{' + '.join(subset)}]": value for name, value in values.items()})
    if training_args.should_log:
        print(f"Held-out {held_out_name} split, by the modalities given (RMSE: lower is better):")
        print(format_ablation_table(results, specs))
    # 7. The Hub-ready folder: weights + remote code, processor, model card with the numbers just measured.
    save_output_folder(
        trainer,
        output,
        data_args.overwrite_output_dir,
        metrics=card_metrics,
        task_type=pipeline_task(modalities),
        dataset_name=dataset_name,
        dataset_type=dataset_type,
        dataset_split=held_out_name,
        hyperparameters=hyperparameters(model_args, trainer, tasks, modalities),
        base_model=model_args.model_name_or_path,
        modalities=modalities if "text" in modalities else ("text", *modalities),
        classification_tasks=specs,
    )
    # eval_results.json / all_results.json, as transformers' examples write them (`eval_` + the metric's name).
    trainer.save_metrics(
        "eval",
        {key if key == "eval_loss" else f"eval_{key}": value for key, value in metrics.items() if key != "train_loss"},
    )
    push_output_folder(output, training_args)
    return metrics


# ------------------------------------------------------------------------------------------------ arguments & data


def parse_args(argv):
    parser = HfArgumentParser((ModelArguments, ClassificationDataArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS, **BUILTIN_SIZES)
    model_args, data_args, training_args = parse_script_args(
        parser, argv, default_output_dir=lambda known: f"outputs/run_classification-{known.preset}"
    )
    encoders = (model_args.text_encoder, model_args.vision_encoder, model_args.audio_encoder)
    if model_args.model_name_or_path and any(encoders):
        raise ValueError("--model_name_or_path has its own towers; drop --text_encoder/--vision_encoder/--audio_encoder.")
    if data_args.dataset_name and not data_args.label_column:
        raise ValueError(f"--dataset_name {data_args.dataset_name}: name the label column(s) with --label_column.")
    if model_args.freeze_towers_steps < 0:
        raise ValueError(f"--freeze_towers_steps must be >= 0, got {model_args.freeze_towers_steps}.")
    return model_args, data_args, training_args


def load_classification_splits(data_args, training_args, image_size):
    """Returns (splits, readable dataset name, dataset id for the card, label columns)."""
    if data_args.dataset_name is None:
        label_columns = data_args.label_column or list(FUSION_TASKS)
    else:
        label_columns = data_args.label_column
    splits, name, dataset_type = load_splits(
        data_args,
        training_args,
        image_size,
        builtin=(build_fusion_dataset, "mm built-in fusion tasks"),
        keep_columns=label_columns if data_args.dataset_name else (),
    )
    return splits, name, dataset_type, label_columns


# ------------------------------------------------------------------------------------------------ processor & model


def base_model_config(model_args):
    """The towers the model will have: the checkpoint's or the preset's, with any named encoder's config."""
    config = (
        MMConfig.from_pretrained(model_args.model_name_or_path)
        if model_args.model_name_or_path
        else MMConfig.from_preset(model_args.preset)
    )
    towers = {
        f"{name}_config": AutoConfig.from_pretrained(path, trust_remote_code=False)
        for name, path in encoder_paths(model_args).items()
        if path
    }
    return MMConfig(**{**config.to_dict(), **towers}) if towers else config


def encoder_paths(model_args):
    return {name: getattr(model_args, f"{name}_encoder") for name in ("text", "vision", "audio")}


def build_processor(model_args, config, train_split):
    if model_args.model_name_or_path:
        return load_processor(model_args.model_name_or_path, config=config, tokenizer_name=model_args.tokenizer_name)
    towers = {"text": config.text_config, "vision": config.vision_config, "audio": config.audio_config}
    return new_processor(towers, train_split, model_args.tokenizer_name or model_args.text_encoder)


def build_model(model_args, data_args, base_config, tasks, tokenizer):
    """A classifier with `tasks`: the checkpoint's towers (and, for the same tasks, its fusion and heads), the named
    encoders, or a new model; the fusion options given on the command line override the checkpoint's."""
    fusion = {
        key: value
        for key, value in (
            ("fusion_type", model_args.fusion_type),
            ("num_hidden_layers", model_args.fusion_num_layers),
            ("modality_dropout", model_args.modality_dropout),
        )
        if value is not None
    }
    overrides = {
        "tasks": tasks,
        "default_task": data_args.default_task or next(iter(tasks)),
        "fusion_encoder_config": {**base_config.fusion_encoder_config.to_dict(), **fusion},
    }
    for key in ("focal_loss_gamma", "task_loss_weighting"):
        if getattr(model_args, key) is not None:
            overrides[key] = getattr(model_args, key)
    if not (model_args.model_name_or_path or model_args.text_encoder):
        special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
        overrides["text_config"] = {
            **base_config.text_config.to_dict(),
            "vocab_size": len(tokenizer),
            **{k: v for k, v in special.items() if v is not None},
        }
    for key in ("id2label", "label2id", "problem_type", "num_labels"):
        overrides.setdefault(key, None)  # the tasks set them
    # A checkpoint's auto_map and pipelines may predate the classifier: the config writes the current ones.
    stale = ("auto_map", "custom_pipelines", "architectures")
    config_dict = {
        k: v for k, v in {**base_config.to_dict(), **overrides}.items() if v is not None and k not in stale
    }
    config = MMConfig(**config_dict)
    if model_args.model_name_or_path:
        return MMForClassification.from_pretrained(model_args.model_name_or_path, config=config)
    if any(encoder_paths(model_args).values()):
        encoders = {f"{name}_encoder": path for name, path in encoder_paths(model_args).items()}
        return MMForClassification.from_encoders(**encoders, config=config)
    return MMForClassification(config)


# ------------------------------------------------------------------------------------------------ reporting


def hyperparameters(model_args, trainer, tasks, modalities):
    config = trainer.model.config
    values = {
        "starting point": model_args.model_name_or_path
        or ", ".join(f"{name} tower from {path}" for name, path in encoder_paths(model_args).items() if path)
        or f"{model_args.preset} preset, from scratch",
        "modalities": ", ".join(modalities),
        "tasks": ", ".join(f"{name} ({spec['problem_type']})" for name, spec in tasks.items()),
        "fusion": f"{config.fusion_encoder_config.fusion_type}, {config.fusion_encoder_config.num_hidden_layers} layers",
        "modality dropout": config.fusion_encoder_config.modality_dropout,
        **trainer_hyperparameters(trainer),
    }
    if len(tasks) > 1:
        values["task loss weighting"] = config.task_loss_weighting
    if config.focal_loss_gamma:
        values["focal loss gamma"] = config.focal_loss_gamma
    if model_args.freeze_towers_steps:
        values["towers frozen for"] = f"{model_args.freeze_towers_steps} steps"
    return values


if __name__ == "__main__":
    main()

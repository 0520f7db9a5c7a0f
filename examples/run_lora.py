#!/usr/bin/env python
"""LoRA finetuning of a saved mm checkpoint with PEFT and `Trainer`: a small adapter instead of a new checkpoint.

It loads `--model_name_or_path` (a Hub id or a folder written by run_clip.py, run_captioning.py or save_pretrained),
puts LoRA adapters on the attention and MLP layers of the chosen towers, trains them on the built-in data (or
`--dataset_name`), prints the held-out metrics of the base model and of the adapted one (retrieval recall@1/5/10
for `--task contrastive`, BLEU and CIDEr-D of generated captions for `--task captioning`, each task's accuracy /
mAP / RMSE for `--task classification`), and writes a Hub-ready
adapter folder: `adapter_config.json`, `adapter_model.safetensors`, the base model's processor (so the adapter repo
alone prepares inputs, even when the base is a local folder), and a README.md card naming the base model and the
measured numbers.

    python examples/run_lora.py --model_name_or_path outputs/run_clip-small
    python examples/run_lora.py --model_name_or_path my-org/mm-base --towers vision --lora_r 16 --dataset_name photos/
    python examples/run_lora.py --model_name_or_path outputs/run_captioning-small --task captioning
    python examples/run_lora.py --model_name_or_path outputs/run_classification-small --task classification
    python examples/run_lora.py --model_name_or_path my-org/mm-base --merge_output_dir outputs/merged --push_to_hub

Where mm is not installed, the adapter loads onto the base as remote code:

    model = PeftModel.from_pretrained(AutoModel.from_pretrained("my-org/mm-base", trust_remote_code=True), adapter)

`--merge_output_dir` also writes the merged model (`merge_and_unload`): a plain checkpoint with remote code.

With `--task classification` (an `MMForClassification` checkpoint from run_classification.py, and data with its task
columns; by default the built-in fusion tasks) the fusion layers and the task heads (`classifier.<task>`) are trained
in full, as PEFT's `modules_to_save`, and saved in the adapter with the LoRA weights of the towers.

Same shape as run_clip.py and run_captioning.py, whose data options, collators, evaluation and folder/Hub steps it
shares through training_mm (`script_arguments`, `splits`, `output_folder`, `captioning`, `retrieval`):
`HfArgumentParser` over three dataclasses, one `main` in numbered steps, `main(argv)` importable and returning the
measured metrics.
"""

import json
import logging
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Literal

import transformers
from datasets import IterableDataset
from peft import get_peft_model
from transformers import HfArgumentParser, Trainer

from modeling_mm import MMForClassification, MMForConditionalGeneration, MMModel
from training_mm.caption_metrics import caption_metrics
from training_mm.captioning import PIPELINE_TASKS, CaptioningCollator, generate_captions, reference_captions
from training_mm.classification import MODALITY_COLUMNS, ClassificationCollator, evaluate_split, pipeline_task
from training_mm.output_folder import prepare_output, push_output_folder, save_output_folder
from training_mm.processors import image_size_of, load_processor
from training_mm.script_arguments import (
    CaptioningDataArguments,
    CaptioningTrainingArguments,
    parse_script_args,
    setup_logging,
)
from training_mm.splits import check_splits, load_splits
from training_mm.trainer_steps import train_and_collect_losses, trainer_hyperparameters
from training_mm.collators import ContrastiveCollator
from training_mm.hub import CardFacts, describe_model, write_model_card
from training_mm.lora import MODALITY_TOWERS, build_lora_config
from training_mm.nonfinite_guard import NonFiniteGuardCallback, check_finite_weights
from training_mm.retrieval import MIN_GALLERY, RetrievalGallery, retrieval_metrics
from training_mm.safe_loading import from_pretrained_safetensors
from training_mm.fusion_data import build_fusion_dataset

logger = logging.getLogger("run_lora")

# The transformers Auto class that loads the base model, by the card's task; the adapter's `auto_mapping` names it
# (see `point_auto_mapping_at_transformers`).
AUTO_CLASSES = {
    "zero-shot-image-classification": "AutoModel",
    "zero-shot-audio-classification": "AutoModel",
    "image-to-text": "AutoModelForImageTextToText",
    "automatic-speech-recognition": "AutoModelForSpeechSeq2Seq",
    **dict.fromkeys(
        ("image-classification", "audio-classification", "text-classification"), "AutoModelForSequenceClassification"
    ),
}


@dataclass
class LoraModelArguments:
    """The checkpoint to adapt, the adapters, and where the merged model goes."""

    model_name_or_path: str = field(
        metadata={"help": "The mm checkpoint (Hub id or folder) to adapt; its processor is used and saved with the adapter."}
    )
    task: Literal["contrastive", "captioning", "classification"] = field(
        default="contrastive",
        metadata={"help": "contrastive: MMModel's CLIP-style loss over text/image/audio, measured by retrieval. "
                          "captioning: MMForConditionalGeneration's caption loss (the checkpoint needs a trained "
                          "decoder, e.g. from run_captioning.py), measured by BLEU/CIDEr-D. classification: "
                          "MMForClassification's task losses (a checkpoint from run_classification.py; the data needs "
                          "its task columns), measured by its metrics; the fusion layers and heads train in full. "
                          "--modality picks what is compared with (contrastive, default: every modality the data "
                          "has) or captioned."},
    )
    towers: str | None = field(
        default=None,
        metadata={"help": "Comma-separated towers to adapt among text, vision, audio (and decoder for captioning). "
                          "Default: contrastive, text plus the towers of the data's modalities; captioning, the "
                          "decoder plus the tower of --modality."},
    )
    min_retrieval_gallery: int = field(
        default=MIN_GALLERY,
        metadata={"help": "--task contrastive: report (and publish in the card) retrieval recall only on a held-out "
                          "split of at least this many distinct items (labels, else captions); below it, the log and "
                          "the card say it was not measured."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input."})
    target_modules: str | None = field(
        default=None,
        metadata={"help": "Instead of the default targets (attention q/k/v/out_proj and MLP fc1/fc2 of --towers): a "
                          "regular expression PEFT full-matches against module paths, e.g. "
                          "'(text_model|vision_model)\\..*\\.(q_proj|v_proj)'."},
    )
    merge_output_dir: str | None = field(
        default=None,
        metadata={"help": "Also write the merged model (the adapter folded into the base weights) here: a plain "
                          "remote-code checkpoint with the processor and a card, loadable without PEFT."},
    )


@dataclass
class LoraTrainingArguments(CaptioningTrainingArguments):
    """`TrainingArguments` with this script's defaults (and run_captioning.py's generation options, used by
    `--task captioning`); every one can be overridden."""

    # LoRA's few parameters start from a zero update and take larger steps than full finetuning (LoRA paper: 1e-4
    # to 1e-3), and a pretrained checkpoint needs fewer epochs than a model trained from scratch.
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    num_train_epochs: float = 3.0


def main(argv=None):
    """Runs the script with `argv` (default: sys.argv[1:]); returns the measured metrics as a flat dict: the task's
    held-out metrics with the adapter (`recall@k query->gallery`, or `bleu` and `cider`), the same for the base model
    prefixed `baseline `, `train_loss`, `eval_loss` when there was an evaluation, and `trainable_parameters` /
    `total_parameters` of the adapted model."""
    # 1. Arguments, and the checks that must fail before training rather than after.
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args, "run_lora")
    merge_dir = Path(model_args.merge_output_dir) if model_args.merge_output_dir else None
    output = prepare_output(training_args, training_args.overwrite_output_dir, [merge_dir] if merge_dir else [])
    task = model_args.task
    transformers.set_seed(training_args.seed)

    # 2. The base model and its processor.
    base = model_args.model_name_or_path
    model = load_base_model(base, task)
    processor = load_processor(base, model.config)

    # 3. Data: splits with `caption` and `image` and/or `audio` (and `label` for the built-in data, or the
    # classifier's task columns).
    splits, dataset_name, dataset_type = load_task_splits(task, model, data_args, training_args)
    train_split, eval_split = splits["train"], splits.get("validation")
    measured = {"contrastive": "retrieval", "captioning": "captions", "classification": "the task metrics"}[task]
    held_out_name = check_splits(splits, dataset_name, training_args, measured)
    modalities = data_modalities(train_split, data_args.modality, task)
    towers = None if model_args.target_modules else chosen_towers(model_args.towers, modalities, task, model.config)

    # 4. The held-out metrics of the base model: the baseline the adapted numbers are read against.
    gallery = None
    if task == "contrastive":  # retrieval only on a gallery large enough for recall@k to mean something
        gallery = RetrievalGallery.of(splits[held_out_name], held_out_name, model_args.min_retrieval_gallery)
        (logger.info if gallery.measured else logger.warning)(gallery.note)
    evaluate, collator, task_type = task_parts(task, processor, splits[held_out_name], modalities, data_args,
                                               training_args, model.config, gallery)  # fmt: skip
    model.to(training_args.device)
    baseline = evaluate(model)

    # 5. LoRA on the chosen towers; everything else (projections, logit_scale, embeddings) stays frozen, except a
    # classifier's fusion layers and heads, which train in full.
    lora_config = build_lora_config(
        model,
        towers,
        model_args.lora_r,
        model_args.lora_alpha,
        model_args.lora_dropout,
        model_args.target_modules,
        modules_to_save=fully_trained_modules(model) if task == "classification" else None,
    )
    model = get_peft_model(model, lora_config)
    trainable, total = model.get_nb_trainable_parameters()
    targets = f"the {', '.join(towers)} tower(s)" if towers else f"the modules matching {model_args.target_modules!r}"
    in_full = f"; trained in full: {', '.join(lora_config.modules_to_save)}" if lora_config.modules_to_save else ""
    print(f"LoRA on {len(model.targeted_module_names)} layers of {targets}{in_full}:")
    model.print_trainable_parameters()

    # 6. Training, stopped at the first non-finite loss or gradient (and before saving non-finite weights).
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_split,
        eval_dataset=eval_split if training_args.eval_strategy != "no" else None,
        data_collator=collator,
        processing_class=processor,
        callbacks=[NonFiniteGuardCallback()],
    )
    metrics = train_and_collect_losses(trainer, output.resume)

    # 7. The held-out metrics with the adapter, next to the baseline.
    after = evaluate(trainer.model)
    metrics.update(after)
    metrics.update({f"baseline {name}": value for name, value in baseline.items()})
    metrics.update(trainable_parameters=trainable, total_parameters=total)
    if training_args.should_log:
        print(format_comparison(baseline, after, held_out_name) if after else gallery.note)

    # 8. The adapter folder: adapter weights and config, the processor, a card with the numbers just measured.
    card = dict(
        metrics=after,
        task_type=task_type,
        dataset_name=dataset_name,
        dataset_type=dataset_type,
        dataset_split=held_out_name,
        evaluation_note=gallery.note if gallery else None,
        hyperparameters=hyperparameters(model_args, trainer, towers, lora_config, trainable, total),
        base_model=base,
        modalities=tuple(dict.fromkeys(("text", *modalities))),
        classification_tasks=model.config.task_specs() if task == "classification" else None,
    )
    if save_output_folder(trainer, output, training_args.overwrite_output_dir, "adapter", is_adapter=True, **card):
        point_auto_mapping_at_transformers(output.folder, AUTO_CLASSES[task_type])

        # 9. Optionally the merged model: the base weights with the adapter folded in, loadable without PEFT.
        if merge_dir is not None:
            merged = trainer.model.merge_and_unload()
            check_finite_weights(merged, merge_dir, synchronize=False)  # this process alone writes it
            merged.save_pretrained(merge_dir)
            processor.save_pretrained(merge_dir)
            facts = CardFacts(merge_dir.name, repo_id=merge_dir.name, model_description=describe_model(merged), **card)
            write_model_card(merge_dir, facts)
            logger.info("Wrote the merged model, processor and model card to %s", merge_dir)
    push_output_folder(output, training_args, what="the adapter in ")
    return metrics


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv):
    parser = HfArgumentParser((LoraModelArguments, CaptioningDataArguments, LoraTrainingArguments))
    model_args, data_args, training_args = parse_script_args(parser, argv, default_output_dir=default_output_dir)
    if model_args.towers and model_args.target_modules:
        raise ValueError(
            "--target_modules names the adapted layers itself (a regular expression over module paths, towers "
            "included); drop --towers, or drop --target_modules to adapt the default layers of --towers."
        )
    return model_args, data_args, training_args


def default_output_dir(known):
    """outputs/run_lora-<the base checkpoint's name>; none without --model_name_or_path (the parser then says it is
    required)."""
    if known.model_name_or_path:
        return f"outputs/run_lora-{Path(known.model_name_or_path.rstrip('/')).name}"
    return None


def data_modalities(train_split, modality, task):
    """The modalities trained on besides text: --modality, or for contrastive every one the data has and for
    captioning the image (else the audio). Classification: every modality the data has, text included."""
    if task == "classification":
        if modality is not None:
            raise ValueError("--modality is for contrastive and captioning; a classifier reads every modality the data has.")
        return tuple(name for name, column in MODALITY_COLUMNS.items() if column in train_split.column_names)
    present = tuple(name for name in ("image", "audio") if name in train_split.column_names)
    if modality is not None and modality not in present:
        raise ValueError(f"--modality {modality}: the data has no {modality} column (its columns: {train_split.column_names}).")
    if modality is not None:
        return (modality,)
    return present[:1] if task == "captioning" else present


def chosen_towers(towers, modalities, task, config):
    """The towers named by --towers, checked to be ones the training signal reaches; by default those towers are:
    contrastive, text plus the tower of each modality; captioning, the decoder plus the tower it reads;
    classification, the tower of each modality."""
    data_towers = tuple(MODALITY_TOWERS[name] for name in modalities)
    if task == "classification":
        reached = data_towers
    else:
        reached = ("decoder", *data_towers) if task == "captioning" else ("text", *data_towers)
        if task == "captioning" and config.contrastive_loss_weight > 0:  # CoCa: the contrastive loss reaches text too
            reached += ("text",)
    if towers is None:
        return reached if task == "classification" else reached[: 1 + len(data_towers)]
    chosen = tuple(dict.fromkeys(name.strip() for name in towers.split(",") if name.strip()))
    unreached = [name for name in chosen if name not in reached]
    if unreached or not chosen:
        raise ValueError(
            f"--towers {towers!r}: with --task {task} on {', '.join(dict.fromkeys(('text', *modalities)))}, the loss "
            f"reaches the {', '.join(reached)} tower(s) only; adapters on {', '.join(unreached) or 'no tower'} would "
            f"never train. Choose among {list(reached)}, comma-separated."
        )
    return chosen


# ------------------------------------------------------------------------------------------------ model, processor, task


def task_parts(task, processor, held_out, modalities, data_args, training_args, config, gallery=None):
    """What differs between the tasks: the held-out evaluation (`evaluate(model) -> metrics`: retrieval recall, none
    when the `RetrievalGallery` is too small to measure on, BLEU/CIDEr-D of generated captions, or each task's
    classification metrics), the training collator, and the card's task."""
    batch_size = training_args.per_device_eval_batch_size
    if task == "classification":
        if isinstance(held_out, IterableDataset):
            held_out = held_out.take(data_args.num_eval_samples)
        evaluate = partial(classification_scores, processor=processor, rows=held_out, modalities=modalities,
                           batch_size=batch_size)  # fmt: skip
        tasks = config.task_specs()
        collator = ClassificationCollator(processor, modalities, tasks, single_task=len(tasks) == 1)
        return evaluate, collator, pipeline_task(modalities)
    if task == "contrastive":
        evaluate = partial(retrieval_metrics, processor=processor, dataset=held_out, modalities=modalities,
                           batch_size=batch_size) if gallery.measured else not_measured  # fmt: skip
        task_type = "zero-shot-image-classification" if "image" in modalities else "zero-shot-audio-classification"
        return evaluate, ContrastiveCollator(processor, modalities), task_type
    modality = modalities[0]
    rows = list(islice(held_out, data_args.max_eval_samples))
    generate_kwargs = training_args.generate_kwargs()
    evaluate = partial(caption_scores, processor=processor, rows=rows, references=reference_captions(rows, held_out),
                       modality=modality, batch_size=batch_size, generate_kwargs=generate_kwargs)  # fmt: skip
    return evaluate, CaptioningCollator(processor, modality), PIPELINE_TASKS[modality]


def not_measured(model):
    return {}


def load_base_model(path, task):
    """The base checkpoint as `MMModel` (contrastive), `MMForConditionalGeneration` (captioning) or
    `MMForClassification` (classification). A captioning base must have a trained decoder: LoRA adapts trained
    weights, and a decoder loaded from an MMModel checkpoint would start (and stay, frozen) random. A classification
    base must be a trained classifier: its tasks say which label columns the data needs."""
    if task == "contrastive":
        return from_pretrained_safetensors(MMModel, path)
    model_class = MMForConditionalGeneration if task == "captioning" else MMForClassification
    model, info = from_pretrained_safetensors(model_class, path, output_loading_info=True)
    untrained = sorted({key.split(".")[0] for key in info["missing_keys"]})
    if untrained and task == "captioning":
        raise ValueError(
            f"{path} has no trained weights for {untrained} of the captioning model (e.g. an MMModel checkpoint from "
            "run_clip.py). Train the caption decoder first (examples/run_captioning.py --model_name_or_path "
            f"{path}), then put LoRA on that checkpoint; or use --task contrastive."
        )
    if untrained:
        raise ValueError(
            f"{path} has no trained weights for {untrained} of the classifier (e.g. an MMModel checkpoint from "
            "run_clip.py), so it has no tasks to adapt. Train a classifier on its towers first "
            f"(examples/run_classification.py --model_name_or_path {path} --label_column ...), then put LoRA on that "
            "checkpoint."
        )
    return model


def fully_trained_modules(model):
    """A classifier's modules that LoRA does not adapt but trains in full (PEFT's `modules_to_save`): the fusion
    layers and each task's head, which hold what is specific to the task and are small next to the towers."""
    return ["fusion", *(f"classifier.{name}" for name in model.classifier)]


def load_task_splits(task, model, data_args, training_args):
    """`load_splits` for the task: a classifier trains on the built-in fusion tasks (or user data with its task
    columns), the others on the built-in scenes (or user data)."""
    image_size = image_size_of(model.config.vision_config)
    if task != "classification":
        return load_splits(data_args, training_args, image_size)
    tasks = list(model.config.task_specs())
    splits, name, dataset_type = load_splits(
        data_args,
        training_args,
        image_size,
        builtin=(build_fusion_dataset, "mm built-in fusion tasks"),
        keep_columns=tasks,
    )
    missing = [column for column in tasks if column not in splits["train"].column_names]
    if missing:
        raise ValueError(
            f"The classifier's tasks read the label columns {tasks}; {name!r} lacks {missing} (its columns: "
            f"{splits['train'].column_names}). Rename the label columns to the task names."
        )
    return splits, name, dataset_type


def point_auto_mapping_at_transformers(adapter_dir, auto_class):
    """Makes the adapter's `auto_mapping` name transformers' `auto_class` instead of the mm package's class.

    PEFT records the base model's class by its import path (`modeling_mm.modeling_mm.MMModel`), which a consumer
    without the mm package cannot import and `AutoPeftModel`'s import allowlist refuses anyway. Through transformers'
    Auto class, `AutoPeftModel.from_pretrained(adapter, trust_remote_code=True)` loads the base as remote code.
    """
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text())
    config["auto_mapping"] = {"base_model_class": auto_class, "parent_library": "transformers"}
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------------------ evaluation & reporting


def classification_scores(model, processor, rows, modalities, batch_size):
    """Every task's held-out metrics with all `modalities`, as `{"<task> <metric>": value}`."""
    results = evaluate_split(model, processor, rows, modalities, batch_size)
    return {f"{task} {name}": value for task, values in results.items() for name, value in values.items()}


def caption_scores(model, processor, rows, references, modality, batch_size, generate_kwargs):
    """BLEU and CIDEr-D of the captions `model` writes for `rows` (run_captioning.py's generation and metrics)."""
    captions = generate_captions(model, processor, rows, modality, batch_size, generate_kwargs)
    return caption_metrics(captions, references)


def format_comparison(before, after, split_name):
    lines = [f"Held-out {split_name} split: base model -> with LoRA"]
    lines += [f"  {name:<24}{before[name]:>10.4g} -> {value:.4g}" for name, value in after.items()]
    return "\n".join(lines)


def hyperparameters(model_args, trainer, towers, lora_config, trainable, total):
    return {
        "base model": model_args.model_name_or_path,
        "task": model_args.task,
        "LoRA towers": ", ".join(towers) if towers else "(--target_modules)",
        "LoRA target modules": lora_config.target_modules,
        "LoRA r": lora_config.r,
        "LoRA alpha": lora_config.lora_alpha,
        "LoRA dropout": lora_config.lora_dropout,
        **({"trained in full": ", ".join(lora_config.modules_to_save)} if lora_config.modules_to_save else {}),
        "trainable parameters": f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)",
        **trainer_hyperparameters(trainer),
    }


if __name__ == "__main__":
    main()

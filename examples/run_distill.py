#!/usr/bin/env python
"""Knowledge distillation: a smaller mm student learns a trained teacher's similarity logits on the same data.

With no arguments the teacher is the checkpoint examples/run_clip.py writes (outputs/run_clip-small, trained first
when it is missing), the student is the `tiny` preset's width and depth at the teacher's input sizes and vocabulary,
and the data is the built-in scenes. It trains the student twice from the same initialisation, with the teacher and
without it (its contrastive loss alone), and prints held-out retrieval recall of the teacher and both students:

    python examples/run_distill.py
    python examples/run_distill.py --teacher_name_or_path outputs/photos --dataset_name my_photos/ --output_dir outputs/photos-tiny

The loss is in training_mm/distillation.py (`DistillationTrainer`: a `Trainer` whose loss adds the distillation
term). The distilled student is written to --output_dir as a Hub-ready folder; `main(argv)` returns the metrics.
"""

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments

from run_clip import TRAINING_DEFAULTS as CLIP_DEFAULTS  # examples/ is on sys.path: the scripts' own folder

from configuration_mm import MMConfig
from modeling_mm import MMModel
from training_mm.collators import ContrastiveCollator
from training_mm.default_checkpoint import DEFAULT_CHECKPOINT, ensure_checkpoint
from training_mm.distillation import DistillationTrainer
from training_mm.hub import describe_model
from training_mm.nonfinite_guard import NonFiniteGuardCallback
from training_mm.output_folder import prepare_output, push_output_folder, save_output_folder
from training_mm.processors import image_size_of, load_processor
from training_mm.retrieval import (
    DIRECTIONS, MIN_GALLERY, PROTOCOL, RECALL_AT, RetrievalGallery, metric_name, retrieval_metrics,
)  # fmt: skip
from training_mm.safe_loading import from_pretrained_safetensors, refuse_pickled_weights
from training_mm.script_arguments import DataArguments, parse_script_args, setup_logging
from training_mm.splits import check_splits, load_splits
from training_mm.trainer_steps import train_and_collect_losses, trainer_hyperparameters

logger = logging.getLogger("run_distill")


@dataclass
class DistillArguments:
    """The teacher, the student's size and how much it listens to the teacher."""

    teacher_name_or_path: str = field(
        default=DEFAULT_CHECKPOINT,
        metadata={"help": f"A trained mm contrastive checkpoint (default {DEFAULT_CHECKPOINT}, trained if missing)."},
    )
    student_preset: Literal["tiny", "small", "base"] = field(
        default="tiny",
        metadata={"help": "Width and depth of the student's towers (input sizes and vocabulary are the teacher's)."},
    )
    distill_weight: float = field(
        default=0.5, metadata={"help": "Weight of the distillation loss; the contrastive loss gets 1 - this."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the distillation loss."})
    compare_without_teacher: bool = field(
        default=True, metadata={"help": "Also train the same student without the teacher and report its recall."}
    )


@dataclass
class DistillDataArguments(DataArguments):
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into a non-empty --output_dir (never done without this flag)."}
    )
    min_retrieval_gallery: int = field(
        default=MIN_GALLERY,
        metadata={"help": "Report recall only on a held-out split of at least this many distinct items."},
    )


# run_clip.py's defaults (measured there for the small preset on 2 CPU cores), with fewer epochs (each step also runs
# the teacher) and no evaluation or checkpoints along the way (recall is measured at the end).
TRAINING_DEFAULTS = {**CLIP_DEFAULTS, "num_train_epochs": 5, "eval_strategy": "no", "save_strategy": "no"}


def main(argv=None):
    """Runs the script with `argv` (default: sys.argv[1:]); returns the metrics as a flat dict: `teacher <metric>`,
    `student <metric>` (distilled), `student without teacher <metric>` and the parameter counts."""
    # 1. Arguments and the output folder (checked before any training).
    distill_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args, "run_distill")
    output = prepare_output(training_args, data_args.overwrite_output_dir)

    # 2. The teacher and its processor (the student shares the processor: same tokenizer, image size, mel bins).
    teacher_path = ensure_checkpoint(distill_args.teacher_name_or_path, data_args)
    refuse_pickled_weights(teacher_path, MMModel)
    teacher = from_pretrained_safetensors(MMModel, teacher_path).eval()
    processor = load_processor(teacher_path, config=teacher.config)

    # 3. Data.
    splits, dataset_name, dataset_type = load_splits(data_args, training_args, image_size_of(teacher.config.vision_config))
    held_out = check_splits(splits, dataset_name, training_args, measured="retrieval")
    modalities = tuple(name for name in ("image", "audio") if name in splits["train"].column_names)
    gallery = RetrievalGallery.of(splits[held_out], held_out, data_args.min_retrieval_gallery)
    (logger.info if gallery.measured else logger.warning)(gallery.note)
    measure = partial(
        retrieval_metrics, processor=processor, dataset=splits[held_out], modalities=modalities,
        batch_size=training_args.per_device_eval_batch_size,
    )  # fmt: skip
    metrics = {"teacher parameters": teacher.num_parameters()}
    if gallery.measured:
        metrics.update({f"teacher {k}": v for k, v in measure(teacher.to(training_args.device), desc="Teacher").items()})

    # 4. The student without the teacher (the comparison), then with it; both from the same initialisation.
    train = partial(
        train_student, distill_args=distill_args, teacher=teacher, processor=processor, splits=splits,
        modalities=modalities, output=output,
    )  # fmt: skip
    if distill_args.compare_without_teacher:
        with tempfile.TemporaryDirectory() as scratch:
            alone_args = copy.deepcopy(training_args)
            alone_args.output_dir = scratch
            alone = train(training_args=alone_args, distill_weight=0.0).model
        if gallery.measured:
            metrics.update({f"student without teacher {k}": v for k, v in measure(alone, desc="Alone").items()})
    trainer = train(training_args=training_args, distill_weight=distill_args.distill_weight)
    metrics["student parameters"] = trainer.model.num_parameters()
    student_metrics = measure(trainer.model, desc="Student") if gallery.measured else {}
    metrics.update({f"student {k}": v for k, v in student_metrics.items()})
    if training_args.should_log:
        print(format_table(metrics, distill_args) if gallery.measured else gallery.note)

    # 5. The distilled student's Hub-ready folder.
    save_output_folder(
        trainer,
        output,
        data_args.overwrite_output_dir,
        metrics=student_metrics,
        task_type="zero-shot-image-classification" if "image" in modalities else "zero-shot-audio-classification",
        dataset_name=dataset_name,
        dataset_type=dataset_type,
        dataset_split=held_out,
        evaluation_note=gallery.note,
        evaluation_protocol=PROTOCOL,
        hyperparameters={
            "teacher": distill_args.teacher_name_or_path,
            "student": f"{distill_args.student_preset} preset widths at the teacher's input sizes",
            "distill_weight": distill_args.distill_weight,
            "temperature": distill_args.temperature,
            **trainer_hyperparameters(trainer),
        },
        modalities=("text", *modalities),
    )
    push_output_folder(output, training_args)
    return metrics


def parse_args(argv):
    parser = HfArgumentParser((DistillArguments, DistillDataArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parse_script_args(parser, argv, default_output_dir=lambda known: f"outputs/run_distill-{known.student_preset}")


def student_config(teacher_config: MMConfig, preset: str) -> MMConfig:
    """The `preset`'s towers with the teacher's vocabulary, special tokens, text length, image size, mel bins and
    audio length (so the teacher's processor serves both) and its loss type."""
    text, vision, audio = teacher_config.text_config, teacher_config.vision_config, teacher_config.audio_config
    tokens = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "max_position_embeddings")
    return MMConfig.from_preset(
        preset,
        text_config={name: getattr(text, name) for name in tokens if getattr(text, name, None) is not None},
        vision_config={"image_size": image_size_of(vision)},
        audio_config={name: getattr(audio, name) for name in ("num_mel_bins", "max_source_positions")},
        loss_type=teacher_config.loss_type,
    )


def train_student(training_args, distill_weight, distill_args, teacher, processor, splits, modalities, output):
    transformers.set_seed(training_args.seed)  # the same initial student in both runs
    student = MMModel(student_config(teacher.config, distill_args.student_preset))
    label = "with the teacher" if distill_weight > 0 else "without the teacher"
    logger.info("Student (%s): %s", label, describe_model(student))
    trainer = DistillationTrainer(
        model=student,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits.get("validation") if training_args.eval_strategy != "no" else None,
        data_collator=ContrastiveCollator(processor, modalities),
        processing_class=processor,
        callbacks=[NonFiniteGuardCallback()],
        teacher=teacher,
        distill_weight=distill_weight,
        temperature=distill_args.temperature,
    )
    train_and_collect_losses(trainer, output.resume if distill_weight > 0 else None)
    return trainer


def format_table(metrics, distill_args):
    rows = [("teacher", "teacher"), (f"student, distilled (weight {distill_args.distill_weight})", "student")]
    if distill_args.compare_without_teacher:
        rows.append(("student without teacher", "student without teacher"))
    directions = [(q, g) for q, g in DIRECTIONS if f"teacher {metric_name(1, q, g)}" in metrics]
    header = "| model | parameters | " + " | ".join(f"R@{k} {q}->{g}" for q, g in directions for k in RECALL_AT) + " |"
    lines = [header, "|" + "---|" * (2 + len(directions) * len(RECALL_AT))]
    for name, prefix in rows:
        parameters = metrics.get(f"{prefix} parameters", metrics["student parameters"])
        cells = [f"{metrics[f'{prefix} {metric_name(k, q, g)}']:.3f}" for q, g in directions for k in RECALL_AT]
        lines.append(f"| {name} | {parameters / 1e6:.2f}M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

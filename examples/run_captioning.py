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
    python examples/run_captioning.py --model_name_or_path ckpt --dataset_name coco/ --do_train false  # evaluate only

It follows run_clip.py (and transformers' examples/pytorch/contrastive-image-text/run_clip.py): `HfArgumentParser`
over three dataclasses, one `main` in numbered steps, and a collator that builds `labels`, so `Trainer` needs no
subclass; the data, output-folder and Hub steps are training_mm's (splits, output_folder), shared with the other examples. `main(argv)` is
importable and returns the measured metrics.
"""

import logging
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Literal

import transformers
from datasets import IterableDataset
from transformers import HfArgumentParser, Trainer

from configuration_mm import MMConfig
from modeling_mm import MMForConditionalGeneration
from training_mm.caption_metrics import PROTOCOL as CAPTION_PROTOCOL
from training_mm.caption_metrics import caption_metrics
from training_mm.captioning import PIPELINE_TASKS, CaptioningCollator, generate_captions, reference_captions
from training_mm.evaluation import unique_media_rows
from training_mm.output_folder import prepare_output, push_output_folder, save_evaluation_results, save_output_folder
from training_mm.processors import image_size_of, load_processor, new_processor
from training_mm.script_arguments import (
    CaptioningDataArguments,
    CaptioningTrainingArguments,
    parse_script_args,
    setup_logging,
)
from training_mm.splits import check_splits, load_splits
from training_mm.trainer_steps import train_and_collect_losses, trainer_hyperparameters
from training_mm.hub import describe_model
from training_mm.nonfinite_guard import NonFiniteGuardCallback
from training_mm.safe_loading import from_pretrained_safetensors, refuse_pickled_weights

logger = logging.getLogger("run_captioning")


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


def main(argv=None):
    """Runs the script with `argv` (default: sys.argv[1:]); returns the measured metrics as a flat dict: `bleu` and
    `cider` after training, `baseline bleu`/`baseline cider` before it, `train_loss`, and `eval_loss` (validation)
    when there was an evaluation."""
    # 1. Arguments.
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args, "run_captioning")
    output = prepare_output(training_args, training_args.overwrite_output_dir)  # fails here, not after training
    transformers.set_seed(training_args.seed)

    # 2. Data: splits with `caption` and `image` and/or `audio`; captions are measured on test (else validation).
    if model_args.model_name_or_path:
        refuse_pickled_weights(model_args.model_name_or_path, MMForConditionalGeneration)  # before the data loads
        config = MMConfig.from_pretrained(model_args.model_name_or_path)
    else:
        config = MMConfig.from_preset(model_args.preset)
    splits, dataset_name, dataset_type = load_splits(data_args, training_args, image_size_of(config.vision_config))
    train_split, eval_split = splits["train"], splits.get("validation")
    modality = data_args.modality or ("image" if "image" in train_split.column_names else "audio")
    if modality not in train_split.column_names:
        raise ValueError(
            f"--modality {modality}: {dataset_name!r} has no {modality} column (columns: {train_split.column_names}); "
            f"pass --{modality}_column NAME or choose the other modality."
        )
    caption_split_name = check_splits(splits, dataset_name, training_args, measured="captions")
    if training_args.ddp_find_unused_parameters is None:
        # The towers captions are not made from (and the text tower, without CoCa) get no gradient, which DDP
        # treats as an error unless told.
        training_args.ddp_find_unused_parameters = True
    # Each image/clip is captioned once, however many captions (the references) it has.
    held_out = splits[caption_split_name]
    if isinstance(held_out, IterableDataset):
        held_out = list(islice(held_out, data_args.max_eval_samples))
    caption_rows = list(islice(unique_media_rows(held_out, modality), data_args.max_eval_samples))
    references = reference_captions(caption_rows, splits[caption_split_name])

    # 3. Processor and 4. model.
    processor = build_processor(model_args, config, train_split)
    model = build_model(model_args, processor.tokenizer)
    logger.info("Model: %s", describe_model(model))

    # 5. Captions of the held-out split before training: the baseline the trained numbers are read against.
    generate_kwargs = training_args.generate_kwargs()
    model.to(training_args.device)
    batch_size = training_args.per_device_eval_batch_size
    baseline_captions = generate_captions(model, processor, caption_rows, modality, batch_size, generate_kwargs)
    baseline = caption_metrics(baseline_captions, references)
    if not training_args.do_train:  # evaluate the checkpoint only
        if training_args.should_log:
            print(format_report(None, baseline, caption_split_name, caption_rows, references, baseline_captions, None))
        save_evaluation_results(training_args, baseline)
        return baseline

    # 6. Training, stopped at the first non-finite loss or gradient (and before saving non-finite weights).
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_split,
        eval_dataset=eval_split if training_args.eval_strategy != "no" else None,
        data_collator=CaptioningCollator(processor, modality),
        processing_class=processor,
        callbacks=[NonFiniteGuardCallback()],
    )
    metrics = train_and_collect_losses(trainer, output.resume)

    # 7. Captions after training, next to the baseline.
    captions = generate_captions(trainer.model, processor, caption_rows, modality, batch_size, generate_kwargs)
    after = caption_metrics(captions, references)
    metrics.update(after)
    metrics.update({f"baseline {name}": value for name, value in baseline.items()})
    if training_args.should_log:
        print(format_report(baseline, after, caption_split_name, caption_rows, references, captions, baseline_captions))

    # 8. The Hub-ready folder: weights + remote code (pipelines included), processor, model card.
    save_output_folder(
        trainer,
        output,
        training_args.overwrite_output_dir,
        metrics=after,
        task_type=PIPELINE_TASKS[modality],
        dataset_name=dataset_name,
        dataset_type=dataset_type,
        dataset_split=caption_split_name,
        evaluation_protocol=CAPTION_PROTOCOL,
        hyperparameters=hyperparameters(model_args, trainer, modality),
        base_model=model_args.model_name_or_path,
        modalities=("text", modality),
    )
    push_output_folder(output, training_args)
    return metrics


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv):
    parser = HfArgumentParser((ModelArguments, CaptioningDataArguments, CaptioningTrainingArguments))
    model_args, data_args, training_args = parse_script_args(parser, argv, default_output_dir=default_output_dir)
    if not training_args.do_train and not model_args.model_name_or_path:
        raise ValueError(
            "--do_train false evaluates a trained captioner: pass --model_name_or_path (an mm checkpoint)."
        )
    return model_args, data_args, training_args


def default_output_dir(known):
    """outputs/run_captioning-<preset> for a training run, outputs/run_captioning-eval-<checkpoint name> for an
    evaluation."""
    if known.do_train:
        return f"outputs/run_captioning-{known.preset}"
    return f"outputs/run_captioning-eval-{Path(known.model_name_or_path or 'model').name}"


# ------------------------------------------------------------------------------------------------ processor & model


def build_processor(model_args, config, train_split):
    """The checkpoint's processor, or a new one sized for the preset's towers with the tokenizer named by
    --tokenizer_name (else one trained on the training captions)."""
    if model_args.model_name_or_path:
        return load_processor(model_args.model_name_or_path, config)
    towers = {"text": config.text_config, "vision": config.vision_config, "audio": config.audio_config}
    return new_processor(towers, train_split, model_args.tokenizer_name)


def build_model(model_args, tokenizer):
    """A captioner from the checkpoint (an MMModel checkpoint gives its towers; the decoder starts untrained), or a
    new one from the preset, sized to the tokenizer."""
    overrides = {}
    if model_args.contrastive_loss_weight is not None:
        overrides["contrastive_loss_weight"] = model_args.contrastive_loss_weight
    if model_args.model_name_or_path:
        model = from_pretrained_safetensors(MMForConditionalGeneration, model_args.model_name_or_path, **overrides)
        if len(tokenizer) > model.config.decoder_config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only "
                f"{model.config.decoder_config.vocab_size}."
            )
        return model
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    text_config = {"vocab_size": len(tokenizer), **{k: v for k, v in special.items() if v is not None}}
    return MMForConditionalGeneration(MMConfig.from_preset(model_args.preset, text_config=text_config, **overrides))


# ------------------------------------------------------------------------------------------------ reporting


def format_report(before, after, split_name, rows, references, captions, baseline_captions, examples=5):
    """BLEU-4 and CIDEr-D before and after training (only the measured ones when `before` is None), with examples."""
    header = ("untrained", "trained") if before is not None else ("measured",)
    lines = [
        f"Captions of {len(rows)} held-out {split_name} items, scored against {sum(map(len, references))} references:",
        f"{'':<8}" + "".join(f"{name:>12}" for name in header),
    ]
    for name, label, digits in (("bleu", "BLEU-4", 2), ("cider", "CIDEr-D", 3)):
        values = (before[name], after[name]) if before is not None else (after[name],)
        lines.append(f"{label:<8}" + "".join(f"{value:>12.{digits}f}" for value in values))
    for index, (refs, caption) in enumerate(list(zip(references, captions))[:examples]):
        label = "trained" if baseline_captions is not None else "caption"
        lines.append(f"  reference: {refs[0]!r}\n{label:>11}: {caption!r}")
        if baseline_captions is not None:
            lines.append(f"  untrained: {baseline_captions[index]!r}")
    return "\n".join(lines)


def hyperparameters(model_args, trainer, modality):
    beams = trainer.args.generation_num_beams
    return {
        "starting point": model_args.model_name_or_path or f"{model_args.preset} preset, from scratch",
        "captions from": modality,
        "contrastive loss weight (CoCa)": trainer.model.config.contrastive_loss_weight,
        "evaluation decoding": "greedy" if beams == 1 else f"{beams} beams",
        **trainer_hyperparameters(trainer),
    }


if __name__ == "__main__":
    main()

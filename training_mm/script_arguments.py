"""The arguments the example scripts share (where the data comes from; run_captioning.py's training defaults), how
they are parsed (command line, optionally after a JSON/YAML file, see `argument_files`), and the scripts' logging."""

import logging
import sys
from dataclasses import dataclass, field
from typing import Literal

import datasets
import transformers
from transformers import TrainingArguments

from .argument_files import expand_argument_file
from .data_workers import dataloader_workers
from .default_checkpoint import DEFAULT_CHECKPOINT


@dataclass
class DataArguments:
    """Where the captioned images/audio come from (default: the built-in synthetic scenes)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset, a folder in imagefolder/audiofolder layout with metadata.jsonl/.csv, a CSV/JSONL "
            "file of paths and captions, or a save_to_disk folder. Default: the built-in data."
        },
    )
    dataset_format: Literal["auto", "karpathy", "audiocaps", "clotho"] = field(
        default="auto",
        metadata={
            "help": "Layout of a local --dataset_name: karpathy (dataset_coco.json/dataset_flickr30k.json and the "
            "images), audiocaps (train/val/test.csv and the clips), clotho (clotho_captions_*.csv and the audio "
            "folders); auto recognises them by their files. Their splits are used as given."
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


@dataclass
class CaptioningDataArguments(DataArguments):
    """`DataArguments`, plus what to caption from (or, for run_lora.py's contrastive task, compare with) and how many
    held-out rows to caption."""

    modality: Literal["image", "audio"] | None = field(
        default=None, metadata={"help": "Caption from images or from audio. Default: image if the data has images."}
    )
    max_eval_samples: int | None = field(
        default=300, metadata={"help": "Held-out rows captioned for BLEU/CIDEr (generation is the slow part)."}
    )


@dataclass
class CaptioningTrainingArguments(TrainingArguments):
    """`TrainingArguments` with run_captioning.py's defaults, sized so that the default run (data generation,
    training, two evaluations, saving) takes a few minutes on 2 CPU cores, and the generation options of its
    evaluation; every one can be overridden."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into a non-empty --output_dir (never done without this flag)."}
    )
    generation_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Longest caption written at evaluation. Default: the model's (its text length)."},
    )
    generation_num_beams: int = field(default=1, metadata={"help": "Beams at evaluation (1: greedy)."})
    # Train, then measure (`--do_train false`: measure the checkpoint only, as transformers' examples' --do_eval).
    do_train: bool = True
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
    # The collator decodes images and audio in these workers (see data_workers.dataloader_workers).
    dataloader_num_workers: int = dataloader_workers()
    dataloader_persistent_workers: bool = dataloader_workers() > 0

    def generate_kwargs(self):
        """The `model.generate` arguments of the evaluation: greedy or beam search, at most
        `generation_max_new_tokens` new tokens when given."""
        kwargs = {"num_beams": self.generation_num_beams, "do_sample": False}
        if self.generation_max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.generation_max_new_tokens
        return kwargs


@dataclass
class GenerationArguments:
    """What the generation examples (run_text_to_image.py, run_text_to_speech.py) share: the contrastive checkpoint
    whose text tower and tokenizer drive generation, the contrastive checkpoint that judges what is generated, and how
    many held-out prompts are generated and measured."""

    text_model_name_or_path: str = field(
        default=DEFAULT_CHECKPOINT,
        metadata={
            "help": "An mm checkpoint whose text tower (frozen by default) and tokenizer drive generation. The default "
            "is trained by run_clip.py if missing.",
            "aliases": ["--model_name_or_path"],
        },
    )
    judge_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The contrastive mm checkpoint that scores what is generated. Default: "
                          "--text_model_name_or_path (outputs/run_clip-small when that is `fresh`)."},
    )
    num_eval_prompts: int = field(default=48, metadata={"help": "Held-out captions generated and measured."})

    def judge_path(self):
        """The judge's checkpoint: --judge_model_name_or_path, else the text tower's (an untrained tower's: the
        default one)."""
        if self.judge_model_name_or_path:
            return self.judge_model_name_or_path
        return DEFAULT_CHECKPOINT if self.text_model_name_or_path == "fresh" else self.text_model_name_or_path


def parse_script_args(parser, argv, default_output_dir):
    """Parses `argv` (default: sys.argv[1:]; a leading .json/.yaml file gives defaults that later flags override,
    see `argument_files`) into the parser's dataclasses, with `--output_dir` defaulting to `default_output_dir(known)`,
    a function of the arguments parsed so far (None: no default)."""
    argv = expand_argument_file(sys.argv[1:] if argv is None else argv)
    known, _ = parser.parse_known_args(argv)
    if known.output_dir is None and (output_dir := default_output_dir(known)) is not None:
        argv += ["--output_dir", output_dir]
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def setup_logging(training_args, script_logger):
    """Logs to stdout at INFO for `script_logger` and training_mm on the processes that log, WARNING elsewhere, and
    keeps transformers and datasets at WARNING."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO if training_args.should_log else logging.WARNING
    for name in (script_logger, "training_mm"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()

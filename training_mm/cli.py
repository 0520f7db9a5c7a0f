"""The steps the example scripts (examples/run_clip.py, run_captioning.py, run_lora.py) share, in the order `main`
runs them: arguments and logging, the output folder and Hub checks that must fail before training, the data splits,
a processor for a new model, training, and the Hub-ready folder at the end.

Each script keeps what is its own (its arguments, model, evaluation and card contents) and calls these for the rest,
so a fix to, say, the output-folder guard reaches all three.
"""

import importlib.util
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import datasets
import transformers
from datasets import IterableDataset
from transformers import AutoTokenizer, TrainingArguments
from transformers.integrations import INTEGRATION_TO_CALLBACK
from transformers.trainer_utils import get_last_checkpoint

from configuration_mm import MMConfig
from processing_mm import MMFeatureExtractor, MMImageProcessor, MMProcessor, train_tokenizer

from .argument_files import expand_argument_file
from .checkpoints import checkpoint_problems, last_complete_checkpoint
from .data import filter_unreadable, load_user_dataset
from .hub import SYNTHETIC_DATASET, describe_model, push_folder_to_hub, write_model_card
from .nonfinite_guard import advice_for, check_finite_files, check_finite_weights
from .synthetic_data import build_synthetic_dataset

logger = logging.getLogger(__name__)

# Captions read to train a tokenizer when the training data is streamed (a stream has no length to read to the end).
TOKENIZER_STREAM_SAMPLES = 100_000
# What the trainer writes into output_dir on its way; anything else there belongs to someone else.
RUN_ARTIFACTS = ("checkpoint-*", "runs")


# ------------------------------------------------------------------------------------------------ arguments


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

    def generate_kwargs(self):
        """The `model.generate` arguments of the evaluation: greedy or beam search, at most
        `generation_max_new_tokens` new tokens when given."""
        kwargs = {"num_beams": self.generation_num_beams, "do_sample": False}
        if self.generation_max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.generation_max_new_tokens
        return kwargs


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


# ------------------------------------------------------------------------------------------------ output & Hub


@dataclass
class RunOutput:
    """Where a run's Hub-ready folder goes: the local `folder`, the checkpoint to `resume` from (or None), the Hub
    `repo_id`, and whether to push it there at the end (`push_to_hub`)."""

    folder: Path
    resume: str | None
    repo_id: str
    push_to_hub: bool


def prepare_output(training_args, overwrite, other_folders=()):
    """The checks that must fail before training rather than after; returns the run's `RunOutput`.

    Resolves `--resume_from_checkpoint` (also into `training_args`, where the meta-controller restores its state
    from), refuses a non-empty `--output_dir` (and `other_folders`, e.g. run_lora.py's `--merge_output_dir`) unless
    `overwrite`, and takes `--push_to_hub` away from `Trainer` (which would push every checkpoint): the folder is
    pushed once, at the end, by `push_output_folder`, and a Hub repo that already has files is refused here.
    """
    folder = Path(training_args.output_dir)
    resume = resolve_resume(training_args.resume_from_checkpoint, folder)
    training_args.resume_from_checkpoint = resume
    check_output_dir(folder, overwrite, resume)
    for other in other_folders:
        check_output_dir(Path(other), overwrite, None)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    repo_id = training_args.hub_model_id or folder.name
    if push_to_hub:
        check_hub_repo_is_empty(repo_id, training_args.hub_token)
    return RunOutput(folder=folder, resume=resume, repo_id=repo_id, push_to_hub=push_to_hub)


def resolve_resume(value, output_dir):
    """`--resume_from_checkpoint last` means the newest complete checkpoint in output_dir (newer, incomplete ones are
    skipped with a warning); a path must be a complete checkpoint (see training_mm.checkpoints)."""
    if value is None:
        return None
    if value == "last":
        return str(last_complete_checkpoint(output_dir))
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such folder (or pass `last`).")
    if problems := checkpoint_problems(value):
        raise ValueError(
            f"--resume_from_checkpoint {value} is not a complete checkpoint: {'; '.join(problems)}. Resume from an "
            "earlier checkpoint-N (or pass `last` for the newest complete one)."
        )
    return value


def check_output_dir(output_dir, overwrite, resume, ignore=()):
    """Refuses to write into a non-empty folder unless asked to (or continuing the run that is there).

    Checked before training and again before writing; the second time, what this run wrote itself (`ignore`:
    checkpoints, TensorBoard logs) does not count. Resuming continues the run in `output_dir` only when the `resume`
    checkpoint lies inside it: a checkpoint of another run would write a new model over the one there.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file; choose a folder.")
    if overwrite or resumes_inside(resume, output_dir) or not output_dir.is_dir():
        return
    entries = sorted(p.name for p in output_dir.iterdir() if not any(p.match(pattern) for pattern in ignore))
    if entries:
        checkpoint = get_last_checkpoint(str(output_dir))
        hint = f" or --resume_from_checkpoint last to continue from {checkpoint}," if checkpoint else ""
        elsewhere = (
            f" --resume_from_checkpoint {resume} is another run's checkpoint (not inside it), so this run would "
            "write a new model over the one there."
            if resume
            else ""
        )
        raise FileExistsError(
            f"Output folder {output_dir} is not empty ({len(entries)} entries: {', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}).{elsewhere} Pass --overwrite_output_dir to write into it anyway,"
            f"{hint} or choose another --output_dir."
        )


def resumes_inside(resume, output_dir):
    """Whether the `resume` checkpoint (a path, or None) lies inside `output_dir`: the run there continues."""
    return resume is not None and Path(resume).resolve().is_relative_to(Path(output_dir).resolve())


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


def save_output_folder(trainer, output, overwrite, what="model", **card):
    """Writes the Hub-ready folder: the trained model (or adapter) with its remote code and processor, and a README.md
    model card (`training_mm.hub.write_model_card` with `card`, titled after the repo, summarising `trainer.model`).

    Checks the folder again first (another process may have written there during training); Trainer's pickled
    arguments are removed, as a Hub folder holds no pickles. Returns whether this process wrote the folder's files.
    """
    check_output_dir(output.folder, overwrite, output.resume, ignore=RUN_ARTIFACTS)
    check_finite_weights(trainer.model, output.folder, advice_for(trainer.args))
    trainer.accelerator.wait_for_everyone()  # every process checked before any writes
    trainer.save_model(str(output.folder))  # every process: FSDP/DeepSpeed gather the weights here
    if not trainer.args.should_save:
        return False
    (output.folder / "training_args.bin").unlink(missing_ok=True)
    write_model_card(
        output.folder,
        model_name=output.repo_id.split("/")[-1],
        repo_id=output.repo_id,
        model_description=describe_model(trainer.model),
        **card,
    )
    save_run_results(trainer, card.get("metrics") or {})
    logger.info("Wrote the %s, processor and model card to %s", what, output.folder)
    return True


def save_run_results(trainer, metrics):
    """`train_results.json`, `eval_results.json` and `all_results.json` in the output folder, as transformers' own
    examples write them (`Trainer.save_metrics`): the training's runtime, throughput and loss, and every figure the
    card's `model-index` reports (`metrics`) with the last `eval_loss`, so the card can be checked against the run."""
    history = trainer.state.log_history
    trainer.save_metrics("train", next((entry for entry in reversed(history) if "train_runtime" in entry), {}))
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    trainer.save_metrics("eval", {**metrics, **({"eval_loss": eval_losses[-1]} if eval_losses else {})})


def push_output_folder(output, training_args, what=""):
    """With --push_to_hub, uploads the output folder to its Hub repo, without the run's checkpoints and logs, which
    stay local (on the process that saves only)."""
    if not (output.push_to_hub and training_args.should_save):
        return
    with tempfile.TemporaryDirectory() as staging:
        staged = Path(staging) / "model"
        shutil.copytree(output.folder, staged, ignore=shutil.ignore_patterns(*RUN_ARTIFACTS))
        check_finite_files(staged)
        commit = push_folder_to_hub(
            staged, output.repo_id, token=training_args.hub_token, private=bool(training_args.hub_private_repo)
        )
    logger.info("Pushed %s%s to the Hub: %s", what, output.folder, commit.commit_url)


def trainer_hyperparameters(trainer):
    """The card's hyper-parameter rows every script reports, read from the trainer after training."""
    args = trainer.args
    return {
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "processes": args.world_size,
        "optimizer steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 2),
        "seed": args.seed,
    }


# ------------------------------------------------------------------------------------------------ data


def load_splits(data_args, training_args, image_size, builtin=None, keep_columns=()):
    """Returns (splits, readable dataset name, dataset id for the model card).

    Without `--dataset_name`, the built-in data: `builtin` = (builder, readable name), by default the synthetic
    scenes; user data keeps `keep_columns` (e.g. label columns) besides image, caption and audio."""
    if data_args.dataset_name is None:
        build, name = builtin or (build_synthetic_dataset, "mm built-in synthetic scenes")
        # One process builds (or loads) the cached data while the others wait, then they all load the cache.
        with training_args.main_process_first(desc="building the built-in data"):
            splits = build(
                num_train=data_args.num_train_samples,
                num_validation=data_args.num_eval_samples,
                num_test=data_args.num_eval_samples,
                image_size=image_size,
            )
        dataset_type = SYNTHETIC_DATASET
    else:
        with training_args.main_process_first(desc="loading the dataset"):
            splits = load_user_dataset(
                data_args.dataset_name,
                image_column=data_args.image_column,
                caption_column=data_args.caption_column,
                audio_column=data_args.audio_column,
                streaming=data_args.streaming,
                keep_columns=keep_columns,
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


def check_splits(splits, dataset_name, training_args, measured):
    """Returns the name of the held-out split the script measures `measured` (e.g. "retrieval") on: test, else
    validation. Streamed training data needs --max_steps; without a validation split, training runs without
    evaluation (with a warning)."""
    held_out = "test" if "test" in splits else "validation"
    if held_out not in splits:
        raise ValueError(
            f"{dataset_name!r} has no test or validation split to measure {measured} on (splits: {sorted(splits)}); "
            "give it more than one row or a validation/test split."
        )
    if isinstance(splits["train"], IterableDataset) and training_args.max_steps <= 0:
        raise ValueError("Streamed data has no length: pass --max_steps (optimizer steps) to say when to stop.")
    if "validation" not in splits and training_args.eval_strategy != "no":
        logger.warning("No validation split: training without evaluation.")
        training_args.eval_strategy = "no"
    return held_out


def image_size_of(vision_config):
    """The square image side a vision tower's config expects (224 for one that does not say)."""
    size = getattr(vision_config, "image_size", 224)
    return size if isinstance(size, int) else max(size)


# ------------------------------------------------------------------------------------------------ checkpoints

# The contrastive checkpoint run_clip.py writes with no arguments: the text tower and judge of the generation examples.
DEFAULT_CHECKPOINT = "outputs/run_clip-small"


def ensure_checkpoint(path, data_args):
    """`path`, after training it with examples/run_clip.py (no other arguments than the data sizes) when it is
    `DEFAULT_CHECKPOINT` and does not exist yet; any other path is returned as given."""
    if Path(path).is_dir() or path != DEFAULT_CHECKPOINT:
        return path
    script = Path(__file__).resolve().parents[1] / "examples" / "run_clip.py"
    if not script.is_file():
        raise FileNotFoundError(f"{path} does not exist, and {script} is not there to train it; pass a checkpoint.")
    logger.info("%s does not exist: training it with examples/run_clip.py first (~5 min on 2 CPU cores).", path)
    spec = importlib.util.spec_from_file_location("run_clip", script)
    run_clip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_clip)
    sizes = {"--num_train_samples": data_args.num_train_samples, "--num_eval_samples": data_args.num_eval_samples}
    run_clip.main(["--output_dir", path, *(str(item) for pair in sizes.items() for item in pair)])
    return path


# ------------------------------------------------------------------------------------------------ processor


def load_processor(path, config=None, tokenizer_name=None):
    """An mm checkpoint's processor, built from this package's classes, so none of the checkpoint's code runs.

    The saved folder names its classes as remote code (`auto_map`, for consumers without the package), so
    `MMProcessor.from_pretrained` and `AutoTokenizer` without a config would ask to run the checkpoint's files, or
    those of any repo its `auto_map` names. Here the image processor and feature extractor are this package's classes,
    and the tokenizer is a transformers class resolved from `config` (default: `MMConfig.from_pretrained(path)`) with
    `trust_remote_code=False`; `tokenizer_name` replaces the checkpoint's tokenizer."""
    if tokenizer_name is None and config is None:
        config = MMConfig.from_pretrained(path)
    return MMProcessor(
        image_processor=MMImageProcessor.from_pretrained(path),
        feature_extractor=MMFeatureExtractor.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_name or path, config=config, trust_remote_code=False),
    )


def new_processor(towers, train_split, tokenizer_source=None, image_kwargs=None):
    """A processor for a new model with the tower configs `towers` ({"text", "vision", "audio"}): images at the
    vision tower's size (normalised with `image_kwargs`, default CLIP's mean/std), log-mel features the audio tower
    takes, and the tokenizer at `tokenizer_source` or, without one, a tokenizer trained on `train_split`'s captions
    with the text tower's vocabulary size; texts are cut to the text tower's positions."""
    max_text_length = getattr(towers["text"], "max_position_embeddings", 512)
    if tokenizer_source:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=False)
        # Longer texts would index past the text tower's position table.
        tokenizer.model_max_length = min(tokenizer.model_max_length, max_text_length)
    else:
        captions = (
            (row["caption"] for row in train_split.select_columns(["caption"]).take(TOKENIZER_STREAM_SAMPLES))
            if isinstance(train_split, IterableDataset)
            else train_split["caption"]
        )
        # Deterministic for the same captions, so every process of a distributed run trains the same tokenizer.
        tokenizer = train_tokenizer(captions, vocab_size=towers["text"].vocab_size, model_max_length=max_text_length)
        logger.info("Trained a tokenizer on the training captions: %d tokens", len(tokenizer))
    image_size = image_size_of(towers["vision"])
    audio = towers["audio"]
    return MMProcessor(
        image_processor=MMImageProcessor(size=image_size, crop_size=image_size, **(image_kwargs or {})),
        feature_extractor=MMFeatureExtractor(
            feature_size=getattr(audio, "num_mel_bins", 80),
            max_length=2 * getattr(audio, "max_source_positions", 500),
        ),
        tokenizer=tokenizer,
    )


# ------------------------------------------------------------------------------------------------ training


def run_before_reporting(trainer, callback):
    """Moves `callback` (already one of the trainer's) ahead of the `report_to` integrations (TensorBoard, W&B, ...),
    so that what it adds to the logs in `on_log` (the meta-controller's `meta_*` values) reaches them too.

    `Trainer` lists its callbacks as DefaultFlowCallback, the integrations, then the `callbacks` it was given, and
    `CallbackHandler` calls them in that order, so by default the integrations have written each log before a user
    callback sees it.
    """
    callbacks = trainer.callback_handler.callbacks
    callbacks.remove(callback)
    reporting = tuple(INTEGRATION_TO_CALLBACK.values())
    first = next((i for i, other in enumerate(callbacks) if isinstance(other, reporting)), len(callbacks))
    callbacks.insert(first, callback)


def train_and_collect_losses(trainer, resume):
    """Trains (from the `resume` checkpoint, if any); returns `train_loss` and, when there was an evaluation, the
    last `eval_loss`."""
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {"train_loss": train_result.training_loss}
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    if eval_losses:
        metrics["eval_loss"] = eval_losses[-1]
    return metrics

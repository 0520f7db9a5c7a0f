"""The data splits a script trains and measures on: the built-in data or the user's (see `data`), cut to
--max_train_samples, and checked for what the script needs (a held-out split, a length or --max_steps)."""

import logging

from datasets import IterableDataset

from .audio_decoding import resample_column
from .data import filter_unreadable, load_user_dataset
from .dataset_formats import detect_format, format_name
from .hub import SYNTHETIC_DATASET
from .synthetic_data import build_synthetic_dataset

logger = logging.getLogger(__name__)


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
                dataset_format=data_args.dataset_format,
            )
            # Rows whose image/audio cannot be decoded or whose caption is empty are logged with a count and dropped;
            # audio at another rate than the model's is resampled once, here, not at every epoch. Both are cached
            # `map`s, which the processes waiting above read instead of doing them again.
            splits = {split_name: filter_unreadable(split) for split_name, split in splits.items()}
            splits = {split_name: resample_column(split) for split_name, split in splits.items()}
        name = dataset_type = data_args.dataset_name
        if layout := detect_format(data_args.dataset_name, data_args.dataset_format):
            name = f"{format_name(data_args.dataset_name, layout)} from {data_args.dataset_name}"
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

"""User data for the mm training examples: load a dataset from wherever it lives, in the columns mm reads.

Decoding audio is `audio_decoding`'s concern, dropping bad rows `unreadable_rows`'; `decode_audio`, `SAMPLING_RATE`
and `filter_unreadable` are importable from here too.

Every loader returns the same shape of data: splits `train` and `validation` (plus any other split the source
has) with the columns `caption` (str) and `image` (`datasets.Image`) and/or `audio` (a `{"bytes", "path"}`
dict), renamed from whatever the source calls them.

Audio is never decoded by `datasets`: from 4.0 on it decodes `Audio` with torchcodec, which mm does not
depend on. Audio columns therefore stay `datasets.Audio(decode=False)` and `decode_audio` reads them with
`soundfile`. In streaming mode even `Audio(decode=False)` is out of reach (an `IterableDataset` re-encodes
every row through `Audio.encode_example`, which imports torchcodec), so there the column is typed as the
plain struct `AUDIO_STRUCT`; its values are the same `{"bytes", "path"}` dicts.
"""

import hashlib
import logging
import os
from itertools import islice
from pathlib import Path

import datasets
from datasets import Audio, DatasetDict, Image, IterableDataset, IterableDatasetDict, Value
from datasets.packaged_modules.audiofolder.audiofolder import AudioFolder
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

# Decoding and bad rows live in their own modules; these names are imported from here by the scripts.
from .audio_decoding import SAMPLING_RATE, decode_audio  # noqa: F401
from .data_workers import files_state, map_processes, stream_shards
from .media_inputs import undecoded
from .unreadable_rows import filter_unreadable  # noqa: F401

from .dataset_formats import ITEM_COLUMN, detect_format, read_dataset_format


logger = logging.getLogger(__name__)

AUDIO_STRUCT = {"bytes": Value("binary"), "path": Value("string")}

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
TABLE_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
# Split folder names a metadata folder may use, mapped to the names the examples expect.
SPLIT_NAMES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
}

# When a source has no validation split, this share of `train` becomes one: at least 1 row, at least
# MIN_VALIDATION_ROWS (a gallery retrieval reports on, see training_mm.retrieval) when that leaves 80% of the rows
# for training, at most MAX_VALIDATION_ROWS.
VALIDATION_FRACTION = 0.05
MIN_VALIDATION_ROWS = 100
MAX_VALIDATION_ROWS = 1000


# ---------------------------------------------------------------------------------------------- loading


def load_user_dataset(
    dataset_name,
    *,
    image_column=None,
    caption_column="caption",
    audio_column=None,
    streaming=False,
    keep_columns=(),
    dataset_format="auto",
):
    """Load captioned images and/or audio for training, from a local path or the Hub.

    `dataset_name` is, in the order checked:
    - a benchmark in its published layout (Karpathy JSON, AudioCaps or Clotho CSVs; `dataset_format` names it, `auto`
      recognises it), read by `training_mm.dataset_formats` with its own splits and a `label` column (the item);
    - a `save_to_disk` folder (it holds `dataset_dict.json` or `state.json`);
    - a folder in imagefolder/audiofolder layout: `metadata.jsonl` or `metadata.csv` at its root (one `train`
      split) or in `train/`, `validation/` (or `valid/`, `dev/`) and `test/` subfolders;
    - a `.jsonl`/`.json`/`.csv` file (one `train` split);
    - otherwise a Hub dataset name, passed to `datasets.load_dataset`.
    In metadata tables, `file_name` is the image or audio file (by its extension) and `<name>_file_name`
    becomes column `<name>`, as in `datasets`' folder loaders; relative paths in the image and audio
    columns are resolved against the table's folder.

    `image_column`/`audio_column` default to `image`/`audio` when those columns exist; at least one must.
    The result keeps only `image`, `caption` and `audio`, under those names, and the `keep_columns` (e.g. labels)
    under their own; `caption_column=None` loads no text (for classification of images and/or audio). A source
    without a validation split gets one: 5% of `train` (at least 1 row, at least 100 when that leaves 80% for training, at most
    1000), drawn with a fixed seed; from a Hub stream, its first rows, sized the same way from a count of the
    stream (up to the 20,000 rows where the cap is reached); a stream of fewer than 2 rows is an error. Rows of
    `validation`/`test` that are also in `train` (same caption, image and audio content) are dropped from the
    held-out split with a warning (`drop_shared_rows`). Local sources are read into memory-mapped Arrow files
    either way; `streaming=True` then wraps them as `IterableDataset`s, and streams Hub datasets.

    >>> splits = load_user_dataset("my_photos/", caption_column="text")  # doctest: +SKIP
    >>> splits["train"].column_names  # doctest: +SKIP
    ['image', 'caption']
    """
    dataset_name = os.fspath(dataset_name)
    path = Path(dataset_name).expanduser()
    if layout := detect_format(path, dataset_format):
        splits = read_dataset_format(path, layout)
        keep_columns = tuple(dict.fromkeys((*keep_columns, ITEM_COLUMN)))
    elif path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "state.json")):
        splits = datasets.load_from_disk(str(path))
        splits = splits if isinstance(splits, DatasetDict) else DatasetDict(train=splits)
    elif path.is_dir():
        splits = DatasetDict({split: _load_table(table) for split, table in _metadata_tables(path).items()})
    elif path.is_file():
        splits = DatasetDict(train=_load_table(path))
    elif dataset_name.startswith((".", "/", "~")) or path.suffix.lower() in TABLE_LOADERS:
        raise FileNotFoundError(f"{dataset_name!r} does not exist (and is not a Hub dataset name like 'org/name').")
    else:
        splits = _load_from_hub(dataset_name, streaming)
    splits = {SPLIT_NAMES.get(name, name): split for name, split in splits.items()}
    splits = {
        name: _canonical_columns(
            split,
            _pick_columns(split, f"{dataset_name!r} ({name})", image_column, caption_column, audio_column, keep_columns),
        )
        for name, split in splits.items()
    }
    splits = _with_validation_split(splits)
    splits = drop_shared_rows(splits)
    if streaming and not isinstance(splits["train"], IterableDataset):
        splits = {name: _to_iterable(split) for name, split in splits.items()}
    return IterableDatasetDict(splits) if streaming else DatasetDict(splits)


def _metadata_tables(folder):
    """Map split names to the metadata table of each split in an imagefolder/audiofolder-style folder."""
    found = {}
    for split_dir, split in [(folder, "train"), *((folder / name, alias) for name, alias in SPLIT_NAMES.items())]:
        tables = [split_dir / name for name in METADATA_FILES if (split_dir / name).is_file()]
        if len(tables) > 1:
            raise ValueError(f"{split_dir} has both {tables[0].name} and {tables[1].name}; keep one of them.")
        if tables and split in found:
            raise ValueError(f"{found[split]} and {tables[0]} both define split {split!r}; remove one of them.")
        if tables:
            found[split] = tables[0]
    if not found:
        raise ValueError(
            f"{folder} has no {' or '.join(METADATA_FILES)} at its root or in a train/validation/test subfolder, "
            "and is not a `save_to_disk` folder. Add a metadata table with a `file_name` column (the image or "
            "audio file, relative to the table) and a caption column."
        )
    return found


def _load_table(table):
    """Read a JSONL/CSV table of files and captions; name its file columns and make their paths absolute."""
    table = Path(table)
    loader = TABLE_LOADERS.get(table.suffix.lower())
    if loader is None:
        raise ValueError(f"Cannot read {table}: expected one of {sorted(TABLE_LOADERS)}, or a folder.")
    _check_has_rows(table, header_lines=1 if loader == "csv" else 0)
    dataset = datasets.load_dataset(loader, data_files=str(table), split="train")
    dataset = dataset.rename_columns(_file_name_columns(dataset, table))
    path_columns = [name for name, feature in dataset.features.items() if _holds_paths(dataset, name, feature)]
    if not path_columns:
        return dataset
    for name in path_columns:
        if dataset.features[name] == Value("large_string"):  # from the CSV reader; Image/Audio casts refuse it
            dataset = dataset.cast_column(name, Value("string"))
    base_dir = str(table.resolve().parent)

    def absolute_paths(batch):
        return {name: [_resolve(base_dir, value) for value in batch[name]] for name in path_columns}

    return dataset.map(absolute_paths, batched=True, desc=f"Resolving paths in {table.name}")


def _check_has_rows(table, header_lines):
    """Fails, naming the file, when a table has no data rows (`datasets` would fail with an error that does not)."""
    with open(table, encoding="utf-8", errors="replace") as lines:
        non_blank = sum(1 for _ in islice((line for line in lines if line.strip()), header_lines + 1))
    if non_blank <= header_lines:
        what = "is empty" if non_blank == 0 else "holds only a header line"
        raise ValueError(f"{table} {what}: it has no rows. Add a row per image/audio file with its caption.")


def _file_name_columns(dataset, table):
    """The renames `datasets`' folder loaders apply: `file_name` -> image/audio, `x_file_name` -> `x`."""
    renames = {name: name[: -len("_file_name")] for name in dataset.column_names if name.endswith("_file_name")}
    if "file_name" in dataset.column_names and len(dataset):
        extension = os.path.splitext(str(dataset[0]["file_name"]))[1].lower()
        if extension in ImageFolder.EXTENSIONS:
            renames["file_name"] = "image"
        elif extension in AudioFolder.EXTENSIONS:
            renames["file_name"] = "audio"
        else:
            raise ValueError(
                f"{table}: `file_name` {dataset[0]['file_name']!r} is neither an image nor an audio file; rename "
                "the column (e.g. to `image_file_name`) or point it at files with a known extension."
            )
    return renames


def _holds_paths(dataset, column, feature):
    """Whether a column names files: it holds strings, and its first one has an image or audio extension."""
    if feature not in (Value("string"), Value("large_string")):
        return False
    first = next((value for value in dataset[column] if value), None)
    extension = os.path.splitext(first or "")[1].lower()
    return extension in ImageFolder.EXTENSIONS or extension in AudioFolder.EXTENSIONS


def _resolve(base_dir, value):
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base_dir, value))


def _load_from_hub(name, streaming):
    try:
        splits = datasets.load_dataset(name, streaming=streaming)
    except Exception as err:  # the Hub client raises many types (offline, not found, gated); all mean the same here
        raise ValueError(
            f"{name!r} is not a local file or folder, and loading it from the Hub failed: {err}"
        ) from err
    if streaming:
        # Some streamed datasets only learn their columns from the first rows; column checks need them now.
        splits = IterableDatasetDict({split_name: split._resolve_features() for split_name, split in splits.items()})
    return splits


def _pick_columns(split, source, image_column, caption_column, audio_column, keep_columns=()):
    """Map the roles `image`/`caption`/`audio` (and `keep_columns`, to themselves) to the source's columns, or explain
    which flag to set."""
    columns = split.column_names

    def require(column, flag):
        if column not in columns:
            raise ValueError(
                f"Column {column!r} not found in {source}; its columns are {columns}. "
                f"Pass --{flag} with one of them."
            )
        return column

    roles = {} if caption_column is None else {"caption": require(caption_column, "caption_column")}
    for role, column in (("image", image_column), ("audio", audio_column)):
        if column is not None:
            roles[role] = require(column, f"{role}_column")
        elif role in columns:
            roles[role] = role
    if not set(roles) & {"image", "audio"} and (caption_column is not None or not roles):
        raise ValueError(
            f"{source} has no image or audio column; its columns are {columns}. "
            "Pass --image_column and/or --audio_column."
        )
    for column in keep_columns:
        roles[column] = require(column, "label_column")
    caption_type = (split.features or {}).get(caption_column)
    if isinstance(caption_type, Value) and caption_type.dtype not in ("string", "large_string"):
        raise ValueError(
            f"Column {caption_column!r} of {source} holds {caption_type.dtype} values, not text captions; its "
            f"columns are {columns}. Pass --caption_column with the column of captions."
        )
    return roles


def _canonical_columns(split, roles):
    """Keep the chosen columns, named `image`/`caption`/`audio`, with the feature types mm reads."""
    split = split.select_columns(list(roles.values()))
    split = split.rename_columns({column: role for role, column in roles.items() if column != role})
    if "image" in roles:
        split = split.cast_column("image", Image())
    if "audio" in roles:
        streaming = isinstance(split, IterableDataset)
        split = split.cast_column("audio", AUDIO_STRUCT if streaming else Audio(decode=False))
    return split


def _with_validation_split(splits):
    """Carve a deterministic validation split off `train` when the source has none (sizes: `_validation_rows`)."""
    if "validation" in splits or "train" not in splits:
        return splits
    train = splits["train"]
    if isinstance(train, IterableDataset):
        # A stream has no length: count it as far as the size depends on it, reading captions only.
        counted = sum(1 for _ in islice(train.select_columns(["caption"]), _STREAM_ROWS_COUNTED))
        if counted < 2:
            raise ValueError(
                f"The streamed train split has {counted} row(s): too small to split into train and validation. Give "
                "the dataset a validation split or more rows, or load it without --streaming."
            )
        size = _validation_rows(counted)
        logger.info("Validation split: the first %d rows of the stream (it has %s rows).", size,
                    counted if counted < _STREAM_ROWS_COUNTED else f"at least {counted}")  # fmt: skip
        return {**splits, "train": train.skip(size), "validation": train.take(size)}
    if len(train) < 2:
        logger.warning("train has %d row(s): too few to carve a validation split from; none made.", len(train))
        return splits
    carved = train.train_test_split(test_size=_validation_rows(len(train)), seed=0)
    return {**splits, "train": carved["train"], "validation": carved["test"]}


def _validation_rows(num_rows):
    """How many of `num_rows` training rows become the validation split (see the constants at the top)."""
    floor = MIN_VALIDATION_ROWS if num_rows >= 5 * MIN_VALIDATION_ROWS else 1
    return min(MAX_VALIDATION_ROWS, max(floor, round(VALIDATION_FRACTION * num_rows)))


# Beyond this many rows, a stream's validation split has MAX_VALIDATION_ROWS whatever its length.
_STREAM_ROWS_COUNTED = round(MAX_VALIDATION_ROWS / VALIDATION_FRACTION)


def drop_shared_rows(splits, held_out=("validation", "test")):
    """Drop the rows of the `held_out` splits that are also in `train` (same caption, and the same bytes in the image
    and audio files, wherever they lie), with a warning that counts them: a held-out row the model trained on
    measures memory, not generalisation. Splits that are streams are returned as they are (not checked)."""
    if not isinstance(splits.get("train"), datasets.Dataset):
        if any(name in splits for name in held_out):
            logger.info("Streamed data: held-out rows are not compared with train for rows they share.")
        return splits
    checked = [name for name in held_out if isinstance(splits.get(name), datasets.Dataset)]
    if not checked:
        return splits
    seen = set(_row_fingerprints(splits["train"], "train"))
    splits = dict(splits)
    for name in checked:
        fingerprints = _row_fingerprints(splits[name], name)
        shared = {index for index, fingerprint in enumerate(fingerprints) if fingerprint in seen}
        if shared:
            logger.warning(
                "%s: dropped %d of %d rows that are also in train (same caption, image and audio), so that they "
                "are not measured as held out%s.", name, len(shared), len(fingerprints),
                "; nothing is left, so the split is left out" if len(shared) == len(fingerprints) else "",
            )  # fmt: skip
            kept = [index for index in range(len(fingerprints)) if index not in shared]
            if kept:
                splits[name] = splits[name].select(kept)
            else:
                del splits[name]
    return splits


def _row_fingerprints(dataset, name):
    """A digest of each row's caption and media contents (a file's bytes, not its path), computed in parallel
    processes for a large split (a cached `map`, as the validity check)."""
    columns = [column for column in ("caption", "image", "audio") if column in dataset.column_names]
    rows = undecoded(dataset.select_columns(columns))
    return rows.map(
        _fingerprints,
        batched=True,
        fn_kwargs={"media": columns[1:], "files": files_state(rows, columns[1:])},
        remove_columns=columns,
        num_proc=map_processes(len(rows)),
        desc=f"Comparing {name} with train",
    )["fingerprint"]


def _fingerprints(batch, media, files):
    """`files` (`data_workers.files_state`) is not read: it keys the map's cache on the files' state."""
    digests = []
    for index, caption in enumerate(batch["caption"]):
        digest = hashlib.blake2b(str(caption).encode(), digest_size=16)
        for column in media:
            digest.update(b"\0" + _media_bytes(batch[column][index]))
        digests.append(digest.digest())
    return {"fingerprint": digests}


def _media_bytes(value):
    """The bytes of an undecoded image/audio value; a file that cannot be read stands for itself by its path."""
    if not isinstance(value, dict):
        return repr(value).encode()
    if value.get("bytes"):
        return value["bytes"]
    try:
        return Path(value["path"]).read_bytes()
    except (OSError, TypeError):
        return repr(value.get("path")).encode()


def _to_iterable(split):
    if "audio" in split.column_names:
        split = split.cast_column("audio", AUDIO_STRUCT)  # see the module docstring
    # Several shards, so that each DataLoader worker reads (and decodes) its own part of the stream.
    return split.to_iterable_dataset(num_shards=stream_shards(len(split)))

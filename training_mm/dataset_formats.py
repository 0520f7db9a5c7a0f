"""Retrieval and captioning benchmarks in the layouts they are distributed in, read from local files (nothing
downloads): Karpathy's split JSON for COCO and Flickr30k, the AudioCaps CSVs, and the Clotho caption CSVs.

Each reader returns one row per (image or clip, caption) with the columns `image` or `audio` (a file path),
`caption`, and `label`: the item the caption describes (the image or clip id), so that a model's retrieval is scored
by the published protocol (`training_mm.retrieval`: a gallery of unique items, a hit when any of an item's captions
is retrieved) and the contrastive loss treats the captions of one item as positives of each other. Splits are the
benchmark's own, renamed to train/validation/test:

- **Karpathy** (`dataset_coco.json`, `dataset_flickr30k.json`, `dataset_flickr8k.json`; `--dataset_name` is the
  file or the folder holding it): `train` and `restval` (the 30k COCO validation images Karpathy gives to training)
  are `train`, `val` is `validation`, `test` is `test`. Images are found under the JSON's folder, its `images/` or
  `<name>-images/` subfolder (e.g. `flickr30k-images/`), at `filepath/filename` (COCO) or `filename` (Flickr).
- **AudioCaps** (a folder with `train.csv`, `val.csv`, `test.csv`: `audiocap_id,youtube_id,start_time,caption`):
  clips are the files `<youtube_id>`, `Y<youtube_id>` or `<audiocap_id>` (`.wav` or `.flac`) in the folder, its
  split subfolder (`train/`, `val/`, `test/`) or `audio/<split>/`. Clips that were never downloaded (AudioCaps
  points at YouTube videos, some of them gone) are left out with a count in the log.
- **Clotho** (a folder with `clotho_captions_{development,validation,evaluation}.csv`: `file_name,caption_1..5`):
  clips in `development/`, `validation/`, `evaluation/` (or `clotho_audio_<split>/`); development is `train`,
  evaluation is `test`.

`detect_format(path)` recognises each layout by its file names; `--dataset_format` names it outright.

>>> splits = read_dataset_format("data/coco", "karpathy")  # doctest: +SKIP
>>> splits["test"].column_names  # doctest: +SKIP
['image', 'caption', 'label']
"""

import csv
import json
import logging
from pathlib import Path

from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

# What `--dataset_format` accepts: `auto` recognises the layouts below by their files, and otherwise leaves the
# dataset to the generic loaders of `training_mm.data` (folders with metadata tables, CSV/JSONL, saved, Hub).
DATASET_FORMATS = ("auto", "karpathy", "audiocaps", "clotho")
# The column naming the image or clip a caption describes.
ITEM_COLUMN = "label"

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "validation", "test": "test"}
AUDIOCAPS_SPLITS = {"train": "train", "val": "validation", "test": "test"}
CLOTHO_SPLITS = {"development": "train", "validation": "validation", "evaluation": "test"}
AUDIO_EXTENSIONS = (".wav", ".flac")
DATASETS_FILES = ("dataset_dict.json", "dataset_info.json")


def detect_format(path, dataset_format="auto"):
    """The layout of the local file or folder `path`: `dataset_format` when it names one (checked), else the one
    its files show, or None (not one of these layouts)."""
    path = Path(path).expanduser()
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"--dataset_format must be one of {list(DATASET_FORMATS)}, got {dataset_format!r}.")
    found = next((name for name, matches in _SIGNATURES.items() if path.exists() and matches(path)), None)
    if dataset_format != "auto" and found != dataset_format:
        raise ValueError(
            f"--dataset_format {dataset_format}: {path} is not in that layout. {_EXPECTED[dataset_format]}"
        )
    return found


def read_dataset_format(path, dataset_format):
    """The splits of the `dataset_format` dataset at `path`, as a `DatasetDict` of `image`/`audio` paths,
    `caption` and `label` rows."""
    return DatasetDict(_READERS[dataset_format](Path(path).expanduser()))


def format_name(path, dataset_format):
    """A readable name of the benchmark at `path` for logs and the model card, e.g. "coco (Karpathy splits)"."""
    if dataset_format == "karpathy":
        return f"{_karpathy_json(Path(path).expanduser()).stem.removeprefix('dataset_')} (Karpathy splits)"
    return {"audiocaps": "AudioCaps", "clotho": "Clotho"}[dataset_format]


# ------------------------------------------------------------------------------------------------ Karpathy JSON


def _karpathy_json(path):
    def is_split_file(file):  # `datasets` writes dataset_dict.json and dataset_info.json: not Karpathy's
        return file.name.startswith("dataset_") and file.suffix == ".json" and file.name not in DATASETS_FILES

    if path.is_file():
        return path if is_split_file(path) else None
    found = sorted(filter(is_split_file, path.glob("dataset_*.json"))) if path.is_dir() else []
    if len(found) > 1:
        raise ValueError(f"{path} holds several Karpathy split files ({[p.name for p in found]}); pass one of them.")
    return found[0] if found else None


def read_karpathy(path):
    """Karpathy's split JSON: `{"dataset": "coco", "images": [{"filepath", "filename", "split", "sentences":
    [{"raw"}], "cocoid"|"imgid"}]}` (see the module docstring for where the images are looked for)."""
    table = _karpathy_json(path)
    with open(table, encoding="utf-8") as file:
        entries = json.load(file)["images"]
    if not entries:
        raise ValueError(f"{table} lists no images.")
    root = _image_root(table, entries[0])
    rows = {}
    for entry in entries:
        split = KARPATHY_SPLITS.get(entry["split"])
        if split is None:
            raise ValueError(
                f"{table}: image {entry['filename']!r} has split {entry['split']!r}, not one of "
                f"{list(KARPATHY_SPLITS)}."
            )
        image = str(root / entry.get("filepath", "") / entry["filename"])
        item = str(entry.get("cocoid", entry.get("imgid", entry["filename"])))
        for sentence in entry["sentences"]:
            rows.setdefault(split, []).append({"image": image, "caption": sentence["raw"].strip(), ITEM_COLUMN: item})
    return _as_splits(rows, table)


def _image_root(table, entry):
    """The folder the Karpathy JSON's image paths are relative to, found by its first image."""
    base = table.parent
    name = table.stem.removeprefix("dataset_")
    candidates = [base, base / "images", base / f"{name}-images", base / f"{name}_images"]
    relative = Path(entry.get("filepath", "")) / entry["filename"]
    for root in candidates:
        if (root / relative).is_file():
            return root
    raise FileNotFoundError(
        f"{table}: its first image {relative} is in none of {[str(c) for c in candidates]}; put the images "
        "folder next to the JSON (as images/ or the dataset's own folder name)."
    )


# ------------------------------------------------------------------------------------------------ AudioCaps CSV


def _is_audiocaps(path):
    return path.is_dir() and all(
        _csv_header(path / f"{split}.csv") >= {"audiocap_id", "youtube_id", "caption"} for split in AUDIOCAPS_SPLITS
    )


def read_audiocaps(path):
    """AudioCaps' `train.csv`/`val.csv`/`test.csv` and the clips downloaded for them (see the module docstring)."""
    rows = {}
    for name, split in AUDIOCAPS_SPLITS.items():
        table = path / f"{name}.csv"
        folders = [path, path / name, path / "audio" / name, path / "audio"]
        missing = 0
        for record in _csv_records(table):
            stems = (record["youtube_id"], f"Y{record['youtube_id']}", record["audiocap_id"])
            audio = _first_file(folders, stems)
            if audio is None:
                missing += 1
                continue
            rows.setdefault(split, []).append(
                {"audio": str(audio), "caption": record["caption"].strip(), ITEM_COLUMN: record["youtube_id"]}
            )
        if missing:
            logger.warning("%s: %d captions have no downloaded clip in %s; left out.", table, missing, folders[:3])
    return _as_splits(rows, path)


def _first_file(folders, stems):
    for folder in folders:
        for stem in stems:
            for extension in AUDIO_EXTENSIONS:
                if (candidate := folder / f"{stem}{extension}").is_file():
                    return candidate
    return None


# ------------------------------------------------------------------------------------------------ Clotho CSVs


def _is_clotho(path):
    return path.is_dir() and any((path / f"clotho_captions_{name}.csv").is_file() for name in CLOTHO_SPLITS)


def read_clotho(path):
    """Clotho's `clotho_captions_<split>.csv` (`file_name`, `caption_1`..`caption_5`) and its audio folders."""
    rows = {}
    for name, split in CLOTHO_SPLITS.items():
        table = path / f"clotho_captions_{name}.csv"
        if not table.is_file():
            continue
        folder = next((f for f in (path / name, path / f"clotho_audio_{name}") if f.is_dir()), path / name)
        for record in _csv_records(table):
            audio = folder / record["file_name"]
            if not audio.is_file():
                raise FileNotFoundError(f"{table}: clip {record['file_name']!r} is not in {folder}; extract the "
                                        f"{name} audio there (or into clotho_audio_{name}/).")  # fmt: skip
            captions = [value.strip() for key, value in record.items() if key.startswith("caption_") and value]
            rows.setdefault(split, []).extend(
                {"audio": str(audio), "caption": caption, ITEM_COLUMN: record["file_name"]} for caption in captions
            )
    return _as_splits(rows, path)


# ------------------------------------------------------------------------------------------------ shared


def _csv_header(table):
    if not table.is_file():
        return set()
    with open(table, newline="", encoding="utf-8") as file:
        return set(next(csv.reader(file), []))


def _csv_records(table):
    with open(table, newline="", encoding="utf-8") as file:
        yield from csv.DictReader(file)


def _as_splits(rows, source):
    if "train" not in rows:
        raise ValueError(f"{source}: no training rows found (splits with rows: {sorted(rows)}).")
    return {split: Dataset.from_list(split_rows) for split, split_rows in rows.items()}


_SIGNATURES = {
    "karpathy": lambda path: _karpathy_json(path) is not None,
    "audiocaps": _is_audiocaps,
    "clotho": _is_clotho,
}
_READERS = {"karpathy": read_karpathy, "audiocaps": read_audiocaps, "clotho": read_clotho}
_EXPECTED = {
    "karpathy": "Expected a dataset_<name>.json file (Karpathy's splits), or a folder holding one.",
    "audiocaps": "Expected a folder with train.csv, val.csv and test.csv (audiocap_id, youtube_id, caption columns).",
    "clotho": "Expected a folder with clotho_captions_development/validation/evaluation.csv.",
}

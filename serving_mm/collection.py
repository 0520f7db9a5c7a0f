"""`mm-index`: embeds a collection with an mm checkpoint into FAISS indexes that `mm-serve --index` searches.

    mm-index build outputs/run_clip-small photos/ --output photos-index        # a folder of images and/or audio
    mm-index build outputs/run_clip-small items.csv --output items-index       # a CSV/JSONL of paths (+ captions)
    mm-index add photos-index more_photos/                                     # appended, not rebuilt

A folder is read recursively by file extension; a `metadata.jsonl`/`metadata.csv` in it (imagefolder's layout:
`file_name` and `caption`/`text` columns) adds captions. A CSV/JSONL names its files in an `image`, `audio`,
`file_name` or `path` column (relative to the table's folder) and may have a `caption`/`text` column. Audio at
another sampling rate is resampled; unreadable files are skipped with a warning.
"""

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from training_mm.data import decode_audio

from .index import EXACT_THRESHOLD, MEDIA, EmbeddingIndex
from .runner import BACKENDS, load_runner

logger = logging.getLogger("mm-index")

EXTENSIONS = {
    "image": {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"},
    "audio": {".wav", ".flac", ".ogg"},
}
PATH_COLUMNS = ("image", "audio", "file_name", "path", "file")
CAPTION_COLUMNS = ("caption", "text")


def read_collection(source) -> dict[str, list[dict]]:
    """The items of a folder or a CSV/JSONL, per modality: `{"image": [{"path", "file", "caption"?}, ...], ...}`."""
    source = Path(source)
    if source.is_dir():
        tables = [source / name for name in ("metadata.jsonl", "metadata.csv") if (source / name).is_file()]
        if tables:
            return _from_table(tables[0])
        files = sorted(p for p in source.rglob("*") if p.is_file())
        rows = [{"path": str(p.resolve()), "file": str(p.relative_to(source))} for p in files]
        return _by_modality(rows, source)
    if source.suffix.lower() in (".csv", ".jsonl", ".json"):
        return _from_table(source)
    raise ValueError(f"{source} is neither a folder nor a .csv/.jsonl file.")


def embed_items(runner, modality: str, items: list[dict], batch_size: int = 64) -> tuple[np.ndarray, list[dict]]:
    """Embeddings of the readable items (with a progress bar) and the metadata rows of the ones embedded."""
    vectors, kept, skipped = [], [], []
    for start in tqdm(range(0, len(items), batch_size), desc=f"Embedding {modality}", unit="batch"):
        batch, media = items[start : start + batch_size], []
        for item in batch:
            try:
                media.append(_load(runner, modality, item["path"]))
                kept.append(item)
            except Exception as error:
                skipped.append(f"{item['path']}: {error}")
        if media:
            vectors.append(runner.embed_images(media) if modality == "image" else runner.embed_audio(media))
    if skipped:
        logger.warning("Skipped %d unreadable %s file(s), e.g. %s", len(skipped), modality, "; ".join(skipped[:3]))
    dim = runner.embedding_dim
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), kept


def build(checkpoint, source, output, exact_threshold=EXACT_THRESHOLD, batch_size=64, backend="torch") -> dict:
    """Embeds `source` and writes one index per modality found to `output`; returns (and saves) `index.json`."""
    runner = load_runner(checkpoint, backend=backend)
    collection = read_collection(source)
    if not collection:
        raise ValueError(f"{source} holds no image ({sorted(EXTENSIONS['image'])}) or audio files.")
    info = {"checkpoint": str(checkpoint), "embedding_dim": runner.embedding_dim, "modalities": {}}
    for modality, items in collection.items():
        embeddings, kept = embed_items(runner, modality, items, batch_size)
        start = time.perf_counter()
        index = EmbeddingIndex.build(embeddings, kept, exact_threshold)
        entry = {"kind": index.kind, "count": len(index), "build_seconds": round(time.perf_counter() - start, 3)}
        if index.kind != "exact":
            entry["recall_at_10"] = index.recall_at_10(embeddings)
        index.save(output, modality)
        info["modalities"][modality] = entry
        print(_summary(modality, entry))
    Path(output, "index.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def add(index_dir, source, batch_size=64, backend="torch") -> dict:
    """Embeds `source` with the index's own checkpoint and appends it to the existing indexes (a modality new to
    the folder gets a new index)."""
    info = json.loads(Path(index_dir, "index.json").read_text())
    runner = load_runner(info["checkpoint"], backend=backend)
    for modality, items in read_collection(source).items():
        embeddings, kept = embed_items(runner, modality, items, batch_size)
        if modality in info["modalities"]:
            index = EmbeddingIndex.load(index_dir, modality)
            index.add(embeddings, kept)
        else:
            index = EmbeddingIndex.build(embeddings, kept)
        index.save(index_dir, modality)
        info["modalities"][modality] = {**info["modalities"].get(modality, {}), "kind": index.kind, "count": len(index)}
        print(f"{modality}: added {len(kept)}, now {len(index)} items ({index.kind})")
    Path(index_dir, "index.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mm-index", description="Build and extend FAISS indexes of a collection.")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="embed a folder or CSV/JSONL into a new index folder")
    make.add_argument("checkpoint", help="an mm checkpoint folder or Hub id")
    make.add_argument("source", help="a folder of images/audio, or a CSV/JSONL of paths and captions")
    make.add_argument("--output", required=True, help="the index folder to write")
    make.add_argument("--exact_threshold", type=int, default=EXACT_THRESHOLD, help="HNSW from this many items up")
    extend = commands.add_parser("add", help="embed more items into an existing index folder")
    extend.add_argument("index_dir")
    extend.add_argument("source")
    for command in (make, extend):
        command.add_argument("--batch_size", type=int, default=64)
        command.add_argument("--backend", choices=BACKENDS, default="torch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "build":
        return build(args.checkpoint, args.source, args.output, args.exact_threshold, args.batch_size, args.backend)
    return add(args.index_dir, args.source, args.batch_size, args.backend)


def _summary(modality, entry) -> str:
    line = f"{modality}: {entry['count']} items, {entry['kind']} index built in {entry['build_seconds']} s"
    if "recall_at_10" in entry:
        line += f", recall@10 vs exact search {entry['recall_at_10']:.3f}"
    return line


def _load(runner, modality, path):
    if modality == "image":
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    return decode_audio(path, sampling_rate=runner.sampling_rate)[0]


def _modality_of(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    return next((m for m in MEDIA if suffix in EXTENSIONS[m]), None)


def _by_modality(rows, base: Path) -> dict[str, list[dict]]:
    collection = {}
    for row in rows:
        modality = _modality_of(row["path"])
        if modality is not None:
            collection.setdefault(modality, []).append(row)
    return collection


def _from_table(table: Path) -> dict[str, list[dict]]:
    if table.suffix.lower() == ".csv":
        with open(table, newline="", encoding="utf-8") as file:
            records = list(csv.DictReader(file))
    else:
        with open(table, encoding="utf-8") as file:
            records = [json.loads(line) for line in file if line.strip()]
    if not records:
        raise ValueError(f"{table} has no rows.")
    path_column = next((c for c in PATH_COLUMNS if c in records[0]), None)
    if path_column is None:
        raise ValueError(f"{table} has no file column; name it one of {PATH_COLUMNS} (columns: {sorted(records[0])}).")
    caption_column = next((c for c in CAPTION_COLUMNS if c in records[0]), None)
    rows = []
    for record in records:
        path = (table.parent / record[path_column]).resolve()
        row = {"path": str(path), "file": record[path_column]}
        if caption_column and record.get(caption_column):
            row["caption"] = record[caption_column]
        rows.append(row)
    return _by_modality(rows, table.parent)

"""What the evaluations share: the one loop that runs a model over dataset rows in batches (without gradients, in
eval mode), and the unique images/clips of a split, which benchmarks score once each however many captions they have.

Retrieval (`training_mm.retrieval`) embeds a split's captions and its unique images/clips with `run_in_batches`;
captioning (`training_mm.captioning`) generates a caption for each unique image/clip with it.

>>> embeds = run_in_batches(model, rows, collate=lambda rows: processor(text=[r["caption"] for r in rows],
...     return_tensors="pt"), step=lambda model, batch: model(**batch).text_embeds, batch_size=64)  # doctest: +SKIP
"""

import hashlib

import datasets
import torch
from PIL import Image as PILImage
from tqdm.auto import tqdm


@torch.no_grad()
def run_in_batches(model, rows, collate, step, batch_size, desc="Evaluating"):
    """`step(model, batch)` for each batch of `batch_size` rows of `rows` (a list, a `Dataset` or an
    `IterableDataset`), where `batch = collate(batch_rows)`, a dict of tensors moved to the model's device (and its
    dtype, for floating-point ones); returns the list of what `step` returned, in order.

    The model runs in eval mode and gets its training mode back afterwards, also on an error.
    """
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    outputs = []
    try:
        total = len(rows) if hasattr(rows, "__len__") else None
        with tqdm(total=total, desc=desc, unit="item") as progress:
            for chunk in _chunks(rows, batch_size):
                batch = {
                    key: value.to(parameter.device, parameter.dtype if value.is_floating_point() else value.dtype)
                    for key, value in collate(chunk).items()
                }
                outputs.append(step(model, batch))
                progress.update(len(chunk))
    finally:
        model.train(was_training)
    return outputs


def media_fingerprints(rows, modality):
    """What makes two images (clips) of `rows` the same file: a digest of its bytes, else its path."""
    if isinstance(rows, datasets.Dataset):
        column = rows.select_columns([modality])
        if modality == "image":
            column = column.cast_column("image", datasets.Image(decode=False))
        values = column[modality]
    else:
        values = [row[modality] for row in rows]
    return [_fingerprint(value) for value in values]


def first_rows(values):
    """The index of the first row holding each distinct value, in order."""
    first = {}
    for index, value in enumerate(values):
        first.setdefault(value, index)
    return list(first.values())


def _fingerprint(value):
    if isinstance(value, PILImage.Image):
        data = f"{value.mode}{value.size}".encode() + value.tobytes()
    elif isinstance(value, dict) and value.get("bytes"):
        data = value["bytes"]
    elif isinstance(value, dict):
        return value.get("path")
    else:
        return repr(value)
    return hashlib.blake2b(data, digest_size=16).digest()


def select_rows(rows, indices):
    """The rows at `indices` of a `Dataset` (a view, decoded lazily) or a list."""
    return rows.select(indices) if isinstance(rows, datasets.Dataset) else [rows[index] for index in indices]


def unique_media_rows(rows, modality):
    """`rows` (a `Dataset`, or a list of rows) with each distinct image/clip of `modality` once: its first row."""
    return select_rows(rows, first_rows(media_fingerprints(rows, modality)))


def _chunks(rows, size):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

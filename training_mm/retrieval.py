"""Cross-modal retrieval over a whole split by the protocol papers report (CLIP, ALIGN, and the COCO/Flickr30k,
AudioCaps and Clotho benchmarks): image->text, text->image, audio->text, text->audio.

The gallery of images (or clips) holds each one once, however many captions it has; the gallery of texts holds every
caption. An item is what a caption describes: the `label` column when the split has one (the image or clip id of the
benchmark formats, the scene of the built-in data), else the image or clip itself (identical files are one item). An
image->text query is a hit at k when any of its item's captions is among the k nearest captions; a text->image query
when an image of its item is among the k nearest images. Reported per direction: recall@1/5/10, and mAP and nDCG@10
over the same rankings (scikit-learn's `average_precision_score` and `ndcg_score`, averaged over queries).

Recall@k over a handful of items is noise (on a two-item gallery, recall@1 = 1.000 by chance half the time), so the
examples report and publish retrieval only on a gallery of at least `MIN_GALLERY` distinct items (`RetrievalGallery`).

Example:
```python
>>> from training_mm.retrieval import retrieval_metrics
>>> retrieval_metrics(model, processor, splits["test"], modalities=("image", "audio"))  # doctest: +SKIP
{'recall@1 image->text': 0.41, 'recall@5 image->text': 0.83, ..., 'nDCG@10 text->audio': 0.52}
```
"""

import hashlib
from dataclasses import dataclass

import datasets
import torch
from sklearn.metrics import average_precision_score, ndcg_score

from .evaluation import first_rows, media_fingerprints, run_in_batches, select_rows
from .media_inputs import media_inputs

RECALL_AT = (1, 5, 10)
# (query, gallery) pairs, in the order they are reported.
DIRECTIONS = (("image", "text"), ("text", "image"), ("audio", "text"), ("text", "audio"))
# Queries scored per matrix product, so a 100k-item split needs (chunk x gallery) floats at a time, not (N x N).
QUERY_CHUNK = 1024
NDCG_AT = 10
# The protocol in a line, for the model card's `model-index` (each result's metric_config).
PROTOCOL = (
    "gallery of unique images/clips; image->text hit: any of the item's captions in the top k; text->image hit: the "
    "caption's item in the top k"
)
# The fewest distinct items (keys) a gallery needs for recall@k to be reported: chance recall@10 is then 10% at most.
MIN_GALLERY = 100


@dataclass
class RetrievalGallery:
    """The held-out split retrieval is measured on: its name, `rows`, `distinct` items (keys), and whether it is large
    enough to be `measured` (at least `min_gallery` distinct items); `note` says so in a sentence, for the log and the
    model card.

    >>> RetrievalGallery.of(splits["validation"], "validation", min_gallery=100).note  # doctest: +SKIP
    'Retrieval not measured: 12 items in the held-out `validation` split, fewer than 100, the distinct items ...'
    """

    split_name: str
    rows: int
    distinct: int
    min_gallery: int

    @classmethod
    def of(cls, dataset, split_name, min_gallery=MIN_GALLERY, label_column="label"):
        columns = [column for column in (label_column, "caption") if column in dataset.column_names]
        keys = [_key(row, label_column) for row in dataset.select_columns(columns)]
        return cls(split_name, len(keys), len(set(keys)), min_gallery)

    @property
    def measured(self):
        return self.distinct >= self.min_gallery

    @property
    def note(self):
        rows = f" ({self.rows} rows)" if self.rows != self.distinct else ""
        if not self.measured:
            return (
                f"Retrieval not measured: {self.distinct} items{rows} in the held-out `{self.split_name}` split, fewer "
                f"than {self.min_gallery}, the distinct items recall@k needs to mean anything (--min_retrieval_gallery)."
            )
        return (
            f"Retrieval on the held-out `{self.split_name}` split: a gallery of {self.distinct} distinct items{rows}, "
            "by the published protocol: each image/clip once in its gallery, every caption in the text gallery; "
            "image->text is a hit when any of the image's captions is in the top k, text->image when its image is "
            "(items: the `label` column, else identical files). recall@1/5/10, mAP and nDCG@10."
        )


def metric_name(k, query, gallery):
    return f"recall@{k} {query}->{gallery}"


def embed(model, processor, rows, modality, batch_size=64, desc="Embedding"):
    """L2-normalised (N, D) embeddings of the `modality` ("text", "image" or "audio") of each of `rows`.

    They come from `model(**batch)` (the root `forward`), not `get_*_features`, so a model wrapped by FSDP or
    DeepSpeed gathers its sharded weights as it does in training.
    """
    if modality == "text":
        def collate(chunk):
            return processor(text=[row["caption"] for row in chunk], return_tensors="pt")
    else:
        def collate(chunk):
            return processor(return_tensors="pt", **media_inputs(chunk, modality, processor))

    def step(model, batch):
        return model(**batch)[f"{modality}_embeds"].float().cpu()

    return torch.cat(run_in_batches(model, rows, collate, step, batch_size, desc=f"{desc} ({modality})"))


def recall_at_k(queries, gallery, query_keys, gallery_keys, ks=RECALL_AT):
    """Share of queries with at least one same-key gallery item among their k most similar, for each k.

    `queries` (Nq, D) and `gallery` (Ng, D) are L2-normalised; keys are any hashable values.

    >>> import torch
    >>> e = torch.eye(3)
    >>> recall_at_k(e, e, ["a", "b", "c"], ["a", "b", "c"], ks=(1,))
    {1: 1.0}
    """
    ids = {key: index for index, key in enumerate(dict.fromkeys([*query_keys, *gallery_keys]))}
    query_ids = torch.tensor([ids[key] for key in query_keys])
    gallery_ids = torch.tensor([ids[key] for key in gallery_keys])
    top = min(max(ks), len(gallery_ids))
    hits = {k: 0 for k in ks}
    for start in range(0, len(queries), QUERY_CHUNK):
        scores = queries[start : start + QUERY_CHUNK] @ gallery.t()  # (chunk, Ng)
        nearest = scores.topk(top, dim=1).indices  # (chunk, top), most similar first
        matches = gallery_ids[nearest] == query_ids[start : start + QUERY_CHUNK, None]
        for k in ks:
            hits[k] += matches[:, :k].any(dim=1).sum().item()
    return {k: hits[k] / len(queries) for k in ks}


def ranking_metrics(queries, gallery, query_keys, gallery_keys, ndcg_at=NDCG_AT):
    """Mean average precision and nDCG@`ndcg_at` of the rankings of `gallery` for each of `queries` (L2-normalised
    embeddings), where a gallery item is relevant to a query with the same key; scikit-learn's
    `average_precision_score(average="samples")` and `ndcg_score`, averaged over the queries.

    >>> e = torch.eye(3)
    >>> ranking_metrics(e, e, ["a", "b", "c"], ["a", "b", "c"])
    {'mAP': 1.0, 'nDCG@10': 1.0}
    """
    ids = {key: index for index, key in enumerate(dict.fromkeys([*query_keys, *gallery_keys]))}
    query_ids = torch.tensor([ids[key] for key in query_keys])
    gallery_ids = torch.tensor([ids[key] for key in gallery_keys])
    totals = {"mAP": 0.0, f"nDCG@{ndcg_at}": 0.0}
    for start in range(0, len(queries), QUERY_CHUNK):
        scores = (queries[start : start + QUERY_CHUNK] @ gallery.t()).numpy()  # (chunk, Ng)
        relevant = (query_ids[start : start + QUERY_CHUNK, None] == gallery_ids[None, :]).numpy()
        totals["mAP"] += average_precision_score(relevant, scores, average="samples") * len(scores)
        totals[f"nDCG@{ndcg_at}"] += ndcg_score(relevant, scores, k=ndcg_at) * len(scores)
    return {name: float(total / len(queries)) for name, total in totals.items()}


def retrieval_metrics(model, processor, dataset, modalities, batch_size=64, label_column="label", desc="Retrieval"):
    """recall@1/5/10, mAP and nDCG@10 by the published protocol (see the module docstring) for every direction of
    `DIRECTIONS` whose modalities `dataset` has (text plus `modalities`).

    Returns `{"recall@1 image->text": float, ..., "mAP image->text": float, "nDCG@10 image->text": float, ...}` in
    `DIRECTIONS` order. A streamed split is read into memory (held-out splits are small).
    """
    rows = dataset if isinstance(dataset, datasets.Dataset) else list(dataset)
    if not len(rows):
        raise ValueError("Cannot measure retrieval on an empty split.")
    captions = rows.select_columns(["caption"]) if isinstance(rows, datasets.Dataset) else rows
    embeds = {"text": embed(model, processor, captions, "text", batch_size, desc)}
    keys = {}
    for modality in modalities:
        files = media_fingerprints(rows, modality)
        labels = _column(rows, label_column)
        row_keys = labels if labels is not None and None not in labels else files
        unique = first_rows(files)
        media_rows = select_rows(rows, unique)
        embeds[modality] = embed(model, processor, media_rows, modality, batch_size, desc)
        keys[modality] = ([row_keys[i] for i in unique], row_keys)  # (gallery items, captions)
    metrics = {}
    for query, gallery in DIRECTIONS:
        modality = gallery if query == "text" else query
        if modality not in keys:
            continue
        media_keys, text_keys = keys[modality]
        query_keys, gallery_keys = (text_keys, media_keys) if query == "text" else (media_keys, text_keys)
        args = (embeds[query], embeds[gallery], query_keys, gallery_keys)
        metrics.update({metric_name(k, query, gallery): value for k, value in recall_at_k(*args).items()})
        metrics.update({f"{name} {query}->{gallery}": value for name, value in ranking_metrics(*args).items()})
    return metrics


def _column(rows, name):
    if isinstance(rows, datasets.Dataset):
        return rows[name] if name in rows.column_names else None
    return [row.get(name) for row in rows] if all(name in row for row in rows) else None


def _key(row, label_column):
    """What makes two items the same for retrieval: the label, else the caption."""
    return row.get(label_column) if row.get(label_column) is not None else row["caption"]


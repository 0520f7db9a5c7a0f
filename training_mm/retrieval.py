"""Cross-modal retrieval recall@k over a whole split: image->text, text->image, audio->text, text->audio.

Every item of the split is a query, and the gallery is every item of the other modality in the same split. Captions
repeat (several images share a scene, a caption may be worded the same way twice), so a query's "correct" items are
all those with its key, the `label` column when the split has one, else the caption itself: a hit at k is any of
the k nearest gallery items sharing the query's key (as in CLIP-style retrieval with multiple references).

Recall@k over a handful of items is noise (on a two-item gallery, recall@1 = 1.000 by chance half the time), so the
examples report and publish retrieval only on a gallery of at least `MIN_GALLERY` distinct items (`RetrievalGallery`).

Example:
```python
>>> from training_mm.retrieval import retrieval_metrics
>>> retrieval_metrics(model, processor, splits["test"], modalities=("image", "audio"))  # doctest: +SKIP
{'recall@1 image->text': 0.41, 'recall@5 image->text': 0.83, ..., 'recall@10 text->audio': 0.9}
```
"""

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .collators import ContrastiveCollator

RECALL_AT = (1, 5, 10)
# (query, gallery) pairs, in the order they are reported.
DIRECTIONS = (("image", "text"), ("text", "image"), ("audio", "text"), ("text", "audio"))
# Queries scored per matrix product, so a 100k-item split needs (chunk x gallery) floats at a time, not (N x N).
QUERY_CHUNK = 1024
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
            f"Retrieval on the held-out `{self.split_name}` split: a gallery of {self.distinct} distinct items{rows}; "
            "every row is a query, and a hit is a retrieved row with the query's label (its caption where there are "
            "no labels)."
        )


def metric_name(k, query, gallery):
    return f"recall@{k} {query}->{gallery}"


@torch.no_grad()
def embed_split(model, processor, dataset, modalities, batch_size=64, label_column="label", desc="Embedding"):
    """L2-normalised embeddings of every row of `dataset` (a `Dataset` or an `IterableDataset`) for the text and each
    of `modalities`, plus each row's key; returns `({"text": (N, D), "image": (N, D), ...}, keys)`.

    The embeddings come from `model(**batch)` (the root `forward`), not `get_*_features`, so a model wrapped by FSDP
    or DeepSpeed gathers its sharded weights as it does in training.
    """
    collator = ContrastiveCollator(processor, modalities, label_column=None, return_loss=False)
    names = {"text": "text_embeds", "image": "image_embeds", "audio": "audio_embeds"}
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    embeds = {name: [] for name in ("text", *modalities)}
    keys = []
    try:
        total = len(dataset) if hasattr(dataset, "__len__") else None
        with tqdm(total=total, desc=desc, unit="item") as progress:
            for rows in _chunks(dataset, batch_size):
                batch = {
                    key: value.to(parameter.device, parameter.dtype if value.is_floating_point() else value.dtype)
                    for key, value in collator(rows).items()
                }
                outputs = model(**batch)
                for name in embeds:
                    embeds[name].append(outputs[names[name]].float().cpu())
                keys += [_key(row, label_column) for row in rows]
                progress.update(len(rows))
    finally:
        model.train(was_training)
    if not keys:
        raise ValueError("Cannot measure retrieval on an empty split.")
    return {name: torch.cat(parts) for name, parts in embeds.items()}, keys


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


def retrieval_metrics(model, processor, dataset, modalities, batch_size=64, label_column="label", desc="Retrieval"):
    """recall@1/5/10 for every direction of `DIRECTIONS` whose modalities `dataset` has (text plus `modalities`).

    Returns `{"recall@1 image->text": float, ...}` in `DIRECTIONS` order.
    """
    embeds, keys = embed_split(model, processor, dataset, modalities, batch_size, label_column, desc)
    metrics = {}
    for query, gallery in DIRECTIONS:
        if query in embeds and gallery in embeds:
            recalls = recall_at_k(embeds[query], embeds[gallery], keys, keys)
            metrics.update({metric_name(k, query, gallery): value for k, value in recalls.items()})
    return metrics


def _key(row, label_column):
    """What makes two items the same for retrieval: the label, else the caption."""
    return row.get(label_column) if row.get(label_column) is not None else row["caption"]


def _chunks(rows, size):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

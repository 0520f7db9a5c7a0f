"""Batching for contrastive training: dataset rows -> the keyword arguments of `MMModel.forward`.

A row holds a `caption` and an `image` and/or `audio` (the columns `training_mm.data.load_user_dataset` and the
built-in data produce), optionally a `label`. The collator runs the processor over the batch, adds `group_ids`
(rows with the same label are positives of each other) and `return_loss=True`, so `Trainer` needs no subclass
(as in transformers' `examples/pytorch/contrastive-image-text/run_clip.py`).
"""

import torch

from configuration_mm.configuration_mm import MODALITIES
from modeling_mm.modeling_mm_losses import hash_powers, text_group_ids

from .media_inputs import media_inputs

# The modalities besides text that a row can carry, each in the column of that name.
MEDIA = tuple(name for name in MODALITIES if name != "text")


def group_ids(values):
    """One int64 id per value (a label), equal for equal values: the model's own group-id hash
    (`modeling_mm_losses.text_group_ids`) over each value's UTF-8 bytes. Unlike `hash()`, which is salted per
    process, it is the same on every process, so group ids still agree after the loss gathers them across DDP ranks.

    >>> ids = group_ids(["red circle", "red circle", "blue square"])
    >>> bool(ids[0] == ids[1] != ids[2])
    True
    """
    encoded = [str(value).encode("utf-8") for value in values]
    length = max(1, *map(len, encoded))
    codes = torch.zeros(len(encoded), length, dtype=torch.long)
    mask = torch.zeros(len(encoded), length, dtype=torch.long)
    for row, data in enumerate(encoded):
        codes[row, : len(data)] = torch.tensor(list(data), dtype=torch.long)
        mask[row, : len(data)] = 1
    return text_group_ids(codes, mask, hash_powers(length))


class ContrastiveCollator:
    """Turns a list of rows into one processor batch with `group_ids` and `return_loss=True`.

    Args:
        processor (`MMProcessor`): tokenizes `caption`, prepares `image` and featurizes `audio`, both decoded by
            `media_inputs.media_inputs` (so in the DataLoader's workers, when it has some).
        modalities (`tuple[str]`): which of "image" and "audio" to use besides the text; a column left out here is
            ignored even if rows have it (e.g. an audio column with a model that has no use for it).
        label_column (`str` or None): rows with equal values here are positives of each other; without it (or when
            any row of the batch lacks it) the model treats identical captions as positives.
        return_loss (`bool`): add `return_loss=True` (training); `False` for embedding-only batches.

    Example:
    ```python
    >>> collator = ContrastiveCollator(processor, modalities=("image",))  # doctest: +SKIP
    >>> batch = collator([{"image": pil_image, "caption": "a red circle", "label": "red circle"}])  # doctest: +SKIP
    >>> sorted(batch)  # doctest: +SKIP
    ['attention_mask', 'group_ids', 'input_ids', 'pixel_values', 'return_loss']
    ```
    """

    def __init__(self, processor, modalities=("image", "audio"), label_column="label", return_loss=True):
        if not modalities or set(modalities) - set(MEDIA):
            raise ValueError(f"modalities must be a non-empty subset of {list(MEDIA)}, got {modalities!r}.")
        self.processor = processor
        self.modalities = tuple(modalities)
        self.label_column = label_column
        self.return_loss = return_loss

    def __call__(self, rows):
        inputs = {"text": [row["caption"] for row in rows], "return_tensors": "pt"}
        for modality in self.modalities:
            inputs.update(media_inputs(rows, modality, self.processor))
        batch = dict(self.processor(**inputs))
        if self.label_column and all(row.get(self.label_column) is not None for row in rows):
            batch["group_ids"] = group_ids([row[self.label_column] for row in rows])
        if self.return_loss:
            batch["return_loss"] = True
        return batch

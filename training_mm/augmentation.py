"""Train-time image augmentation that keeps each caption true: a horizontal flip that mirrors "left"/"right" in the
caption and label, and a random crop that never cuts into the picture's content.

The image processor cannot do this: it sees pixels, not captions, so a blind flip would turn "a red star on the left"
into a picture of a star on the right under the same caption, and a blind crop could cut away one of "three blue
squares". `CaptionAwareAugmentation` works on dataset rows instead (`Dataset.with_transform` on the training split;
evaluation splits stay as they are):

- **Flip** (probability `flip_probability`): the image is mirrored and every "left"/"right" in the caption and label is
  swapped ("A left of B" in a built-in label becomes "B left of A", its canonical form, so equal scenes keep equal
  labels). A row that also carries spoken audio whose caption names a side is not flipped: the speech cannot be edited.
- **Crop** (probability `crop_probability`): a box with the image's aspect ratio covering a random share of its area in
  `crop_scale` (or the least share that holds the content, when that is more), placed so that it contains every pixel that differs from the background (the median colour of the
  border, by more than `BACKGROUND_TOLERANCE` in some channel), resized back to the image's size. Nothing counted or
  positioned in the caption leaves the frame; on a photo without a plain background the content is the whole frame,
  so the crop leaves it as it is.

The randomness comes from torch's global generator, which `transformers.set_seed` seeds and each `DataLoader` worker
re-seeds.

Example:
```python
>>> from training_mm.augmentation import CaptionAwareAugmentation
>>> train = splits["train"].with_transform(CaptionAwareAugmentation())  # doctest: +SKIP
```
"""

import re

import numpy as np
import PIL.Image
import torch

from .media_inputs import open_image

# A pixel belongs to the content when one of its channels differs from the background colour by more than this.
BACKGROUND_TOLERANCE = 24
# Pixels kept around the content box, for antialiased edges fainter than the tolerance.
CONTENT_MARGIN = 1
_SIDE = re.compile(r"\b(left|right)\b")
_RIGHT_OF = re.compile(r"(.+) right of (.+)")


def mirror_text(text):
    """`text` as it reads of the mirrored picture: every "left" becomes "right" and every "right" "left".

    >>> mirror_text("a red star to the left of a blue square")
    'a red star to the right of a blue square'
    """
    return _SIDE.sub(lambda match: "right" if match.group(1) == "left" else "left", text)


def mirror_label(label):
    """A built-in label (the canonical caption) of the mirrored scene, in canonical form: relations are said "left of".

    >>> mirror_label("red star left of blue square"), mirror_label("small red star on the left")
    ('blue square left of red star', 'small red star on the right')
    """
    mirrored = mirror_text(label)
    relation = _RIGHT_OF.fullmatch(mirrored)
    return f"{relation.group(2)} left of {relation.group(1)}" if relation else mirrored


def content_box(image):
    """(left, top, right, bottom) of the pixels that differ from the background (the border's median colour), grown
    by `CONTENT_MARGIN`; the whole image when nothing differs."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    content = (np.abs(pixels - np.median(border, axis=0)) > BACKGROUND_TOLERANCE).any(axis=-1)
    height, width = content.shape
    rows, columns = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    if rows.size == 0:
        return (0, 0, width, height)
    return (
        max(0, columns[0] - CONTENT_MARGIN),
        max(0, rows[0] - CONTENT_MARGIN),
        min(width, columns[-1] + 1 + CONTENT_MARGIN),
        min(height, rows[-1] + 1 + CONTENT_MARGIN),
    )


def random_crop_box(size, keep, scale):
    """A box with the aspect ratio of `size` (width, height) and a random share of its area in `scale` (raised as far as
    needed) that contains the box `keep`; None when even the largest share cannot contain it."""
    width, height = size
    side = float(np.sqrt(scale[0] + (scale[1] - scale[0]) * torch.rand(()).item()))
    side = max(side, (keep[2] - keep[0]) / width, (keep[3] - keep[1]) / height)
    if side > np.sqrt(scale[1]) + 1e-9:
        return None
    crop_w, crop_h = max(1, round(side * width)), max(1, round(side * height))
    lefts = (max(0, keep[2] - crop_w), min(keep[0], width - crop_w))
    tops = (max(0, keep[3] - crop_h), min(keep[1], height - crop_h))
    if lefts[0] > lefts[1] or tops[0] > tops[1]:
        return None
    left = int(torch.randint(lefts[0], lefts[1] + 1, ()).item())
    top = int(torch.randint(tops[0], tops[1] + 1, ()).item())
    return (left, top, left + crop_w, top + crop_h)


class CaptionAwareAugmentation:
    r"""A `with_transform` transform over batches of rows: flips (mirroring the caption and label) and crops that keep
    the content (see the module docstring).

    Args:
        flip_probability (`float`, defaults to 0.5): chance of a horizontal flip per row.
        crop_probability (`float`, defaults to 0.5): chance of a content-keeping crop per row.
        crop_scale (`tuple[float, float]`, defaults to `(0.6, 1.0)`): range of the crop's share of the image area.
        image_column, caption_column, label_column, audio_column (`str`): the row's columns; a missing one is skipped.
            Set `audio_column=None` when the audio is not trained on, so rows with audio may be flipped.
    """

    def __init__(
        self,
        flip_probability=0.5,
        crop_probability=0.5,
        crop_scale=(0.6, 1.0),
        image_column="image",
        caption_column="caption",
        label_column="label",
        audio_column="audio",
    ):
        for name, value in (("flip_probability", flip_probability), ("crop_probability", crop_probability)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}.")
        self.flip_probability = flip_probability
        self.crop_probability = crop_probability
        self.crop_scale = tuple(crop_scale)
        self.image_column = image_column
        self.caption_column = caption_column
        self.label_column = label_column
        self.audio_column = audio_column

    def __call__(self, batch):
        batch = {name: list(values) for name, values in batch.items()}
        for index in range(len(batch[self.image_column])):
            self._augment_row(batch, index)
        return batch

    def _augment_row(self, batch, index):
        image = batch[self.image_column][index]
        if image is None:
            return
        image = open_image(image)  # an undecoded `{"bytes", "path"}` value is decoded here, in the worker
        if torch.rand(()).item() < self.crop_probability:
            box = random_crop_box(image.size, content_box(image), self.crop_scale)
            if box is not None:
                image = image.resize(image.size, PIL.Image.Resampling.BICUBIC, box=box)
        if torch.rand(()).item() < self.flip_probability and self._may_flip(batch, index):
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
            if self.caption_column in batch:
                batch[self.caption_column][index] = mirror_text(batch[self.caption_column][index])
            if self.label_column in batch and batch[self.label_column][index] is not None:
                batch[self.label_column][index] = mirror_label(batch[self.label_column][index])
        batch[self.image_column][index] = image

    def _may_flip(self, batch, index):
        """Not when spoken audio says a side the flip would contradict."""
        has_audio = self.audio_column in batch and batch[self.audio_column][index] is not None
        return not (has_audio and _SIDE.search(batch.get(self.caption_column, [""] * (index + 1))[index]))

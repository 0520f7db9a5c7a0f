"""Dataset rows -> the processor's image or audio arguments: the one place the collators (contrastive, captioning,
classification) and caption generation decode a row's media.

Images come decoded (a `PIL.Image`, from a `datasets.Image()` column) or not (`{"bytes", "path"}`, from a column
`undecoded` left as files). An undecoded JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) that still
covers the size the image processor resizes to (`PIL.Image.draft`, as `Image.thumbnail` does), which reads a 640x480
photo for a 64-pixel model several times faster than a full decode; with random-crop augmentation on, images are
decoded in full. Run in DataLoader workers (`dataloader_num_workers`), this decoding is spread over the cores.
"""

import io
import math

from datasets import Audio, Image
from PIL import Image as PILImage

from .audio_decoding import SAMPLING_RATE, decode_audio


def undecoded(dataset, image_column="image", audio_column="audio"):
    """The dataset with its `datasets.Image`/`Audio` columns left as bytes/paths (`{"bytes", "path"}` values), to be
    decoded later by `media_inputs` (in DataLoader workers) or checked without raising (`unreadable_rows`)."""
    features = dataset.features or {}
    if isinstance(features.get(image_column), Image) and features[image_column].decode:
        dataset = dataset.cast_column(image_column, Image(decode=False))
    if isinstance(features.get(audio_column), Audio) and features[audio_column].decode:
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    return dataset


def media_inputs(rows, modality, processor):
    """The `processor` arguments for the `modality` ("image" or "audio") of `rows`: `images` (PIL images), or
    `audio` (mono float32 at 16 kHz) with its `sampling_rate`.

    >>> media_inputs([{"image": {"bytes": None, "path": "photo.jpg"}}], "image", processor)  # doctest: +SKIP
    {'images': [<PIL.JpegImagePlugin.JpegImageFile image mode=RGB size=160x120>]}
    """
    if modality == "image":
        shortest_edge = _shortest_edge(processor)
        return {"images": [open_image(row["image"], shortest_edge) for row in rows]}
    audio = [decode_audio(row["audio"], sampling_rate=SAMPLING_RATE)[0] for row in rows]
    return {"audio": audio, "sampling_rate": SAMPLING_RATE}


def open_image(value, shortest_edge=None):
    """A PIL image from a decoded image or an undecoded `{"bytes", "path"}` value; a JPEG is decoded at the smallest
    scale whose shortest edge is still at least `shortest_edge` (None: full size)."""
    if not isinstance(value, dict):
        return value
    image = PILImage.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    if shortest_edge and image.format == "JPEG":
        width, height = image.size
        scale = shortest_edge / min(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    image.load()
    return image


def _shortest_edge(processor):
    """The side the image processor resizes the shorter edge to, when decoding less than the full image is safe."""
    image_processor = getattr(processor, "image_processor", processor)
    if not getattr(image_processor, "do_resize", True):
        return None  # no resize at all needs every source pixel
    size = getattr(image_processor, "size", None) or {}
    return size.get("shortest_edge")

"""Image processor of mm: any image (file, PIL, numpy, torch) -> normalised (batch, 3, H, W) pixel values.

This file is Hub remote code: `save_pretrained` copies it flat next to the weights, so it imports only
`transformers`, `torch`, `numpy`, `PIL` and the standard library.
"""

import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

# PIL modes that carry an alpha band; they are composited on white (see `_to_rgb`).
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


# Options of earlier versions (a blind random crop and flip) that saved configs may still hold: dropped on load.
# Train-time augmentation is `training_mm.augmentation`, which keeps the captions true (see docs/design.md).
_REMOVED_OPTIONS = ("do_augment", "augment_scale", "augment_ratio", "augment_flip_prob")


class MMImageProcessor(BaseImageProcessor):
    r"""Prepares images for the mm vision tower, CLIP style: resize the shortest edge to `size`, center crop to
    `crop_size`, rescale to [0, 1] and normalise with the OpenAI CLIP mean and std.

    Every input becomes 8-bit RGB first: transparent pixels (RGBA, LA, palette or greyscale with a transparency
    key) are composited on white, CMYK/palette/greyscale are converted, and 16-bit data is scaled to 8 bits, not
    clipped. Integer arrays of dtype uint16 are 16-bit; other integer arrays are 8-bit when their values fit in
    [0, 255] and 16-bit otherwise. Float arrays are taken as [0, 1], or as [0, 255] when a value exceeds 1.

    Args:
        size (`int` or `dict`, defaults to `{"shortest_edge": 224}`): target of the shortest edge.
        crop_size (`int` or `dict`, defaults to a square of `size`): output `{"height", "width"}`.
        resample (`int`, defaults to `PILImageResampling.BICUBIC`): PIL resampling filter.
        do_resize, do_center_crop, do_rescale, do_normalize (`bool`, default `True`): switch each step.
        rescale_factor (`float`, defaults to 1/255), image_mean, image_std (`float` or 3 floats, CLIP's defaults).

    Example:
    ```python
    >>> from PIL import Image
    >>> from processing_mm import MMImageProcessor
    >>> image_processor = MMImageProcessor(size=32)
    >>> image_processor([Image.new("RGB", (64, 48), "red"), Image.new("RGBA", (20, 20))],
    ...                 return_tensors="pt")["pixel_values"].shape
    torch.Size([2, 3, 32, 32])
    ```
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int | dict | None = None,
        crop_size: int | dict | None = None,
        resample: int = PILImageResampling.BICUBIC,
        do_resize: bool = True,
        do_center_crop: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        **kwargs,
    ):
        super().__init__(**{name: value for name, value in kwargs.items() if name not in _REMOVED_OPTIONS})
        self.size = _size_dict(224 if size is None else size, "size")
        self.crop_size = _size_dict(self.size["shortest_edge"] if crop_size is None else crop_size, "crop_size")
        self.resample = int(resample)
        self.do_resize = do_resize
        self.do_center_crop = do_center_crop
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(OPENAI_CLIP_MEAN if image_mean is None else np.broadcast_to(image_mean, 3).tolist())
        self.image_std = list(OPENAI_CLIP_STD if image_std is None else np.broadcast_to(image_std, 3).tolist())
        crop = self.crop_size
        if do_resize and do_center_crop and max(crop["height"], crop["width"]) > self.size["shortest_edge"]:
            raise ValueError(
                f"crop_size {crop} is larger than size {self.size}: the resized image would not cover the crop. "
                "Use a crop_size no larger than size['shortest_edge']."
            )

    def preprocess(self, images, return_tensors: str | None = None, **overrides) -> BatchFeature:
        r"""Processes one image or a list of images.

        Args:
            images: a PIL image, a numpy array or torch tensor (HWC or CHW, 3-D; or a 4-D batch), a file path, or a
                list of these.
            return_tensors (`str`, *optional*): `"pt"` or `"np"`; `None` returns a numpy array.
            **overrides: any `__init__` argument (e.g. `size=64`) for this call only.

        Returns:
            `BatchFeature` with `pixel_values` of shape `(batch, 3, crop_height, crop_width)`, float32.
        """
        unknown = set(overrides) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"MMImageProcessor got unexpected keyword arguments {sorted(unknown)}.")
        options = {name: overrides.get(name, getattr(self, name)) for name in _OPTIONS}
        if "size" in overrides:
            options["size"] = _size_dict(options["size"], "size")
        if "crop_size" in overrides:
            options["crop_size"] = _size_dict(options["crop_size"], "crop_size")

        arrays = [self._transform(_to_rgb(image, index), index, options) for index, image in enumerate(_as_list(images))]
        shapes = {array.shape for array in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"Images have different sizes after processing ({sorted(shapes)}); keep do_center_crop=True so "
                "that every image comes out at crop_size."
            )
        pixels = np.stack(arrays).astype(np.float32)  # (batch, H, W, 3)
        # Rescale and normalise in one fused multiply-add over the whole batch: x * scale + offset.
        scale = np.full(3, options["rescale_factor"] if options["do_rescale"] else 1.0, dtype=np.float32)
        offset = np.zeros(3, dtype=np.float32)
        if options["do_normalize"]:
            std = np.asarray(np.broadcast_to(options["image_std"], 3), dtype=np.float32)
            scale, offset = scale / std, -np.asarray(np.broadcast_to(options["image_mean"], 3), np.float32) / std
        pixels = pixels * scale + offset
        pixel_values = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))  # (batch, 3, H, W)
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def _transform(self, image: PIL.Image.Image, index: int, options: dict) -> np.ndarray:
        """Resize + center crop of one RGB image; returns (H, W, 3) uint8."""
        crop_h, crop_w = options["crop_size"]["height"], options["crop_size"]["width"]
        width, height = image.size
        new_w, new_h = width, height
        if options["do_resize"]:
            # CLIP's shortest-edge rule (`get_resize_output_image_size`, default_to_square=False).
            short, long = sorted((width, height))
            new_short = options["size"]["shortest_edge"]
            new_long = int(new_short * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if not options["do_center_crop"]:
            return np.asarray(image.resize((new_w, new_h), options["resample"]) if options["do_resize"] else image)
        if crop_h > new_h or crop_w > new_w:
            raise ValueError(
                f"Image {index} is {new_w}x{new_h} (width x height) before cropping, smaller than crop_size "
                f"{crop_w}x{crop_h}; use a crop_size no larger than size['shortest_edge'] or keep do_resize=True."
            )
        left, top = (new_w - crop_w) // 2, (new_h - crop_h) // 2
        # Resize only the region that survives the crop, in one resampling pass, instead of resizing the whole image
        # and then cropping: the same pixels up to filter-edge rounding, and less work for wide or tall images.
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
        return np.asarray(image.resize((crop_w, crop_h), options["resample"], box=box))

_OPTIONS = (
    "size", "crop_size", "resample", "do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std",
)


def _size_dict(value, name: str) -> dict:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"shortest_edge": value} if name == "size" else {"height": value, "width": value}
    expected = ("shortest_edge",) if name == "size" else ("height", "width")
    if isinstance(value, dict) and sorted(value) == sorted(expected):
        if all(isinstance(v, int) and v > 0 for v in value.values()):
            return dict(value)
    raise ValueError(f"{name} must be a positive int or a dict with keys {list(expected)}, got {value!r}.")


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("MMImageProcessor got an empty list of images.")
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def _to_rgb(image, index: int) -> PIL.Image.Image:
    """Any accepted input -> an 8-bit RGB PIL image, or a ValueError naming the input and what is wrong with it."""
    if isinstance(image, (str, os.PathLike)):
        image = _open(image, index)
    if isinstance(image, PIL.Image.Image):
        return _pil_to_rgb(image, index)
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()  # numpy has no bfloat16
        channels_first = array.ndim == 3 and array.shape[0] in (1, 2, 3, 4)  # torch's convention is CHW
    elif isinstance(image, np.ndarray):
        array = image
        channels_first = array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4) and array.shape[0] in (1, 2, 3, 4)
    else:
        raise ValueError(
            f"Image {index} is a {type(image).__name__}; expected a PIL image, numpy array, torch tensor or file path."
        )
    if array.ndim == 3 and channels_first:
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (2, 3, 4))):
        raise ValueError(
            f"Image {index} has shape {tuple(image.shape)}; expected (H, W), (H, W, C) or (C, H, W) with C in 1-4."
        )
    if array.size == 0:
        raise ValueError(f"Image {index} is empty (shape {tuple(image.shape)}).")
    array = _to_uint8(array, index)
    if array.ndim == 3 and array.shape[-1] in (2, 4):  # grey + alpha or RGB + alpha
        return _composite_on_white(PIL.Image.fromarray(array, "LA" if array.shape[-1] == 2 else "RGBA"))
    return PIL.Image.fromarray(array).convert("RGB")


def _open(path, index: int) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(path)
        image.load()  # decode now, so a truncated or corrupt file fails here with its name
    except Exception as err:  # PIL raises OSError, UnidentifiedImageError, ValueError, SyntaxError, ...
        raise ValueError(
            f"Image {index} ({os.fspath(path)!r}) could not be read: {type(err).__name__}: {err}"
        ) from err
    # Camera photos store their orientation in EXIF; apply it as viewers do (and as transformers' load_image does).
    return PIL.ImageOps.exif_transpose(image)


def _pil_to_rgb(image: PIL.Image.Image, index: int) -> PIL.Image.Image:
    if 0 in image.size:
        raise ValueError(f"Image {index} is {image.width}x{image.height} (width x height): it has no pixels.")
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        # Transparent pixels have no colour of their own; white is what viewers and web pages show behind them,
        # whereas a plain convert("RGB") would expose whatever (often black) values the transparent pixels hold.
        # PIL converts premultiplied "La" to "LA" only.
        return _composite_on_white(_convert(image, "LA" if image.mode == "La" else "RGBA", index))
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit integer and float greyscale: PIL's own convert("L") clips at 255, so scale in numpy instead.
        return PIL.Image.fromarray(_to_uint8(np.asarray(image), index)).convert("RGB")
    return _convert(image, "RGB", index)  # L, 1, P, CMYK, YCbCr, ...


def _convert(image: PIL.Image.Image, mode: str, index: int) -> PIL.Image.Image:
    try:
        return image.convert(mode)
    except Exception as err:
        raise ValueError(f"Image {index} has PIL mode {image.mode!r}, which cannot be converted to RGB: {err}") from err


def _composite_on_white(image: PIL.Image.Image) -> PIL.Image.Image:
    rgba = image.convert("RGBA")
    background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(background, rgba).convert("RGB")


def _to_uint8(array: np.ndarray, index: int) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind in "iu":
        # uint16 is 16-bit by its dtype; wider ints (PIL mode "I", numpy's default int64) by their values.
        sixteen_bit = (array.dtype.kind == "u" and array.dtype.itemsize == 2) or array.max() > 255
        array = array.astype(np.float32) / 257.0 if sixteen_bit else array
        return np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"Image {index} contains NaN or infinite values.")
        scale = 255.0 if array.max() <= 1.0 else 1.0
        return np.clip(np.rint(array.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    raise ValueError(f"Image {index} has unsupported dtype {array.dtype}; expected uint8, uint16, other ints or floats.")


MMImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["MMImageProcessor"]

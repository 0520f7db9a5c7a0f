"""Decoding what clients send (base64 strings, uploaded files, texts) into what the runner takes, with errors that
name the request field and the problem, so bad input gets a 4xx the client can act on and never reaches the model."""

import base64
import binascii
import io
import warnings

import numpy as np
import PIL.Image
import soundfile

MAX_IMAGE_PIXELS = 64_000_000  # a larger image is refused rather than decoded (decompression bombs)


class InputError(ValueError):
    """Bad client input: `field` names where it is (e.g. "images[1]"), `problem` what is wrong; HTTP `status`."""

    def __init__(self, field: str, problem: str, status: int = 422):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.status = field, problem, status


def from_base64(value, field: str) -> bytes:
    """The bytes of a base64 string, with or without a `data:<type>;base64,` prefix (what a browser's FileReader
    gives)."""
    if not isinstance(value, str) or not value:
        raise InputError(field, f"expected a non-empty base64 string, got {_describe(value)}.")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InputError(field, f"is not valid base64 ({error}).") from None


def decode_image(data: bytes, field: str) -> PIL.Image.Image:
    """An RGB PIL image from the bytes of an image file (PNG, JPEG, WebP, ...)."""
    if not data:
        raise InputError(field, "is empty; send the bytes of an image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InputError(field, f"is {image.width}x{image.height} pixels, more than {MAX_IMAGE_PIXELS:,}.", 413)
            image.load()
    except InputError:
        raise
    except Exception as error:
        raise InputError(field, f"could not be decoded as an image ({type(error).__name__}: {error}).") from None
    return image.convert("RGB")


def decode_audio(data: bytes, field: str, sampling_rate: int) -> np.ndarray:
    """A mono float32 waveform from the bytes of an audio file that `soundfile` reads (WAV, FLAC, OGG), which must be
    sampled at `sampling_rate`."""
    if not data:
        raise InputError(field, "is empty; send the bytes of an audio file (WAV, FLAC or OGG).")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as error:
        raise InputError(field, f"could not be decoded as audio (WAV, FLAC or OGG): {error}.") from None
    if rate != sampling_rate:
        raise InputError(
            field, f"is sampled at {rate} Hz, but this model takes {sampling_rate} Hz audio; resample it first."
        )
    if samples.shape[0] == 0:
        raise InputError(field, "holds no samples.")
    if not np.isfinite(samples).all():
        raise InputError(field, "contains NaN or infinite samples.")
    return samples.mean(axis=1)


def check_text(value, field: str) -> str:
    """`value` if it is a string with something besides whitespace."""
    if not isinstance(value, str):
        raise InputError(field, f"expected a string, got {_describe(value)}.")
    if not value.strip():
        raise InputError(field, "is empty; send some text.")
    return value


def as_list(value, field: str, max_items: int) -> list:
    """A JSON field that may hold one value or a list of values, as a non-empty list of at most `max_items`."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InputError(field, "is an empty list.")
    if len(values) > max_items:
        raise InputError(field, f"has {len(values)} items, more than the limit of {max_items} per request.", 413)
    return values


def _describe(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r:.40}"

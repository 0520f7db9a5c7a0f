"""Audio for training: decode any form a dataset holds to mono float32 at the model's rate, and resample a whole
column once, ahead of training.

mm's one resampler is `resample` (soxr). The remote-code processing files do not resample: the feature extractor
refuses audio at another rate (it names how to resample), and the speech-recognition pipeline hands such audio to
transformers' own pipeline, which resamples it.
"""

import io

import numpy as np
import soundfile
import soxr
from datasets import IterableDataset

from processing_mm.feature_extraction_mm import read_audio

from .data_workers import files_state, map_processes


# The rate MMFeatureExtractor requires; everything that hands audio to the model resamples to it.
SAMPLING_RATE = 16_000


def resample(audio, orig_sr, target_sr):
    """Resample a mono float signal with soxr (band-limited, high quality); the output has
    `len(audio) * target_sr / orig_sr` samples, rounded up.

    >>> tone = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050).astype(np.float32)
    >>> resample(tone, 22050, 16000).shape
    (16000,)
    """
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio
    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def decode_audio(value, sampling_rate=None):
    """Decode one audio value to `(mono float32 array, sampling rate)` with soundfile, never torchcodec.

    `value` may be an `Audio(decode=False)` dict (`{"bytes": wav_bytes or None, "path": str}`), a file path,
    an `(array, sampling_rate)` pair or a `{"array", "sampling_rate"}` dict. Multi-channel audio is averaged
    to mono. With `sampling_rate` set, the audio is resampled to it.

    >>> wave, rate = decode_audio((np.zeros(22050, dtype=np.float32), 22050), sampling_rate=16000)
    >>> wave.shape, rate
    ((16000,), 16000)
    """
    if isinstance(value, tuple):
        array, rate = value
    elif isinstance(value, dict) and "array" in value:
        array, rate = value["array"], value["sampling_rate"]
    else:
        array, rate = read_audio(audio_source(value))  # mono
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array.mean(axis=0)
    if sampling_rate is not None and rate != sampling_rate:
        array, rate = resample(array, rate, sampling_rate), sampling_rate
    return array, int(rate)


def audio_source(value):
    """What soundfile opens for an undecoded audio value: a file object over its bytes, else its path."""
    source = value
    if isinstance(value, dict):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if source is None:
        raise ValueError(f"An audio value needs 'bytes' or 'path', got {value!r}.")
    return source


def resample_column(dataset, column="audio", sampling_rate=SAMPLING_RATE, num_proc=None):
    """The dataset with every clip of `column` at `sampling_rate`, resampled once, ahead of training.

    Clips at another rate are decoded, resampled and stored back as WAV bytes (32-bit float samples, so nothing is
    rounded or clipped) under their old path; clips already at the rate are only looked at (their header). This is
    a `Dataset.map`, so `datasets` caches it: a second run, or a second process of a distributed run, reads the
    result instead of resampling again. It runs in `num_proc` processes (default: `data_workers.map_processes`).
    A stream (or a dataset without the column) is returned as it is; its clips are resampled as they are read
    (`decode_audio`).
    """
    if isinstance(dataset, IterableDataset) or column not in dataset.column_names:
        return dataset
    return dataset.map(
        _resample_batch,
        batched=True,
        input_columns=[column],
        fn_kwargs={"column": column, "sampling_rate": sampling_rate, "files": files_state(dataset, [column])},
        num_proc=num_proc if num_proc is not None else map_processes(len(dataset)),
        features=dataset.features,
        desc=f"Resampling audio to {sampling_rate} Hz",
    )


def _resample_batch(values, column, sampling_rate, files):
    """`files` (`data_workers.files_state`) is not read: it keys the map's cache on the files' state."""
    return {column: [_at_rate(value, sampling_rate) for value in values]}


def _at_rate(value, sampling_rate):
    if value is None or not isinstance(value, dict) or "array" in value:
        return value
    if soundfile.info(audio_source(value)).samplerate == sampling_rate:
        return value
    wave, _ = decode_audio(value, sampling_rate=sampling_rate)
    encoded = io.BytesIO()
    soundfile.write(encoded, wave, sampling_rate, format="WAV", subtype="FLOAT")
    return {"bytes": encoded.getvalue(), "path": value.get("path")}

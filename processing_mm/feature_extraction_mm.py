"""Audio feature extractor of mm: raw 16 kHz waveforms -> Whisper-style log-mel spectrograms.

This file is Hub remote code: `save_pretrained` copies it flat next to the weights, so it imports only
`transformers`, `torch`, `numpy` and the standard library (`soundfile` only inside `read_audio`, which reads files).
"""

import contextlib
import io
import os

import numpy as np
import torch
import torch.nn.functional as F
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Integer PCM is scaled by its full-scale value so every dtype lands in [-1, 1].
_PCM_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}
_MAX_CHANNELS = 8


class MMFeatureExtractor(SequenceFeatureExtractor):
    r"""Turns raw mono or multi-channel waveforms into log-mel spectrograms for the mm audio tower.

    The features follow Whisper's recipe (`transformers.models.whisper.feature_extraction_whisper`): a Hann-window STFT
    (`n_fft`, `win_length`, `hop_length` = 10 ms at 16 kHz), a Slaney mel filter bank, `log10` clamped at 1e-10, a
    dynamic range of 8 decades below each clip's loudest frame, then `(x + 4) / 4`, which maps speech to roughly
    [-1, 1]. A clip of `n` samples gives `max(1, n // hop_length)` frames, so 0.5 s is 50 frames.

    Unlike Whisper, clips are not padded to 30 s: a batch is padded (after the spectrogram, with `padding_value`) to its
    longest clip, and `audio_attention_mask` marks the real frames. Each clip's spectrogram depends only on that clip,
    so a clip gives the same features alone or in any batch.

    Sampling rate: audio must already be at `sampling_rate` (16 kHz). A different rate raises a `ValueError` instead of
    being resampled silently, because resampling quality and cost are the caller's choice; resample with
    `dataset.cast_column("audio", datasets.Audio(sampling_rate=16000))` or `librosa.resample(y, orig_sr=sr,
    target_sr=16000)`.

    Args:
        feature_size (`int`, defaults to 80): number of mel bins (`MMAudioConfig.num_mel_bins`).
        sampling_rate (`int`, defaults to 16000): the rate the audio must be sampled at, in Hz.
        hop_length (`int`, defaults to 160): samples between frames.
        n_fft (`int`, defaults to 400): FFT size.
        win_length (`int`, defaults to 400): Hann window length, at most `n_fft`.
        max_length (`int`, defaults to 1000): the most frames a clip keeps (`2 * MMAudioConfig.max_source_positions`);
            longer clips are truncated, or rejected with `truncation=False`.
        padding_value (`float`, defaults to 0.0): value of padded frames. Zero is what the audio stem's convolutions
            pad with, so the last real frames see the same neighbours in a batch as alone.
        return_attention_mask (`bool`, defaults to `True`): whether `__call__` returns `audio_attention_mask`.

    Example:
    ```python
    >>> import numpy as np
    >>> from processing_mm import MMFeatureExtractor
    >>> feature_extractor = MMFeatureExtractor(feature_size=32, max_length=128)
    >>> clips = [np.random.randn(8000).astype(np.float32) * 0.1, np.zeros(4000, dtype=np.float32)]
    >>> features = feature_extractor(clips, sampling_rate=16000, return_tensors="pt")
    >>> features["input_features"].shape, features["audio_attention_mask"].sum(-1).tolist()
    (torch.Size([2, 32, 50]), [50, 25])
    ```
    """

    model_input_names = ["input_features", "audio_attention_mask"]

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        hop_length: int = 160,
        n_fft: int = 400,
        win_length: int = 400,
        max_length: int = 1000,
        padding_value: float = 0.0,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        sizes = dict(feature_size=feature_size, sampling_rate=sampling_rate, hop_length=hop_length, n_fft=n_fft,
                     win_length=win_length, max_length=max_length)
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MMFeatureExtractor.{name} must be a positive int, got {value!r}.")
        if win_length > n_fft:
            raise ValueError(f"MMFeatureExtractor.win_length ({win_length}) must be <= n_fft ({n_fft}).")
        if self.padding_side != "right":
            raise ValueError(f"MMFeatureExtractor pads on the right only, got padding_side={self.padding_side!r}.")
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.win_length = win_length
        self.max_length = max_length
        # Built once here, not per call; `to_dict` leaves them out of the saved JSON.
        mel_filters = torch.from_numpy(
            mel_filter_bank(
                num_frequency_bins=1 + n_fft // 2,
                num_mel_filters=feature_size,
                min_frequency=0.0,
                max_frequency=sampling_rate / 2,
                sampling_rate=sampling_rate,
                norm="slaney",
                mel_scale="slaney",
            ).T.astype(np.float32)
        )  # (n_mels, n_fft // 2 + 1)
        self.mel_filters = mel_filters.to_sparse()  # COO: see `_log_mel` for why sparse
        # A Hann window of win_length centred in n_fft samples, as torch.stft pads a shorter window.
        left = (n_fft - win_length) // 2
        self.window = F.pad(torch.hann_window(win_length), (left, n_fft - win_length - left))

    def to_dict(self):
        output = super().to_dict()
        output.pop("mel_filters", None)
        output.pop("window", None)
        return output

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = True,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        device: str | torch.device = "cpu",
    ) -> BatchFeature:
        r"""Computes the log-mel features of one clip or a batch of clips.

        Args:
            raw_speech: one clip or a list of clips. A clip is a 1-D array/tensor/list of samples, a 2-D array of one
                multi-channel clip, either `(channels, samples)` or `(samples, channels)` with at most 8 channels
                (averaged to mono), or a path to an audio file (read with `soundfile`). A 2-D array is never a batch:
                pass a batch as a list. Float samples are taken as [-1, 1]; int16/int32/uint8 PCM is scaled to it.
            sampling_rate (`int`): the rate of `raw_speech`; must equal `self.sampling_rate` (see the class docstring
                for how to resample). Checked against the file's own rate for paths.
            padding (`bool` or `str`, defaults to `True`): `True`/`"longest"` pads to the longest clip of the batch,
                `"max_length"` to `max_length` frames, `False`/`"do_not_pad"` returns one array per clip.
            max_length (`int`, *optional*): frames to truncate/pad to; defaults to `self.max_length`.
            truncation (`bool`, defaults to `True`): cut clips longer than `max_length` frames; with `False` such a
                clip raises a `ValueError` instead.
            return_attention_mask (`bool`, *optional*): return `audio_attention_mask` (defaults to
                `self.return_attention_mask`).
            return_tensors (`str`, *optional*): `"pt"` or `"np"`; `None` returns numpy arrays.
            device (`str` or `torch.device`, defaults to `"cpu"`): where the spectrograms are computed.

        Returns:
            `BatchFeature` with `input_features` `(batch, feature_size, frames)` float32 and `audio_attention_mask`
            `(batch, frames)` with 1 on real frames. An empty clip gives one silent frame, marked as real so that
            pooling over it stays finite.
        """
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise ValueError(
                f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}."
            )
        max_length = self.max_length if max_length is None else max_length
        if return_attention_mask is None:
            return_attention_mask = self.return_attention_mask

        clips = self._to_mono_clips(raw_speech, sampling_rate)
        num_frames = []
        for index, clip in enumerate(clips):
            frames = max(1, clip.shape[0] // self.hop_length)
            if frames > max_length and not truncation:
                raise ValueError(
                    f"Audio {index} has {frames} frames ({clip.shape[0] / self.sampling_rate:.2f} s), more than "
                    f"max_length={max_length}; pass truncation=True to keep its first {max_length} frames, or split it."
                )
            num_frames.append(min(frames, max_length))

        features = self._log_mel(clips, num_frames, device)  # (batch, n_mels, longest) float32
        mask = (np.arange(features.shape[-1])[None, :] < np.asarray(num_frames)[:, None]).astype(np.int64)

        if padding == "max_length":
            extra = max_length - features.shape[-1]
            features = np.pad(features, ((0, 0), (0, 0), (0, extra)), constant_values=self.padding_value)
            mask = np.pad(mask, ((0, 0), (0, extra)))
        if padding in (False, "do_not_pad"):
            data = {
                "input_features": [feature[:, :n] for feature, n in zip(features, num_frames)],
                "audio_attention_mask": [row[:n] for row, n in zip(mask, num_frames)],
            }
            if return_tensors is not None and len(set(num_frames)) > 1:
                raise ValueError(
                    f"padding=False gives clips of different lengths {num_frames} frames, which cannot be stacked "
                    f"into {return_tensors!r} tensors; use padding=True or return_tensors=None."
                )
        else:
            data = {"input_features": features, "audio_attention_mask": mask}
        if not return_attention_mask:
            del data["audio_attention_mask"]
        return BatchFeature(data, tensor_type=return_tensors)

    def _to_mono_clips(self, raw_speech, sampling_rate: int | None) -> list[np.ndarray]:
        """Normalises every accepted input form to a list of 1-D float32 arrays in [-1, 1]."""
        is_single = (
            isinstance(raw_speech, (str, os.PathLike, np.ndarray, torch.Tensor))
            # A list of numbers is one clip; a list of anything else (arrays, lists, paths) is a batch.
            or (isinstance(raw_speech, (list, tuple)) and (len(raw_speech) == 0 or _is_number(raw_speech[0])))
        )
        items = [raw_speech] if is_single else list(raw_speech)
        if sampling_rate is not None:
            self._check_rate(sampling_rate, "the audio")
        elif not all(isinstance(item, (str, os.PathLike)) for item in items):
            logger.warning_once(
                f"It is strongly recommended to pass the `sampling_rate` argument to {type(self).__name__} "
                f"(expected {self.sampling_rate} Hz). Without it, audio at another rate gives wrong features silently."
            )
        return [self._to_mono(item, index) for index, item in enumerate(items)]

    def _check_rate(self, rate: int, what: str) -> None:
        if rate != self.sampling_rate:
            raise ValueError(
                f"{what} is sampled at {rate} Hz but {type(self).__name__} expects {self.sampling_rate} Hz. Resample "
                f"it first, e.g. `dataset.cast_column('audio', datasets.Audio(sampling_rate={self.sampling_rate}))` "
                f"or `librosa.resample(y, orig_sr={rate}, target_sr={self.sampling_rate})`."
            )

    def _to_mono(self, item, index: int) -> np.ndarray:
        if isinstance(item, (str, os.PathLike)):
            item = self._read_file(item, index)
        elif isinstance(item, torch.Tensor):
            item = item.detach().cpu()
            item = (item.float() if item.is_floating_point() else item).numpy()  # numpy has no bfloat16
        array = np.asarray(item)
        if array.dtype.kind in "iu":
            array = _pcm_to_float(array, index)
        elif array.dtype.kind != "f":
            raise ValueError(f"Audio {index} has dtype {array.dtype}; expected float, int16, int32 or uint8 samples.")
        if array.ndim == 2:
            array = _downmix(array, index)
        elif array.ndim != 1:
            raise ValueError(
                f"Audio {index} has shape {array.shape}; expected a 1-D clip or a 2-D multi-channel clip "
                "(a batch must be a list of clips)."
            )
        array = np.asarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"Audio {index} contains NaN or infinite samples; clean or drop this clip.")
        return array

    def _read_file(self, path, index: int) -> np.ndarray:
        try:
            samples, rate = read_audio(path)
        except ImportError:
            raise
        except Exception as err:
            raise ValueError(f"Audio {index} ({os.fspath(path)!r}) could not be read: {err}") from err
        self._check_rate(rate, f"Audio {index} ({os.fspath(path)!r})")
        return samples

    def _log_mel(self, clips: list[np.ndarray], num_frames: list[int], device) -> np.ndarray:
        """Log-mel of clips of different lengths; returns (batch, n_mels, max(num_frames)) float32, each clip's
        frames past its own `num_frames` set to `padding_value`."""
        device = torch.device(device)
        # On CPU, clip by clip: one 30 s clip's frames (3000 x n_fft floats) stay in cache where a batch's do not,
        # which made batch 16 ~3x faster per clip. An accelerator gets the whole batch in one go.
        on_cpu = device.type == "cpu"
        group = 1 if on_cpu else len(clips)
        features = np.full((len(clips), self.feature_size, max(num_frames)), self.padding_value, dtype=np.float32)
        with _one_intra_op_thread() if on_cpu else contextlib.nullcontext():
            for start in range(0, len(clips), group):
                frames = num_frames[start : start + group]
                signal = torch.from_numpy(self._padded_signal(clips[start : start + group], frames)).to(device)
                features[start : start + group, :, : max(frames)] = self._batch_log_mel(signal, frames).cpu().numpy()
        return features

    def _padded_signal(self, clips: list[np.ndarray], num_frames: list[int]) -> np.ndarray:
        """The samples the kept frames read, (batch, (max(num_frames) - 1) * hop_length + n_fft) float32.

        Each clip is padded on its own, as `torch.stft(center=True)` would (reflect, or zeros for clips too short
        to reflect), then right-padded with zeros to a common length. Frames inside a clip never reach the zeros,
        so the result does not depend on the rest of the batch. `np.pad`, because torch's reflect pad of a long
        1-D signal is several times slower.
        """
        half = self.n_fft // 2
        signal = np.zeros((len(clips), (max(num_frames) - 1) * self.hop_length + self.n_fft), dtype=np.float32)
        for row, (clip, frames) in enumerate(zip(clips, num_frames)):
            # Only the samples the kept frames reach: this is where truncation happens, before any FFT work.
            clip = clip[: (frames - 1) * self.hop_length + half + 1]
            padded = np.pad(clip, half, mode="reflect" if clip.shape[0] > half else "constant")
            length = min(signal.shape[1], padded.shape[0])
            signal[row, :length] = padded[:length]
        return signal

    def _batch_log_mel(self, signal: torch.Tensor, num_frames: list[int]) -> torch.Tensor:
        """(batch, samples) from `_padded_signal` -> (batch, n_mels, max(num_frames)) log-mel, on `signal`'s device."""
        device, longest = signal.device, max(num_frames)
        # torch.stft(center=False) computed by hand: the same frames and FFT, but the spectrum comes out
        # (batch, frames, freq)-contiguous, which the power and mel steps below read without strided access.
        frames = signal.unfold(-1, self.n_fft, self.hop_length) * self.window.to(device)  # (batch, longest, n_fft)
        spectrum = torch.fft.rfft(frames)  # (batch, longest, n_fft // 2 + 1)
        power = spectrum.real.square() + spectrum.imag.square()  # |X|^2, without the sqrt that .abs() takes
        # The Slaney filter bank is ~97% zeros: a sparse product is several times faster than the dense matmul,
        # which would otherwise cost as much as the FFT itself.
        power = power.reshape(-1, power.shape[-1]).T.contiguous()  # (freq, batch * longest)
        mel = torch.sparse.mm(self.mel_filters.to(device), power)  # (n_mels, batch * longest)
        log_mel = mel.clamp_(min=1e-10).log10_().view(-1, signal.shape[0], longest).transpose(0, 1)

        # Whisper's dynamic range compression, with the peak taken over each clip's own frames only.
        valid = torch.arange(longest, device=device)[None, :] < torch.tensor(num_frames, device=device)[:, None]
        peak = log_mel.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_mel = (torch.maximum(log_mel, peak - 8.0) + 4.0) / 4.0
        return log_mel.masked_fill_(~valid[:, None, :], self.padding_value)


@contextlib.contextmanager
def _one_intra_op_thread():
    """torch on one intra-op thread inside the block, restored after it. One clip's ops are too small to split: with
    two threads each op waits for the other at its end, and on a busy machine that wait is a time slice, which made
    the log-mel of 64 short clips take 2.2 CPU-s (4.5 s of wall time) instead of 0.11 CPU-s with one thread."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_audio(source) -> tuple[np.ndarray, int]:
    """A file path, encoded bytes or a binary file object -> `(mono float32 samples, sampling rate)`, read with
    soundfile, its channels averaged. mm's one audio-file reader: the feature extractor, the speech-recognition
    pipeline and `training_mm.data.decode_audio` all read files through it."""
    try:  # inside `try`, so that loading this file as remote code does not require soundfile
        import soundfile
    except ImportError as err:
        raise ImportError("Reading audio files needs the soundfile package: `pip install soundfile`.") from err
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
    samples, rate = soundfile.read(source, dtype="float32", always_2d=True)  # (samples, channels)
    return np.ascontiguousarray(samples.mean(axis=1)), int(rate)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _pcm_to_float(array: np.ndarray, index: int) -> np.ndarray:
    if array.dtype == np.uint8:  # 8-bit WAV is unsigned with silence at 128
        return (array.astype(np.float32) - 128.0) / 128.0
    if array.dtype in _PCM_SCALE:
        return array.astype(np.float32) / _PCM_SCALE[array.dtype]
    raise ValueError(
        f"Audio {index} has integer dtype {array.dtype}, whose full scale is ambiguous; pass float samples in "
        "[-1, 1] or int16/int32/uint8 PCM."
    )


def _downmix(array: np.ndarray, index: int) -> np.ndarray:
    # Loaders disagree on layout: soundfile gives (samples, channels), torchaudio and librosa (channels, samples).
    # The short axis is the channel axis.
    channel_axis = 0 if array.shape[0] <= array.shape[1] else 1
    if array.shape[channel_axis] > _MAX_CHANNELS:
        raise ValueError(
            f"Audio {index} is a 2-D array of shape {array.shape}, read as one multi-channel clip, but it has more "
            f"than {_MAX_CHANNELS} channels. Pass a batch as a list of 1-D clips, not a 2-D array."
        )
    return array.mean(axis=channel_axis)


MMFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = ["MMFeatureExtractor"]

"""Training and scoring of mm's text-to-speech head (examples/run_text_to_speech.py): batches with target log-mel
spectrograms and per-token durations, and mel-cepstral distortion between a generated and a reference clip.

The built-in data has no phoneme alignments, so the durations the duration predictor learns (and the decoder is
driven by in training) are the clip's frames shared out over the tokens in proportion to their characters plus one
(special tokens get the "plus one": the pauses at the ends). espeak-ng speaks at a steady rate, so this is close to
an alignment; the decoder's self-attention absorbs what it misses. See docs/design.md ("Text to speech").
"""

import numpy as np
import torch
import torch.nn.functional as F

from .data import SAMPLING_RATE, decode_audio


def proportional_durations(offsets, attention_mask, num_frames):
    """Frames per token: `num_frames` shared out over the real tokens in proportion to (characters + 1), as integers
    that sum to `num_frames`. `offsets` (L, 2) character spans, `attention_mask` (L,).

    >>> proportional_durations(torch.tensor([[0, 0], [0, 3], [3, 9], [0, 0]]), torch.tensor([1, 1, 1, 0]), 20)
    tensor([ 2,  5, 13,  0])
    """
    weights = (offsets[:, 1] - offsets[:, 0] + 1).float() * attention_mask.float()
    edges = torch.round(torch.cumsum(weights, 0) / weights.sum() * num_frames).long()
    return torch.diff(edges, prepend=edges.new_zeros(1))


class TextToSpeechCollator:
    """Rows with `caption` and `audio` -> `MMForTextToSpeech.forward` arguments: `input_ids`, `attention_mask`, the
    target log-mel `labels` (B, T, mels) with `labels_mask`, and `durations` (B, L)."""

    def __init__(self, tokenizer, mel_spectrogram, max_frames):
        self.tokenizer = tokenizer
        self.mel_spectrogram = mel_spectrogram
        self.max_frames = max_frames

    def __call__(self, rows):
        tokens = self.tokenizer(
            [row["caption"] for row in rows],
            padding=True,
            truncation=True,  # to the tokenizer's model_max_length: the text tower's positions
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        mels = []
        for row in rows:
            wave = torch.from_numpy(decode_audio(row["audio"], sampling_rate=SAMPLING_RATE)[0]).float()
            mels.append(self.mel_spectrogram(wave[None])[0][: self.max_frames])  # (T, mels)
        length = max(mel.shape[0] for mel in mels)
        labels = torch.stack([F.pad(mel, (0, 0, 0, length - mel.shape[0]), value=mel.min().item()) for mel in mels])
        labels_mask = torch.stack([(torch.arange(length) < mel.shape[0]).long() for mel in mels])
        durations = torch.stack(
            [
                proportional_durations(offsets, mask, mel.shape[0])
                for offsets, mask, mel in zip(tokens["offset_mapping"], tokens["attention_mask"], mels)
            ]
        )
        return {
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "labels": labels,
            "labels_mask": labels_mask,
            "durations": durations,
        }


def mel_cepstral_distortion(log_mel, reference_log_mel, num_coefficients=13):
    """Mel-cepstral distortion (dB) between two log-mel spectrograms (frames, mels) of one utterance, after dynamic
    time warping: the mean over aligned frames of (10 / ln 10) * sqrt(2 * sum_k (c_k - c'_k)^2) over cepstral
    coefficients 1..K (c_0, the energy, excluded), the formula of TTS papers. Lower is better; 0 is identical. The
    cepstra here are the orthonormal DCT of the natural-log mel magnitudes, not SPTK mel-cepstra of a WORLD envelope,
    so the values compare runs of this project, not published MCD."""
    cepstra = _cepstra(log_mel, num_coefficients)
    reference = _cepstra(reference_log_mel, num_coefficients)
    costs = np.sqrt(2 * ((cepstra[:, None] - reference[None]) ** 2).sum(-1)) * (10 / np.log(10))
    path_cost, path_length = _dtw(costs)
    return float(path_cost / path_length)


def _cepstra(log_mel, num_coefficients):
    """DCT-II (orthonormal) of each frame's log-mel, coefficients 1..num_coefficients: (frames, K)."""
    log_mel = np.asarray(log_mel, dtype=np.float64)
    mels = log_mel.shape[1]
    basis = np.cos(np.pi / mels * (np.arange(mels) + 0.5)[None] * np.arange(1, num_coefficients + 1)[:, None])
    return log_mel @ basis.T * np.sqrt(2.0 / mels)


def _dtw(costs):
    """Cost and length of the cheapest monotonic path through `costs` (n, m), steps (1,0), (0,1), (1,1)."""
    n, m = costs.shape
    total = np.full((n + 1, m + 1), np.inf)
    steps = np.zeros((n + 1, m + 1))
    total[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = (total[i - 1, j], total[i, j - 1], total[i - 1, j - 1])
            best = int(np.argmin(options))
            previous = ((i - 1, j), (i, j - 1), (i - 1, j - 1))[best]
            total[i, j] = costs[i - 1, j - 1] + options[best]
            steps[i, j] = steps[previous] + 1
    return total[n, m], steps[n, m]

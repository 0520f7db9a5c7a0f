"""The spectrogram side of mm's text-to-speech: log-mel spectrograms of waveforms, and waveforms back from them by
inverting the mel filter bank and reconstructing the phase with Griffin-Lim, all in torch.

Griffin-Lim follows `librosa.griffinlim` step for step (the "fast" variant with momentum of Perraudin et al., 2013,
zero initial phase, centred zero-padded frames, a periodic Hann window), so the two agree on the same magnitudes
(tests/test_text_to_speech.py checks it). This file is Hub remote code: it imports only torch and transformers.
"""

import torch
from torch import nn
from transformers.audio_utils import mel_filter_bank

LOG_FLOOR = 1e-5  # magnitudes below this are clamped before the log: the spectrogram's silence level


class MMMelSpectrogram(nn.Module):
    """Waveform (B, N) <-> log-mel spectrogram (B, frames, num_mel_bins), as `config` (an `MMSpeechConfig`) sets it.

    The mel scale is Slaney's with Slaney normalisation (librosa's default filters) over STFT magnitudes;
    `mel_to_waveform` inverts the filter bank by least squares (clamped at zero) and runs Griffin-Lim.
    """

    def __init__(self, config):
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.num_mel_bins = config.num_mel_bins
        self._tensors = {}

    def _filters(self, device):
        """(mel filters (freq, mel), their pseudo-inverse (mel, freq), Hann window), made on first use per device.
        Not buffers: transformers builds models on the meta device, and these are no weights to load."""
        if device not in self._tensors:
            filters = mel_filter_bank(
                num_frequency_bins=self.n_fft // 2 + 1,
                num_mel_filters=self.num_mel_bins,
                min_frequency=0.0,
                max_frequency=self.sampling_rate / 2,
                sampling_rate=self.sampling_rate,
                norm="slaney",
                mel_scale="slaney",
            )
            filters = torch.tensor(filters, dtype=torch.float32)
            inverse = torch.linalg.pinv(filters)
            window = torch.hann_window(self.n_fft)
            self._tensors[device] = tuple(tensor.to(device) for tensor in (filters, inverse, window))
        return self._tensors[device]

    def forward(self, waveform):
        """(B, N) float waveform -> (B, frames, num_mel_bins) natural-log mel magnitudes."""
        filters, _, window = self._filters(waveform.device)
        magnitudes = stft(waveform.float(), self.n_fft, self.hop_length, window).abs()  # (B, freq, frames)
        mel = torch.matmul(magnitudes.transpose(1, 2), filters)
        return torch.log(mel.clamp(min=LOG_FLOOR))

    def mel_to_waveform(self, log_mel, num_iterations):
        """(B, frames, num_mel_bins) log-mel -> (B, (frames - 1) * hop_length) waveform."""
        _, inverse, window = self._filters(log_mel.device)
        mel = torch.exp(log_mel.float())
        magnitudes = torch.matmul(mel, inverse).clamp(min=0).transpose(1, 2)  # (B, freq, frames)
        return griffin_lim(magnitudes, self.n_fft, self.hop_length, window, num_iterations)


def stft(waveform, n_fft, hop_length, window):
    return torch.stft(
        waveform, n_fft, hop_length, window=window, center=True, pad_mode="constant", return_complex=True
    )


def griffin_lim(magnitudes, n_fft, hop_length, window, num_iterations=32, momentum=0.99):
    """A waveform whose STFT magnitudes approach `magnitudes` (B, n_fft // 2 + 1, frames), like `librosa.griffinlim`
    with `init=None` (zero phase) and `center=True`. Returns (B, (frames - 1) * hop_length)."""
    length = (magnitudes.shape[-1] - 1) * hop_length
    angles = magnitudes.to(torch.complex64)
    previous = None
    for _ in range(num_iterations):
        waveform = torch.istft(angles, n_fft, hop_length, window=window, center=True, length=length)
        rebuilt = stft(waveform, n_fft, hop_length, window)
        angles = rebuilt if previous is None else rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / (angles.abs() + torch.finfo(magnitudes.dtype).tiny) * magnitudes
        previous = rebuilt
    return torch.istft(angles, n_fft, hop_length, window=window, center=True, length=length)

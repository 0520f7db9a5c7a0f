"""Text to speech from mm's text tower: `MMForTextToSpeech`, a non-autoregressive (FastSpeech-style) mel decoder.

text tower (token states) -> projection + encoder layers -> duration predictor (frames per token) -> each token's
state repeated for its frames (the length regulator of FastSpeech, Ren et al., 2019) + frame positions -> decoder
layers -> log-mel frames -> Griffin-Lim (modeling_mm_griffin_lim.py) -> waveform.

Why non-autoregressive: every frame is predicted in one pass, so training is one teacher-forced pass with no exposure
bias and no attention to learn to align (the failure mode of autoregressive mel decoders trained briefly), and
generating a clip costs one forward pass instead of one per frame. The durations it learns come from the training
collator (training_mm/text_to_speech.py): see docs/design.md for how they are made without an aligner.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import ModelOutput

from .modeling_mm_griffin_lim import LOG_FLOOR, MMMelSpectrogram
from .modeling_mm_layers import MMEncoder
from .modeling_mm_text import MMTextModel
from .modeling_mm_utils import MMPreTrainedModel


@dataclass
class MMTextToSpeechOutput(ModelOutput):
    """Output of `MMForTextToSpeech.forward`.

    Args:
        loss: L1 of the log-mel frames plus the MSE of the log durations (when `labels` are given).
        spectrogram: (B, frames, num_mel_bins) predicted log-mel; `spectrogram_mask` (B, frames) marks real frames.
        log_durations: (B, L) predicted log(1 + frames) of each token.
    """

    loss: torch.FloatTensor | None = None
    spectrogram: torch.FloatTensor | None = None
    spectrogram_mask: torch.LongTensor | None = None
    log_durations: torch.FloatTensor | None = None


@dataclass
class MMSpeechOutput(ModelOutput):
    """Output of `MMForTextToSpeech.generate_speech`: `waveform` (B, N) at `config.speech_config.sampling_rate`,
    `waveform_lengths` (B,) real samples of each row, and the `spectrogram` (B, frames, num_mel_bins) it came from."""

    waveform: torch.FloatTensor | None = None
    waveform_lengths: torch.LongTensor | None = None
    spectrogram: torch.FloatTensor | None = None


class MMDurationPredictor(nn.Module):
    """Two 1-D convolutions over the token states, then a linear layer: log(1 + frames) per token (FastSpeech)."""

    def __init__(self, config):
        super().__init__()
        hidden = config.hidden_size
        self.conv1 = nn.Conv1d(hidden, hidden, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel_size=3, padding=1)
        self.layer_norm1 = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, hidden_states):  # (B, L, D) -> (B, L)
        hidden_states = self.layer_norm1(F.relu(self.conv1(hidden_states.transpose(1, 2))).transpose(1, 2))
        hidden_states = self.layer_norm2(F.relu(self.conv2(hidden_states.transpose(1, 2))).transpose(1, 2))
        return self.proj(hidden_states).squeeze(-1)


class MMForTextToSpeech(MMPreTrainedModel):
    """mm's text tower with a text-to-speech head: text -> log-mel spectrogram -> waveform (Griffin-Lim).

    Loading an `MMModel` checkpoint (e.g. from run_clip.py) keeps its trained text tower; the head starts untrained.
    With `freeze_text_model()` the tower stays exactly the one that retrieves and conditions images.

    Example:
    ```python
    >>> import torch
    >>> from configuration_mm import MMConfig
    >>> from modeling_mm import MMForTextToSpeech
    >>> speech = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    >>> model = MMForTextToSpeech(MMConfig.from_preset("tiny", speech_config=speech))
    >>> out = model.generate_speech(input_ids=torch.tensor([[1, 5, 9, 2]]))
    >>> out.waveform.shape[0], model.config.speech_config.sampling_rate
    (1, 16000)
    ```
    """

    main_input_name = "input_ids"
    input_modalities = ("text",)
    output_modalities = ("audio",)

    def __init__(self, config):
        super().__init__(config)
        speech = config.speech_config
        self.text_model = MMTextModel._from_config(config.text_config)
        # The head's layers are no PreTrainedModel of their own: they attend the way the tower was set up to.
        speech._attn_implementation = self.text_model.config._attn_implementation
        self.speech_projection = nn.Linear(config.text_config.hidden_size, speech.hidden_size)
        self.speech_encoder = MMEncoder(speech)
        self.duration_predictor = MMDurationPredictor(speech)
        self.frame_position_embedding = nn.Embedding(speech.max_frames, speech.hidden_size)
        self.speech_decoder = MMEncoder(speech)
        self.decoder_layer_norm = nn.LayerNorm(speech.hidden_size, eps=speech.layer_norm_eps)
        self.mel_head = nn.Linear(speech.hidden_size, speech.num_mel_bins)
        self.mel_spectrogram = MMMelSpectrogram(speech)
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    def freeze_text_model(self):
        """Stops training the text tower (the head still trains)."""
        self.text_model.requires_grad_(False)

    def forward(self, input_ids, attention_mask=None, labels=None, labels_mask=None, durations=None, return_dict=None):
        """Predicts the log-mel spectrogram of `input_ids` (B, L).

        Args:
            labels: (B, frames, num_mel_bins) target log-mel (`self.mel_spectrogram(waveform)`), with `labels_mask`
                (B, frames) marking real frames, and `durations` (B, L) frames per token summing to each row's frames.
                Given `labels`, the decoder is driven by `durations` (teacher forcing) and `loss` is returned.
            durations: without `labels`, frames per token to use instead of the predicted ones.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels is not None and durations is None:
            raise ValueError(
                "Training with `labels` needs `durations` (frames per token); see training_mm.text_to_speech."
            )
        text_states = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states = self.speech_projection(text_states)
        speech_config = self.config.speech_config
        token_mask = create_bidirectional_mask(
            config=speech_config, inputs_embeds=states, attention_mask=attention_mask
        )
        states = self.speech_encoder(states, token_mask).last_hidden_state  # (B, L, D)
        log_durations = self.duration_predictor(states).masked_fill(attention_mask == 0, 0.0)
        if durations is None:
            durations = torch.clamp(torch.round(torch.expm1(log_durations)), min=1).long() * attention_mask
        frames, frame_mask = self._expand(states, durations)  # (B, T, D), (B, T)
        positions = torch.arange(frames.shape[1], device=frames.device)
        frames = frames + self.frame_position_embedding(positions)[None]
        decoder_mask = create_bidirectional_mask(config=speech_config, inputs_embeds=frames, attention_mask=frame_mask)
        frames = self.speech_decoder(frames, decoder_mask).last_hidden_state
        spectrogram = self.mel_head(self.decoder_layer_norm(frames))  # (B, T, num_mel_bins)

        loss = None
        if labels is not None:
            mask = (labels_mask if labels_mask is not None else frame_mask)[:, : spectrogram.shape[1], None].float()
            labels = labels[:, : spectrogram.shape[1]]
            mel_loss = ((spectrogram - labels).abs() * mask).sum() / (mask.sum() * labels.shape[-1]).clamp(min=1)
            token_mask_float = attention_mask.float()
            duration_loss = (
                ((log_durations - torch.log1p(durations.float())) ** 2) * token_mask_float
            ).sum() / token_mask_float.sum()
            loss = mel_loss + duration_loss
        output = MMTextToSpeechOutput(
            loss=loss, spectrogram=spectrogram, spectrogram_mask=frame_mask, log_durations=log_durations
        )
        return output if return_dict else output.to_tuple()

    def _expand(self, states, durations):
        """Each token's state repeated `durations` times: (B, L, D), (B, L) -> (B, T, D) and the (B, T) frame mask,
        T the longest row's frames. More frames than `speech_config.max_frames` is an error, not a silent cut."""
        total = durations.sum(dim=1)
        max_frames = self.config.speech_config.max_frames
        if int(total.max()) > max_frames:
            raise ValueError(
                f"The speech would be {int(total.max())} frames long, more than speech_config.max_frames "
                f"({max_frames}); give a shorter text."
            )
        length = max(int(total.max()), 1)
        rows = [row.repeat_interleave(count, dim=0) for row, count in zip(states, durations)]
        frames = torch.stack([F.pad(row, (0, 0, 0, length - row.shape[0])) for row in rows])
        frame_mask = (torch.arange(length, device=states.device)[None] < total[:, None]).long()
        return frames, frame_mask

    @torch.no_grad()
    def generate_speech(self, input_ids, attention_mask=None, griffin_lim_iterations=None):
        """Text -> waveform: the predicted log-mel spectrogram, turned into audio by Griffin-Lim.

        Returns `MMSpeechOutput` (`waveform` (B, N), `waveform_lengths`, `spectrogram`); rows shorter than the longest
        are zero after their length.
        """
        output = self.forward(input_ids, attention_mask=attention_mask, return_dict=True)
        silence = output.spectrogram_mask[..., None] == 0
        spectrogram = output.spectrogram.masked_fill(silence, math.log(LOG_FLOOR))
        iterations = griffin_lim_iterations or self.config.speech_config.griffin_lim_iterations
        waveform = self.mel_spectrogram.mel_to_waveform(spectrogram, iterations)
        hop = self.config.speech_config.hop_length
        lengths = ((output.spectrogram_mask.sum(dim=1) - 1).clamp(min=0) * hop).clamp(max=waveform.shape[1])
        waveform = waveform * (torch.arange(waveform.shape[1], device=waveform.device)[None] < lengths[:, None])
        return MMSpeechOutput(waveform=waveform, waveform_lengths=lengths, spectrogram=output.spectrogram)

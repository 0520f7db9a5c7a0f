"""Audio towers of other architectures inside mm: Whisper-style encoders (Whisper, Qwen2-Audio, Voxtral,
AudioFlamingo3) take MMFeatureExtractor's log-mel frames, but at a fixed length and mostly without a padding mask.
This module pads their input, keeps the frame mask as the tower saw it, pools over real frames only, and maps the mask
to the tower's output positions. `MMModel.encode_audio` and `MMForConditionalGeneration` both go through it; for mm's
own audio tower every function here passes the input through.
"""

import inspect

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .modeling_mm_layers import masked_mean
from .modeling_mm_utils import MMAudioConfig

# Model types of audio encoders that take what MMFeatureExtractor makes (log-mel `input_features` of shape
# (batch, num_mel_bins, frames)) and are known to work as the audio tower.
WHISPER_STYLE_AUDIO_ENCODERS = (
    "whisper",
    "qwen2_audio_encoder",
    "voxtral_encoder",
    "audioflamingo3_encoder",
)


def check_audio_encoder(config, path):
    """Fails early, naming the problem, for an audio encoder that cannot take MMFeatureExtractor's log-mel frames."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_class = MODEL_MAPPING.get(type(config), None)
    takes = getattr(model_class, "main_input_name", None)
    if takes == "input_features" and getattr(config, "num_mel_bins", None):
        return
    problem = f"takes `{takes}`" if takes != "input_features" else "has no `num_mel_bins` in its config"
    raise ValueError(
        f"audio_encoder {path!r}: its {config.model_type!r} model {problem}, but the audio tower must take log-mel "
        "`input_features` (batch, num_mel_bins, frames), as MMFeatureExtractor makes them. Whisper-style encoders "
        f"do: model types {', '.join(WHISPER_STYLE_AUDIO_ENCODERS)}."
    )


def accepts_frame_mask(audio_model):
    """Whether the tower takes a (batch, frames) padding mask. Of other audio architectures only
    audioflamingo3_encoder does, as `input_features_mask`: the `attention_mask` of Qwen2-Audio's and Voxtral's
    encoders would be a 4-D attention mask, and both ignore padding by design."""
    return "input_features_mask" in inspect.signature(audio_model.forward).parameters


def encode_audio(audio_model, audio_config, input_features, frame_mask=None, takes_frame_mask=False, **kwargs):
    """The tower's `BaseModelOutputWithPooling` for log-mel `input_features` (B, n_mels, T) and their frame mask
    (B, T); its pooled output averages the positions of real frames. `takes_frame_mask`:
    `accepts_frame_mask(audio_model)`, looked up once by the caller."""
    kwargs["return_dict"] = True
    if audio_config.model_type == MMAudioConfig.model_type:
        return audio_model(input_features=input_features, audio_attention_mask=frame_mask, **kwargs)
    input_features, frame_mask = pad_frames(audio_config, input_features, frame_mask)
    inputs = {"input_features": input_features}
    if takes_frame_mask:
        inputs["input_features_mask"] = frame_mask
    outputs = audio_model(**inputs, **kwargs)
    return BaseModelOutputWithPooling(
        last_hidden_state=outputs.last_hidden_state,
        pooler_output=pooled_output(outputs, frame_mask),  # the mean over positions of real frames
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )


def tower_frame_mask(audio_config, input_features, frame_mask):
    """The frame mask as the audio tower saw it: padded to the fixed length of a Whisper-style tower (so the padding
    added there is masked even when the batch came without a mask)."""
    if audio_config.model_type == MMAudioConfig.model_type:
        return frame_mask
    return padded_frame_mask(audio_config, input_features, frame_mask)


def pad_frames(audio_config, input_features, frame_mask):
    """What an audio tower of another architecture takes: (input_features, frame_mask) padded to
    2 * max_source_positions frames, the fixed length of Whisper-style encoders (Whisper pads every clip to 30 s).
    These encoders see their padding (most take no mask), so every masked frame holds what Whisper's extractor
    computes for silence: the clip's loudest value minus 2 (its log-mel floor, 8 below the peak, after the
    (x + 4) / 4 scaling that MMFeatureExtractor shares)."""
    frame_mask = padded_frame_mask(audio_config, input_features, frame_mask)
    input_features = nn.functional.pad(input_features, (0, frame_mask.shape[1] - input_features.shape[2]))
    real = frame_mask.bool()[:, None, :]
    peak = input_features.masked_fill(~real, float("-inf")).amax(dim=(1, 2), keepdim=True)
    silence = torch.nan_to_num(peak - 2.0, neginf=0.0)  # a clip with no real frame has no peak
    return torch.where(real, input_features, silence), frame_mask


def padded_frame_mask(audio_config, input_features, frame_mask):
    """The frame mask (all ones when there is none) padded with 0 to the fixed length of a Whisper-style tower."""
    batch, _, frames = input_features.shape
    if frame_mask is None:
        frame_mask = torch.ones(batch, frames, dtype=torch.long, device=input_features.device)
    expected = 2 * (getattr(audio_config, "max_source_positions", None) or 0)
    if expected and frames > expected:
        raise ValueError(
            f"The audio tower ({audio_config.model_type}) takes at most {expected} log-mel frames, got {frames}: "
            f"set the feature extractor's max_length to {expected} frames or less (its default for this tower)."
        )
    return nn.functional.pad(frame_mask, (0, max(expected - frames, 0)))


def pooled_output(outputs, attention_mask=None):
    """A tower's pooled output; for towers without a pooler, the mean of its last hidden states over real
    positions. The mask is per token for text; an audio frame mask is down-sampled to the hidden states."""
    if getattr(outputs, "pooler_output", None) is not None:
        return outputs.pooler_output
    hidden = outputs.last_hidden_state
    if attention_mask is not None and attention_mask.shape[-1] > hidden.shape[1]:
        # Audio towers shorten time by a stride (Whisper's stem by 2, Qwen2-Audio's by 4 with its average pool):
        # position i starts at frame i * stride, so it holds audio when that frame does.
        attention_mask = attention_mask[:, :: -(-attention_mask.shape[-1] // hidden.shape[1])]
    if attention_mask is None or attention_mask.shape[-1] != hidden.shape[1]:
        return hidden.mean(dim=1)
    return masked_mean(hidden, attention_mask)


def positions_mask(frame_mask, states):
    """The audio frame mask (B, frames) down-sampled to the tower's output positions (B, positions): the mm audio
    stem keeps every second frame; a tower of another architecture is assumed to stride evenly."""
    if frame_mask is None:
        return torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
    frames, positions = frame_mask.shape[1], states.shape[1]
    stride = max(1, -(-frames // positions))  # ceil
    return frame_mask[:, ::stride][:, :positions].to(states.device).long()

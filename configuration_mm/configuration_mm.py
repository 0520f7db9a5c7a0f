"""Configurations of the mm model family: one config per tower, composed into `MMConfig` the way SigLIP
composes its towers (`transformers/models/siglip/configuration_siglip.py`).

This file is also Hub remote code: `save_pretrained` copies it flat next to the weights, so it may import
only `transformers` and the standard library.
"""

from typing import TYPE_CHECKING

from transformers import PreTrainedConfig

if TYPE_CHECKING:  # never executed: see REMOTE_CODE_CLOSURE below
    from .modeling_mm_generation import MMForConditionalGeneration  # noqa: F401
    from .modeling_mm_fusion import MMForClassification  # noqa: F401
    from .pipeline_mm import MMImageToTextPipeline, MMSpeechRecognitionPipeline  # noqa: F401
    from .modeling_mm_speech import MMForTextToSpeech  # noqa: F401
    from .pipeline_mm_text_to_speech import MMTextToSpeechPipeline  # noqa: F401
    from .pipeline_mm_classification import MMClassificationPipeline  # noqa: F401

# Attention back-ends the encoders dispatch to through transformers' attention interface.
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
# What an encoder tower's self-attention computes (modeling_mm_long_attention.py): full softmax attention through the
# back-end above, or one of the long-input variants. Saved in config.json, unlike attn_implementation.
ATTENTION_TYPES = ("full", "local", "block_sparse", "linear")
LOSS_TYPES = ("clip", "siglip")
MODALITIES = ("text", "image", "audio")
FUSION_TYPES = ("late", "concat", "cross", "gated")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
TASK_LOSS_WEIGHTINGS = ("uncertainty", "sum")


def _check_positive(config, *names):
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive number, got {value!r}.")


def _check_positive_int(config, *names):
    """Sizes and counts: a float such as 32.0 (e.g. from a hand-edited JSON) would break shapes deep in the model."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}.")


def _check_activation(config):
    from transformers.activations import ACT2FN

    if config.hidden_act not in ACT2FN:
        raise ValueError(
            f"{type(config).__name__}.hidden_act is {config.hidden_act!r}, which transformers does not know; choose "
            f"one of {sorted(ACT2FN)}."
        )


def _check_heads(config):
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(
            f"{type(config).__name__}.hidden_size ({config.hidden_size}) must be divisible by num_attention_heads "
            f"({config.num_attention_heads}); choose a head count that divides it, e.g. "
            f"{[h for h in (1, 2, 4, 8, 12, 16) if config.hidden_size % h == 0]}."
        )


def _check_attn_implementation(config):
    impl = getattr(config, "_attn_implementation_internal", None)
    if impl is not None and impl not in ATTENTION_IMPLEMENTATIONS and not _is_registered_attention(impl):
        raise ValueError(
            f"{type(config).__name__}: unknown attn_implementation {impl!r}; choose one of "
            f"{list(ATTENTION_IMPLEMENTATIONS)} or a function registered with AttentionInterface."
        )


def _check_attention_type(config):
    name = type(config).__name__
    if config.attention_type not in ATTENTION_TYPES:
        raise ValueError(
            f"{name}.attention_type must be one of {list(ATTENTION_TYPES)}, got {config.attention_type!r}."
        )
    for field in ("attention_window", "attention_block_size"):
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}.{field} must be a positive integer, got {value!r}.")
    value = config.num_global_tokens
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}.num_global_tokens must be an integer >= 0, got {value!r}.")
    if value and config.attention_type not in ("local", "block_sparse"):
        raise ValueError(
            f"{name}.num_global_tokens={value} needs attention_type 'local' or 'block_sparse' (the patterns that "
            f"global tokens connect), got attention_type={config.attention_type!r}; set num_global_tokens=0."
        )
    if config.attention_type == "linear" and config.attention_dropout:
        raise ValueError(
            f"{name}.attention_dropout={config.attention_dropout} cannot apply to attention_type='linear', which has "
            "no attention probabilities to drop; set attention_dropout=0.0 (hidden_dropout still applies)."
        )


def _is_registered_attention(name):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return isinstance(name, str) and (name in ALL_ATTENTION_FUNCTIONS or name.startswith("kernels-community/"))


class _MMEncoderConfig(PreTrainedConfig):
    """Fields every transformer tower shares; each tower adds its input-specific ones.

    Attention for long inputs (modeling_mm_long_attention.py; the default "full" is plain softmax attention):
        attention_type (`str`): "full", "local" (sliding window), "block_sparse" (BigBird-like blocks with
            power-of-two strides) or "linear" (elu + 1 feature map, O(T) memory).
        attention_window (`int`): for "local", each position attends to those at most this many positions away.
        attention_block_size (`int`): for "block_sparse", positions per block.
        num_global_tokens (`int`): for "local" and "block_sparse", learned tokens put in front of the sequence that
            attend to and are attended by every position; they are left out of the outputs and the pooling.
    """

    def __init__(
        self,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        initializer_range=0.02,
        attention_type="full",
        attention_window=128,
        attention_block_size=64,
        num_global_tokens=0,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.initializer_range = initializer_range
        self.attention_type = attention_type
        self.attention_window = attention_window
        self.attention_block_size = attention_block_size
        self.num_global_tokens = num_global_tokens
        super().__init__(**kwargs)
        _check_positive_int(self, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        _check_activation(self)
        _check_heads(self)
        for name in ("attention_dropout", "hidden_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{type(self).__name__}.{name} must be in [0, 1), got {value!r}.")
        _check_attn_implementation(self)
        _check_attention_type(self)


class MMTextConfig(_MMEncoderConfig):
    r"""Text tower: a bidirectional transformer over token ids, mean-pooled over non-padding tokens.

    Args:
        vocab_size (`int`): size of the tokenizer's vocabulary (`len(tokenizer)`).
        max_position_embeddings (`int`): the longest text (in tokens) the model accepts.
        pad_token_id, bos_token_id, eos_token_id (`int`): the tokenizer's special ids.
        Other arguments: see `_MMEncoderConfig` (hidden_size, layers, heads, ...).

    Example:
    ```python
    >>> from configuration_mm import MMTextConfig
    >>> MMTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ```
    """

    model_type = "mm_text_model"
    base_config_key = "text_config"

    def __init__(
        self,
        vocab_size=8192,
        max_position_embeddings=64,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        super().__init__(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        _check_positive_int(self, "vocab_size", "max_position_embeddings")


class MMVisionConfig(_MMEncoderConfig):
    r"""Vision tower: a ViT over non-overlapping `patch_size` patches of an `image_size` RGB image.

    Example:
    ```python
    >>> from configuration_mm import MMVisionConfig
    >>> MMVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
    ...                num_hidden_layers=2, num_attention_heads=4)
    ```
    """

    model_type = "mm_vision_model"
    base_config_key = "vision_config"

    def __init__(self, image_size=224, patch_size=16, num_channels=3, **kwargs):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        super().__init__(**kwargs)
        _check_positive_int(self, "image_size", "patch_size", "num_channels")
        if image_size % patch_size != 0:
            raise ValueError(
                f"MMVisionConfig.image_size ({image_size}) must be a multiple of patch_size ({patch_size})."
            )

    @property
    def num_patches(self):
        return (self.image_size // self.patch_size) ** 2


class MMAudioConfig(_MMEncoderConfig):
    r"""Audio tower: log-mel frames -> two strided 1-D convolutions (Whisper's stem, 2x downsampling in time)
    -> a transformer, mean-pooled over the valid frames.

    Args:
        num_mel_bins (`int`): mel channels of the input features (must match `MMFeatureExtractor.feature_size`).
        max_source_positions (`int`): the most frames after the stem, i.e. `max_frames // 2`.

    Example:
    ```python
    >>> from configuration_mm import MMAudioConfig
    >>> MMAudioConfig(num_mel_bins=32, max_source_positions=64, hidden_size=32, intermediate_size=64,
    ...               num_hidden_layers=2, num_attention_heads=4)
    ```
    """

    model_type = "mm_audio_model"
    base_config_key = "audio_config"

    def __init__(self, num_mel_bins=80, max_source_positions=500, **kwargs):
        self.num_mel_bins = num_mel_bins
        self.max_source_positions = max_source_positions
        super().__init__(**kwargs)
        _check_positive_int(self, "num_mel_bins", "max_source_positions")


class MMDecoderConfig(MMTextConfig):
    r"""Caption decoder: a causal transformer over token ids, with rotary positions, that cross-attends to the image
    and/or audio tower states (see `MMForConditionalGeneration`).

    It reads and writes the text tower's tokenizer, so inside `MMConfig` its `vocab_size` and special token ids are
    `text_config`'s, and its `max_position_embeddings` defaults to `text_config`'s.

    Args:
        max_position_embeddings (`int`): the longest text (prompt + caption, in tokens) the decoder is trained on;
            `generate` stops there unless asked for more (rotary positions have no hard limit).
        rope_theta (`float`): base period of the rotary position embedding (RoFormer; Su et al., 2021).
        Other arguments: see `MMTextConfig`.

    Example:
    ```python
    >>> from configuration_mm import MMDecoderConfig
    >>> MMDecoderConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ```
    """

    model_type = "mm_decoder"
    base_config_key = "decoder_config"

    def __init__(self, rope_theta=10000.0, **kwargs):
        self.rope_theta = rope_theta
        super().__init__(**kwargs)
        _check_positive(self, "rope_theta")
        if (self.hidden_size // self.num_attention_heads) % 2 != 0:
            raise ValueError(
                f"MMDecoderConfig: rotary positions need an even head size, got hidden_size ({self.hidden_size}) / "
                f"num_attention_heads ({self.num_attention_heads}) = {self.hidden_size // self.num_attention_heads}."
            )
        if self.attention_type != "full" or self.num_global_tokens:
            raise ValueError(
                f"MMDecoderConfig.attention_type must be 'full' (with num_global_tokens=0), got "
                f"{self.attention_type!r}: the long-input variants are for the encoder towers (text_config, "
                "vision_config, audio_config); the caption decoder is causal and cross-attends."
            )


class MMSpeechConfig(_MMEncoderConfig):
    r"""Text-to-speech head of `MMForTextToSpeech`: a non-autoregressive mel decoder (FastSpeech style) and the
    log-mel spectrogram it writes, turned into a waveform by Griffin-Lim.

    Args:
        num_hidden_layers (`int`): layers of the phoneme-side encoder and, again, of the frame-side decoder.
        sampling_rate (`int`): the waveform's rate, in Hz.
        n_fft, hop_length (`int`): STFT size and hop (samples) of the spectrogram and of Griffin-Lim.
        num_mel_bins (`int`): mel channels of the spectrogram (Slaney mel scale, magnitude, natural log).
        max_frames (`int`): the longest spectrogram, in frames, the decoder has positions for.
        griffin_lim_iterations (`int`): phase-reconstruction iterations when a waveform is made.
        Other arguments: see `_MMEncoderConfig` (hidden_size, heads, ...).

    Example:
    ```python
    >>> from configuration_mm import MMSpeechConfig
    >>> MMSpeechConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4).hop_length
    256
    ```
    """

    model_type = "mm_speech"
    base_config_key = "speech_config"

    def __init__(
        self,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=3,
        num_attention_heads=4,
        sampling_rate=16000,
        n_fft=1024,
        hop_length=256,
        num_mel_bins=80,
        max_frames=512,
        griffin_lim_iterations=32,
        **kwargs,
    ):
        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.num_mel_bins = num_mel_bins
        self.max_frames = max_frames
        self.griffin_lim_iterations = griffin_lim_iterations
        super().__init__(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            **kwargs,
        )
        _check_positive(
            self, "sampling_rate", "n_fft", "hop_length", "num_mel_bins", "max_frames", "griffin_lim_iterations"
        )
        if hop_length > n_fft:
            raise ValueError(f"MMSpeechConfig.hop_length ({hop_length}) must be <= n_fft ({n_fft}).")


class MMFusionConfig(_MMEncoderConfig):
    r"""The fusion layers and task heads of `MMForClassification`, on top of the towers.

    Args:
        fusion_type (`str`): how the modalities are combined (see docs/design.md, "Fusion"):
            - `"late"`: each modality's pooled embedding, averaged with learned per-modality weights;
            - `"gated"`: each modality's pooled embedding, weighted by a gate computed from that embedding;
            - `"concat"`: the towers' token sequences, each with a modality-type embedding, concatenated and
              passed through `num_hidden_layers` transformer layers (early fusion);
            - `"cross"`: each modality's tokens cross-attend to the other modalities' tokens in every layer.
        num_hidden_layers (`int`): fusion layers (`"concat"`, `"cross"`); `"late"` and `"gated"` have none.
        modality_dropout (`float`): in training, the probability that each present modality of an item is hidden
            from the fusion (at least one always stays), so a model trained on all modalities decides from fewer.
        classifier_dropout (`float`): dropout on the fused representation before the task heads.
        Other arguments: see `_MMEncoderConfig` (hidden_size, heads, ...), for the fusion layers.

    Example:
    ```python
    >>> from configuration_mm import MMFusionConfig
    >>> MMFusionConfig(fusion_type="cross", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                num_attention_heads=4).fusion_type
    'cross'
    ```
    """

    model_type = "mm_fusion"
    base_config_key = "fusion_encoder_config"

    def __init__(
        self,
        fusion_type="concat",
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=4,
        modality_dropout=0.0,
        classifier_dropout=0.0,
        **kwargs,
    ):
        self.fusion_type = fusion_type
        self.modality_dropout = modality_dropout
        self.classifier_dropout = classifier_dropout
        super().__init__(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            **kwargs,
        )
        if fusion_type not in FUSION_TYPES:
            raise ValueError(f"MMFusionConfig.fusion_type must be one of {list(FUSION_TYPES)}, got {fusion_type!r}.")
        for name in ("modality_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"MMFusionConfig.{name} must be in [0, 1), got {value!r}.")


# What the decoder always takes from the text tower: they share one tokenizer.
_TOKENIZER_FIELDS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")


class MMConfig(PreTrainedConfig):
    r"""The mm model: text, vision and audio towers projected into one embedding space (CLIP/ImageBind style).

    Args:
        text_config, vision_config, audio_config (`dict` or the tower's config): the towers.
        projection_dim (`int`): size of the joint embedding space.
        loss_type (`str`): `"clip"` (softmax InfoNCE with a learnable temperature) or `"siglip"`
            (pairwise sigmoid with a learnable temperature and bias).
        logit_scale_init_value (`float`): initial log of the temperature's inverse (CLIP: ln(1/0.07)).
        logit_bias_init_value (`float`): initial bias of the sigmoid loss (SigLIP: -10).
        speech_config (`dict` or `MMSpeechConfig`): the text-to-speech head of `MMForTextToSpeech`.
        decoder_config (`dict` or `MMDecoderConfig`): the caption decoder of `MMForConditionalGeneration`. Its
            `vocab_size` and special token ids are always `text_config`'s (one tokenizer serves both), and its
            `max_position_embeddings` defaults to `text_config`'s.
        caption_loss_weight, contrastive_loss_weight: weights of the captioning and contrastive losses when the
            generation head trains on both (CoCa style); see `MMForConditionalGeneration`.
        tie_word_embeddings (`bool`): share the decoder's input embeddings with its output layer.
        contrastive_pair_weights (`dict[str, float]`, optional): relative weights of the modality pairs in the
            contrastive loss, keyed `"image_text"`, `"audio_text"`, `"audio_image"` (a missing pair weighs 1);
            None averages the pairs equally. The meta-controller sets it with `pair_weights=True`.
        hard_negative_beta (`float`): 0 for the plain contrastive loss; > 0 weights each in-batch negative by its
            hardness, `softmax(beta * logit)` over the row's negatives (hardness-weighted InfoNCE, Robinson et al.
            2021); positives (shared group ids, identical captions) are never weighted.
        fusion_encoder_config (`dict` or `MMFusionConfig`): the fusion layers of `MMForClassification` (fusion type,
            depth, modality dropout); its `hidden_size` defaults to `projection_dim`. (Not `fusion_config`: from 5.24
            transformers reads that name for its own kernel fusion.)
        problem_type, num_labels, id2label, label2id: transformers' own fields, for one task. With `tasks`, they
            mirror the `default_task` (what the stock classification pipelines answer with).
        tasks (`dict`, *optional*): several tasks on one fused representation, `{name: {"problem_type": ...,
            "labels": [...]} }` (classification) or `{name: {"problem_type": "regression", "num_labels": 1}}`.
        default_task (`str`, *optional*): the task whose logits `MMForClassification` returns as `logits`
            (default: the first of `tasks` as given; they are kept in name order).
        task_loss_weighting (`str`): with several tasks, `"uncertainty"` (learned, Kendall et al. 2018) or `"sum"`.
        task_loss_weights (`dict[str, float]`, optional): a weight on each task's loss term (a missing task weighs 1),
            under either weighting. The meta-controller sets it with `task_weights=True`.
        focal_loss_gamma (`float`): 0 for cross-entropy; > 0 for the focal loss (Lin et al. 2017) of
            single- and multi-label classification, which down-weights the examples already classified well.

    Example:
    ```python
    >>> from configuration_mm import MMConfig
    >>> config = MMConfig.from_preset("tiny")
    >>> config.vision_config.image_size
    32
    ```
    """

    model_type = "mm"
    sub_configs = {
        "text_config": MMTextConfig,
        "vision_config": MMVisionConfig,
        "audio_config": MMAudioConfig,
        "decoder_config": MMDecoderConfig,
        "speech_config": MMSpeechConfig,
        "fusion_encoder_config": MMFusionConfig,
    }

    def __init__(
        self,
        text_config=None,
        vision_config=None,
        audio_config=None,
        projection_dim=512,
        loss_type="clip",
        logit_scale_init_value=2.6592,
        logit_bias_init_value=-10.0,
        caption_loss_weight=1.0,
        contrastive_loss_weight=0.0,
        decoder_config=None,
        tie_word_embeddings=True,
        speech_config=None,
        contrastive_pair_weights=None,
        hard_negative_beta=0.0,
        fusion_encoder_config=None,
        tasks=None,
        default_task=None,
        task_loss_weighting="uncertainty",
        focal_loss_gamma=0.0,
        task_loss_weights=None,
        **kwargs,
    ):
        self.text_config = _as_config(MMTextConfig, text_config)
        self.vision_config = _as_config(MMVisionConfig, vision_config)
        self.audio_config = _as_config(MMAudioConfig, audio_config)
        if decoder_config is None or isinstance(decoder_config, dict):
            text_length = getattr(self.text_config, "max_position_embeddings", None)
            defaults = {"max_position_embeddings": text_length} if text_length else {}
            decoder_config = {**defaults, **(decoder_config or {})}
        self.decoder_config = _as_config(MMDecoderConfig, decoder_config)
        self.speech_config = _as_config(MMSpeechConfig, speech_config)
        # One tokenizer serves the text tower and the decoder: the decoder's vocabulary and special tokens are the
        # text tower's, also when that tower is swapped for another architecture (MMModel.from_encoders).
        for name in _TOKENIZER_FIELDS:
            if getattr(self.text_config, name, None) is not None:
                setattr(self.decoder_config, name, getattr(self.text_config, name))
        if fusion_encoder_config is None or isinstance(fusion_encoder_config, dict):
            # A bad projection_dim is reported below, under its own name.
            width = {"hidden_size": projection_dim} if isinstance(projection_dim, int) and projection_dim > 0 else {}
            fusion_encoder_config = {**width, **(fusion_encoder_config or {})}
        self.fusion_encoder_config = _as_config(MMFusionConfig, fusion_encoder_config)
        self.tasks = _normalized_tasks(tasks)
        self.default_task = default_task if default_task is not None else next(iter(tasks or {}), None)
        self.task_loss_weighting = task_loss_weighting
        self.task_loss_weights = task_loss_weights
        self.focal_loss_gamma = focal_loss_gamma
        self.tie_word_embeddings = tie_word_embeddings
        self.projection_dim = projection_dim
        self.loss_type = loss_type
        self.logit_scale_init_value = logit_scale_init_value
        self.logit_bias_init_value = logit_bias_init_value
        self.caption_loss_weight = caption_loss_weight
        self.contrastive_loss_weight = contrastive_loss_weight
        self.contrastive_pair_weights = contrastive_pair_weights
        self.hard_negative_beta = hard_negative_beta
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        kwargs.setdefault("custom_pipelines", dict(CUSTOM_PIPELINES))
        super().__init__(**kwargs)
        _check_positive_int(self, "projection_dim")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"MMConfig.loss_type must be one of {list(LOSS_TYPES)}, got {loss_type!r}.")
        for name in ("caption_loss_weight", "contrastive_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"MMConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
        if contrastive_pair_weights is not None and (
            not set(contrastive_pair_weights) <= {"image_text", "audio_text", "audio_image"}
            or not all(w >= 0 for w in contrastive_pair_weights.values())
        ):
            raise ValueError(
                f"MMConfig.contrastive_pair_weights takes non-negative weights keyed 'image_text', 'audio_text', "
                f"'audio_image'; got {contrastive_pair_weights!r}."
            )
        beta = hard_negative_beta
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or beta < 0:
            raise ValueError(f"MMConfig.hard_negative_beta must be a number >= 0 (0: off), got {beta!r}.")
        _check_attn_implementation(self)
        self._check_tasks()

    def _check_tasks(self):
        if self.task_loss_weighting not in TASK_LOSS_WEIGHTINGS:
            raise ValueError(
                f"MMConfig.task_loss_weighting must be one of {list(TASK_LOSS_WEIGHTINGS)}, "
                f"got {self.task_loss_weighting!r}."
            )
        gamma = self.focal_loss_gamma
        if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or gamma < 0:
            raise ValueError(f"MMConfig.focal_loss_gamma must be a number >= 0 (0: cross-entropy), got {gamma!r}.")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"MMConfig.problem_type must be one of {list(PROBLEM_TYPES)}, got {self.problem_type!r}.")
        weights = self.task_loss_weights
        if weights is not None and (
            not isinstance(weights, dict)
            or not set(weights) <= set(self.tasks or {})
            or not all(isinstance(w, (int, float)) and w >= 0 for w in weights.values())
        ):
            raise ValueError(
                f"MMConfig.task_loss_weights takes non-negative weights keyed by the tasks {list(self.tasks or {})}; "
                f"got {weights!r}."
            )
        if not self.tasks:
            if self.default_task is not None:
                raise ValueError(
                    f"MMConfig.default_task is {self.default_task!r} but there are no `tasks`; name the tasks, "
                    "or drop default_task for one task set by problem_type/num_labels."
                )
            return
        if self.default_task not in self.tasks:
            raise ValueError(f"MMConfig.default_task must be one of the tasks {list(self.tasks)}, got {self.default_task!r}.")
        # transformers' own fields mirror the default task: the stock pipelines read them.
        default = self.tasks[self.default_task]
        self.problem_type = default["problem_type"]
        labels = default["labels"] or [f"LABEL_{i}" for i in range(default["num_labels"])]
        self.id2label = dict(enumerate(labels))
        self.label2id = {label: i for i, label in self.id2label.items()}

    def task_specs(self):
        """Every task head, `{name: {"problem_type", "num_labels", "labels"}}`; one task (named by `default_task`, else
        `"default"`) from `problem_type`/`num_labels`/`id2label` when `tasks` is not set. `problem_type` may then be
        None: the loss infers it from the labels, as transformers' classification heads do."""
        if self.tasks:
            return self.tasks
        labels = [self.id2label[i] for i in range(self.num_labels)]
        return {"default": {"problem_type": self.problem_type, "num_labels": self.num_labels, "labels": labels}}

    def get_text_config(self, decoder=None, encoder=None):
        """`encoder=True`: the text tower. Otherwise the caption decoder, which is what `generate` sizes its cache
        and reads its special tokens from (the base class would pick `text_config`, the bidirectional text tower)."""
        if encoder and not decoder:
            return self.text_config
        return self.decoder_config

    @classmethod
    def from_preset(cls, name, **overrides):
        """Builds a named size: `"tiny"` (tests), `"small"` (the CPU default job), `"base"` (~150M parameters).

        `overrides` set fields; a dict for a tower updates that tower's preset, e.g.
        `MMConfig.from_preset("small", loss_type="siglip", text_config={"vocab_size": 4096})`.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown mm preset {name!r}; choose one of {sorted(PRESETS)}.")
        kwargs = {key: dict(value) if isinstance(value, dict) else value for key, value in PRESETS[name].items()}
        for key, value in overrides.items():
            kwargs[key] = {**kwargs.get(key, {}), **value} if isinstance(value, dict) and key in cls.sub_configs else value
        return cls(**kwargs)


def _as_config(config_class, value):
    """A tower's config from a dict or a config. A tower of another architecture (e.g. a pretrained BERT or ViT,
    the way VisionTextDualEncoder composes towers) keeps its own config class, rebuilt from its `model_type`."""
    if value is None:
        return config_class()
    if isinstance(value, PreTrainedConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(
            f"Expected a dict or a config for {config_class.base_config_key}, got {type(value).__name__}."
        )
    model_type = value.get("model_type", config_class.model_type)
    if model_type == config_class.model_type:
        return config_class(**value)
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{k: v for k, v in value.items() if k != "model_type"})


def _normalized_tasks(tasks):
    """`tasks` as `{name: {"problem_type", "num_labels", "labels"}}` (labels None for regression), checked."""
    if tasks is None:
        return None
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"MMConfig.tasks must be a non-empty dict {{name: {{'problem_type': ...}}}}, got {tasks!r}.")
    normalized = {}
    # In name order: config.json sorts its keys, and the heads (and task weights) must come back in the same order.
    for name, spec in sorted(tasks.items()):
        problem_type = spec.get("problem_type") if isinstance(spec, dict) else None
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"MMConfig.tasks[{name!r}]['problem_type'] must be one of {list(PROBLEM_TYPES)}, got {problem_type!r}."
            )
        labels = spec.get("labels")
        num_labels = spec.get("num_labels", len(labels) if labels else 1 if problem_type == "regression" else None)
        if labels is not None and len(labels) != num_labels:
            raise ValueError(f"MMConfig.tasks[{name!r}]: num_labels is {num_labels} but there are {len(labels)} labels.")
        if not isinstance(num_labels, int) or num_labels < 1 or (problem_type == "single_label_classification" and num_labels < 2):
            raise ValueError(
                f"MMConfig.tasks[{name!r}] needs `labels` (classification: at least 2 for single-label) or a positive "
                f"`num_labels`, got num_labels={num_labels!r}."
            )
        normalized[str(name)] = {
            "problem_type": problem_type,
            "num_labels": num_labels,
            "labels": [str(label) for label in labels] if labels is not None else None,
        }
    return normalized


# Every Auto class the checkpoint serves; the files named here are saved flat next to the weights.
AUTO_MAP = {
    "AutoConfig": "configuration_mm.MMConfig",
    "AutoModel": "modeling_mm.MMModel",
    "AutoModelForZeroShotImageClassification": "modeling_mm.MMModel",
    "AutoModelForImageTextToText": "modeling_mm_generation.MMForConditionalGeneration",
    "AutoModelForVision2Seq": "modeling_mm_generation.MMForConditionalGeneration",
    "AutoModelForSpeechSeq2Seq": "modeling_mm_generation.MMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_mm_generation.MMForConditionalGeneration",
    "AutoModelForTextToWaveform": "modeling_mm_speech.MMForTextToSpeech",
    "AutoModelForSequenceClassification": "modeling_mm_fusion.MMForClassification",
    "AutoModelForImageClassification": "modeling_mm_fusion.MMForClassification",
    "AutoModelForAudioClassification": "modeling_mm_fusion.MMForClassification",
}
# `pipeline()` reads this entry before its own task table, which is what makes "image-to-text" work on
# every transformers 5.x (the task was removed in 5.0-5.18 and rerouted to image-text-to-text later).
CUSTOM_PIPELINES = {
    "image-to-text": {
        "impl": "pipeline_mm.MMImageToTextPipeline",
        "pt": ["AutoModelForImageTextToText"],
        "type": "multimodal",
    },
    # The stock ASR pipeline treats a model whose class it does not list as CTC; this one generates.
    "automatic-speech-recognition": {
        "impl": "pipeline_mm.MMSpeechRecognitionPipeline",
        "pt": ["AutoModelForSpeechSeq2Seq"],
        "type": "audio",
    },
    # Any mix of text, image and audio in one call: clf({"image": ..., "text": ..., "audio": ...}).
    "multimodal-classification": {
        "impl": "pipeline_mm_classification.MMClassificationPipeline",
        "pt": ["AutoModelForSequenceClassification"],
        "type": "multimodal",
    },
    # transformers' text-to-audio pipeline attaches a vocoder only to its own spectrogram models; mm's head returns the
    # waveform itself. Both names of the task, since a custom entry is looked up before aliases are resolved.
    **{
        task: {"impl": "pipeline_mm_text_to_speech.MMTextToSpeechPipeline", "pt": ["AutoModelForTextToWaveform"],
               "type": "text"}
        for task in ("text-to-speech", "text-to-audio")
    },
}
# REMOTE_CODE_CLOSURE: transformers copies a remote-code class's file and the files it relatively imports (found by a
# regex, so also inside `if TYPE_CHECKING:`) into its module cache, and `save_remote_code` re-saves from there. The
# never-executed imports at the top of this file put every file that AUTO_MAP and CUSTOM_PIPELINES name into that
# closure, so re-saving any loaded mm model (even a plain MMModel) keeps the generation head and the pipelines.

_TINY_ENCODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
PRESETS = {
    # Tests: hidden 32, 2 layers, 4 heads, 32 px images, 0.5 s of 16 kHz audio (50 mel frames -> 25 positions).
    "tiny": dict(
        text_config=dict(vocab_size=512, max_position_embeddings=32, **_TINY_ENCODER),
        vision_config=dict(image_size=32, patch_size=8, **_TINY_ENCODER),
        audio_config=dict(num_mel_bins=32, max_source_positions=64, **_TINY_ENCODER),
        decoder_config=dict(_TINY_ENCODER),
        fusion_encoder_config=dict(_TINY_ENCODER),
        projection_dim=32,
    ),
    # The CPU default job: trains in minutes on 2 cores.
    "small": dict(
        text_config=dict(
            vocab_size=2048, max_position_embeddings=48, hidden_size=128, intermediate_size=512,
            num_hidden_layers=3, num_attention_heads=4,
        ),
        vision_config=dict(
            image_size=64, patch_size=8, hidden_size=128, intermediate_size=512, num_hidden_layers=3,
            num_attention_heads=4,
        ),
        audio_config=dict(
            num_mel_bins=64, max_source_positions=200, hidden_size=128, intermediate_size=512,
            num_hidden_layers=3, num_attention_heads=4,
        ),
        decoder_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4),
        fusion_encoder_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4),
        projection_dim=128,
    ),
    # ~160M parameters: ViT-B/16 at 224 px (86M), a 12-layer 512-wide text tower (54M with its 32k vocabulary),
    # a 12-layer 384-wide audio tower (21M). The caption decoder of MMForConditionalGeneration adds ~41M (6 layers,
    # 512 wide, its 32k embedding tied to its output layer).
    "base": dict(
        text_config=dict(
            vocab_size=32000, max_position_embeddings=77, hidden_size=512, intermediate_size=2048,
            num_hidden_layers=12, num_attention_heads=8,
        ),
        vision_config=dict(
            image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12,
        ),
        audio_config=dict(
            num_mel_bins=80, max_source_positions=500, hidden_size=384, intermediate_size=1536,
            num_hidden_layers=12, num_attention_heads=6,
        ),
        decoder_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8),
        fusion_encoder_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8),
        projection_dim=512,
    ),
}

# "small" with an audio tower for long clips: 30 s of positions (3,000 mel frames) and local attention, each position
# seeing 128 others (1.28 s) each way. benchmarks/bench_long_audio.py measures what each attention type costs.
PRESETS["small-long-audio"] = dict(
    PRESETS["small"],
    audio_config=dict(PRESETS["small"]["audio_config"], max_source_positions=1500, attention_type="local"),
)

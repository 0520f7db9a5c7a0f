"""The text-to-speech pipeline of `MMForTextToSpeech` checkpoints.

This file is Hub remote code: a saved mm model's `config.json` names it under `custom_pipelines` for "text-to-speech"
(and "text-to-audio"), so `pipeline("text-to-speech", model=folder, trust_remote_code=True)` runs mm's head, which
returns the waveform itself (Griffin-Lim), instead of the stock pipeline, which would look for a vocoder to download.
It imports only `transformers`, `torch`, `numpy` and the standard library.
"""

from transformers import Pipeline


class MMTextToSpeechPipeline(Pipeline):
    """Speaks text.

    Example:
    ```python
    >>> from transformers import pipeline
    >>> speaker = pipeline("text-to-speech", model="path/to/mm-tts", trust_remote_code=True)  # doctest: +SKIP
    >>> out = speaker("a red circle on the left")  # doctest: +SKIP
    >>> out["audio"].shape, out["sampling_rate"]  # doctest: +SKIP
    ((24064,), 16000)
    ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, griffin_lim_iterations=None):
        forward_params = {}
        if griffin_lim_iterations is not None:
            if not isinstance(griffin_lim_iterations, int) or griffin_lim_iterations < 1:
                raise ValueError(f"griffin_lim_iterations must be a positive integer, got {griffin_lim_iterations!r}.")
            forward_params["griffin_lim_iterations"] = griffin_lim_iterations
        return {}, forward_params, {}

    def __call__(self, text, **kwargs):
        """Speaks `text` (a string, or a list of strings: then one result per text).

        Args:
            griffin_lim_iterations (`int`, *optional*): phase-reconstruction iterations (default: the model's).

        Returns:
            `{"audio": np.ndarray (samples,) float32, "sampling_rate": int}` per text.
        """
        return super().__call__(text, **kwargs)

    def preprocess(self, text):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"The text to speak must be a non-empty string, got {text!r}.")
        inputs = self.tokenizer(text, return_tensors="pt")
        limit = self.model.config.text_config.max_position_embeddings
        if inputs["input_ids"].shape[1] > limit:
            raise ValueError(
                f"The text is {inputs['input_ids'].shape[1]} tokens long but the model reads at most {limit}; "
                "split it into shorter sentences."
            )
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}

    def _forward(self, model_inputs, griffin_lim_iterations=None):
        output = self.model.generate_speech(**model_inputs, griffin_lim_iterations=griffin_lim_iterations)
        return {"waveform": output.waveform[:, : int(output.waveform_lengths[0])]}

    def postprocess(self, model_outputs):
        return {
            "audio": model_outputs["waveform"][0].float().cpu().numpy(),
            "sampling_rate": self.model.config.speech_config.sampling_rate,
        }

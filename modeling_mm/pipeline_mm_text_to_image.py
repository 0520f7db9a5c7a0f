"""Text-to-image with diffusers, conditioned on mm's text tower: `MMTextToImagePipeline`.

A pixel-space `UNet2DConditionModel` predicts the noise of an image, cross-attending to the token hidden states of an
mm text tower (`MMTextModel`, usually frozen); a diffusers scheduler (DDPM to train and sample; any other can sample) runs
the chain. Classifier-free guidance (Ho & Salimans, 2022) uses the empty prompt as the unconditional input, which is
what training drops captions to (`build_text_to_image_unet`, `diffusion_loss`).

The pipeline saves with diffusers' conventions: one folder per component and a `model_index.json`. Because neither the
pipeline nor the text tower is part of diffusers or transformers, `save_pretrained` also makes the folder load where mm
is not installed: this file is copied to the folder's root and named in `_class_name` (diffusers' custom pipeline
convention), and the text tower's folder carries mm's remote-code files and is named by its module file in
`model_index.json` (diffusers' custom component convention), so

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)("a red circle", generator=...)

works with only diffusers, transformers and torch installed. This file therefore imports nothing from mm. See
docs/design.md ("Text to image") for the choices.
"""

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor


class MMTextToImagePipeline(DiffusionPipeline):
    """Generates images from text with a text-conditioned UNet and mm's text tower.

    Components: `unet` (`UNet2DConditionModel`, `cross_attention_dim` = the text tower's hidden size), `scheduler`
    (any diffusers scheduler), `text_encoder` (an mm `MMTextModel`, or any encoder returning `last_hidden_state`) and
    `tokenizer` (the text tower's).

    Example:
    ```python
    >>> from diffusers import DiffusionPipeline
    >>> pipe = DiffusionPipeline.from_pretrained("path/to/folder", trust_remote_code=True)  # doctest: +SKIP
    >>> image = pipe("a red circle", num_inference_steps=50, guidance_scale=3.0,
    ...              generator=torch.Generator().manual_seed(0)).images[0]  # doctest: +SKIP
    ```
    """

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, scheduler, text_encoder, tokenizer):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    @property
    def max_prompt_tokens(self):
        """The longest prompt, in tokens, the text tower has positions for."""
        return self.text_encoder.config.max_position_embeddings

    @torch.no_grad()
    def encode_prompt(self, prompts, device=None, truncation=False):
        """Token hidden states and attention mask of `prompts` (a list of strings; "" is the unconditional input).

        Returns `(hidden_states (B, L, D), attention_mask (B, L))`. A prompt longer than the text tower's positions is
        an error rather than silently cut (the image would not show what was asked for), unless `truncation` (training
        captions).
        """
        cut = {"truncation": True, "max_length": self.max_prompt_tokens} if truncation else {}
        tokens = self.tokenizer(prompts, padding=True, return_tensors="pt", **cut)
        length = tokens["input_ids"].shape[1]
        if length > self.max_prompt_tokens:
            raise ValueError(
                f"The prompt is {length} tokens long but the text encoder has {self.max_prompt_tokens} positions; "
                "shorten it."
            )
        device = device or self.text_encoder.device
        input_ids, attention_mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        hidden_states = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden_states.to(self.unet.dtype), attention_mask

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        num_inference_steps=50,
        guidance_scale=3.0,
        num_images_per_prompt=1,
        generator=None,
        output_type="pil",
        return_dict=True,
    ):
        """Generates `num_images_per_prompt` images for `prompt` (a string or a list of strings).

        Args:
            num_inference_steps (`int`): denoising steps of the scheduler (at least 1).
            guidance_scale (`float`): classifier-free guidance, >= 0. 1 samples from the conditional model alone, 0 from
                the unconditional one, larger values follow the prompt more closely.
            generator (`torch.Generator`, *optional*): for reproducible images.
            output_type (`str`): `"pil"` (a list of PIL images), `"np"` ((B, H, W, 3) floats in [0, 1]) or `"pt"`
                ((B, 3, H, W) floats in [0, 1]).

        Returns:
            `ImagePipelineOutput` with `images`, or a tuple `(images,)` when `return_dict=False`.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self._check_inputs(prompts, num_inference_steps, guidance_scale, num_images_per_prompt, output_type)
        device = self._execution_device
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        hidden_states, mask = self.encode_prompt(prompts, device)
        guided = guidance_scale != 1.0
        if guided:  # one batch: unconditional rows first, padded to the prompts' length
            empty, empty_mask = self.encode_prompt([""] * len(prompts), device)
            pad = hidden_states.shape[1] - empty.shape[1]
            hidden_states = torch.cat([F.pad(empty, (0, 0, 0, pad)), hidden_states])
            mask = torch.cat([F.pad(empty_mask, (0, pad)), mask])

        size = self.unet.config.sample_size
        shape = (len(prompts), self.unet.config.in_channels, size, size)
        images = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        images = images * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(torch.cat([images] * 2) if guided else images, t)
            noise = self.unet(model_input, t, encoder_hidden_states=hidden_states, encoder_attention_mask=mask).sample
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            images = self.scheduler.step(noise, t, images, generator=generator).prev_sample

        images = (images / 2 + 0.5).clamp(0, 1)  # the UNet works on [-1, 1] pixels
        if output_type == "pt":
            output = images
        else:
            output = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                output = self.numpy_to_pil(output)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=output) if return_dict else (output,)

    def _check_inputs(self, prompts, num_inference_steps, guidance_scale, num_images_per_prompt, output_type):
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError(
                f"Every prompt must be a non-empty string, got {prompts!r}. For unconditional images pass any prompt "
                "with guidance_scale=0."
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        if not guidance_scale >= 0:
            raise ValueError(
                f"guidance_scale must be >= 0 (1: no guidance, 0: unconditional), got {guidance_scale!r}."
            )
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}.")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")

    def save_pretrained(self, save_directory, **kwargs):
        """diffusers' `save_pretrained` (a folder per component, safetensors, `model_index.json`), plus what makes the
        folder load without mm: this file at the root, named in `_class_name`, and the text tower's module file named
        in `model_index.json` (the text tower's own `save_pretrained` writes mm's remote-code files next to it)."""
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        here = Path(__file__)
        shutil.copyfile(here, folder / here.name)
        index_path = folder / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [here.stem, type(self).__name__]
        encoder_file = type(self.text_encoder).__module__.rsplit(".", 1)[-1]
        if (folder / "text_encoder" / f"{encoder_file}.py").is_file():
            index["text_encoder"] = [encoder_file, type(self.text_encoder).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_text_to_image_unet(text_hidden_size, image_size=32, channels=(32, 64, 64), attention_heads=2):
    """A small pixel-space `UNet2DConditionModel` for `image_size` RGB images, cross-attending to text states of
    `text_hidden_size`: a plain residual level at full resolution, cross-attention at the lower ones, with
    `attention_heads` heads (2 heads of 32 at 64 channels: a training step of batch 64 costs 4.0 CPU-s at one thread
    against 5.9 with 8 heads of 8, which torch's CPU attention kernel handles poorly; same parameter count).

    >>> build_text_to_image_unet(32).config.cross_attention_dim
    32
    """
    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        layers_per_block=1,
        cross_attention_dim=text_hidden_size,
        attention_head_dim=attention_heads,  # diffusers reads it as the number of heads (its documented naming issue)
        norm_num_groups=min(8, channels[0]),
    )


def diffusion_loss(pipe, pixel_values, prompts, drop_prompt_probability=0.1, generator=None):
    """The denoising loss of one batch: MSE between the noise added at a random timestep and the UNet's prediction
    (DDPM, Ho et al. 2020), with each prompt replaced by "" with `drop_prompt_probability`, so the same UNet learns the
    unconditional model classifier-free guidance needs.

    `pixel_values` (B, 3, H, W) in [-1, 1]; the text tower gets no gradient (encoded under `no_grad`).
    """
    batch = pixel_values.shape[0]
    device = pixel_values.device
    drop = torch.rand(batch, generator=generator) < drop_prompt_probability
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
    hidden_states, mask = pipe.encode_prompt(prompts, device, truncation=True)
    noise = torch.randn(pixel_values.shape, generator=generator).to(device)
    steps = pipe.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (batch,), generator=generator).to(device)
    noisy = pipe.scheduler.add_noise(pixel_values, noise, timesteps)
    prediction = pipe.unet(noisy, timesteps, encoder_hidden_states=hidden_states, encoder_attention_mask=mask).sample
    return F.mse_loss(prediction.float(), noise.float())

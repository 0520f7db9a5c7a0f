"""The diffusers text-to-image pipeline on mm's text tower: training, saving with diffusers' conventions, loading
where mm is not installed, guidance and input checks, and examples/run_text_to_image.py end to end."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from testers import NUM_EVAL, NUM_TRAIN, run_clean, save_tiny_base, tensorboard_scalars, tiny_tokenizer

import run_text_to_image
from configuration_mm import MMConfig
from modeling_mm import MMTextModel
from modeling_mm.pipeline_mm_text_to_image import MMTextToImagePipeline, build_text_to_image_unet, diffusion_loss


def tiny_pipeline(seed=0):
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = MMTextModel(MMConfig.from_preset("tiny", text_config={"vocab_size": len(tokenizer)}).text_config)
    unet = build_text_to_image_unet(32, image_size=16, channels=(8, 16))
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    pipe = MMTextToImagePipeline(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 3, "guidance_scale": 3.0, "output_type": "np", **kwargs}
    return pipe(["a red circle", "a blue star"], generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_training_lowers_the_denoising_loss():
    pipe = tiny_pipeline()
    optimizer = torch.optim.AdamW(pipe.unet.parameters(), lr=3e-3)
    pixels = torch.rand(8, 3, 16, 16) * 2 - 1
    prompts = ["a red circle", "a blue star"] * 4
    losses = []
    for step in range(12):
        loss = diffusion_loss(pipe, pixels, prompts, generator=torch.Generator().manual_seed(step % 3))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert all(p.grad is None for p in pipe.text_encoder.parameters())  # the text tower is not trained


def test_saved_folder_follows_diffusers_conventions_and_loads_without_mm(tmp_path):
    pipe = tiny_pipeline()
    expected = generate(pipe)
    pipe.save_pretrained(tmp_path)

    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_mm_text_to_image", "MMTextToImagePipeline"]
    assert index["text_encoder"] == ["modeling_mm_text", "MMTextModel"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    weights = sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.suffix in (".bin", ".safetensors")
    )
    assert weights == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"]

    with pytest.raises(ValueError, match="trust_remote_code"):
        MMTextToImagePipeline.from_pretrained(tmp_path)
    loaded = MMTextToImagePipeline.from_pretrained(tmp_path, trust_remote_code=True)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(loaded), expected)

    code = f"""
import numpy as np, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
images = pipe(["a red circle", "a blue star"], num_inference_steps=3, guidance_scale=3.0, output_type="np",
              generator=torch.Generator().manual_seed(0)).images
np.save({str(tmp_path / "clean.npy")!r}, images)
pipe.save_pretrained({str(tmp_path / "resaved")!r})
print(type(pipe).__name__, type(pipe.text_encoder).__name__)
"""
    assert run_clean(code, tmp_path).split() == ["MMTextToImagePipeline", "MMTextModel"]
    np.testing.assert_allclose(np.load(tmp_path / "clean.npy"), expected, atol=1e-6)
    assert (tmp_path / "resaved" / "text_encoder" / "modeling_mm_text.py").is_file()


def test_seeded_generation_is_reproducible_and_guidance_changes_it():
    pipe = tiny_pipeline()
    first = generate(pipe, seed=1)
    assert first.shape == (2, 16, 16, 3) and 0 <= first.min() and first.max() <= 1
    np.testing.assert_array_equal(generate(pipe, seed=1), first)
    assert not np.array_equal(generate(pipe, seed=2), first)
    assert not np.array_equal(generate(pipe, seed=1, guidance_scale=1.0), first)
    assert len(pipe("a red circle", num_inference_steps=1, num_images_per_prompt=3).images) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "non-empty string"),
        ({"prompt": "a red circle " * 40}, "positions; shorten it"),
        ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer, got 0"),
        ({"guidance_scale": -1.0}, "guidance_scale must be >= 0"),
        ({"output_type": "latent"}, "output_type must be"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(kwargs, message):
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=message):
        pipe(**{"prompt": "a red circle", "num_inference_steps": 2, **kwargs})


def test_example_trains_measures_and_saves_a_pipeline(builtin_data, tmp_path, capsys):
    base = save_tiny_base(tmp_path / "base")
    output_dir = tmp_path / "out"
    metrics = run_text_to_image.main(
        ["--text_model_name_or_path", str(base), "--num_train_samples", str(NUM_TRAIN),
         "--num_eval_samples", str(NUM_EVAL), "--max_steps", "4", "--per_device_train_batch_size", "16",
         "--unet_channels", "8,16", "--num_inference_steps", "2", "--num_eval_prompts", "4",
         "--guidance_scales", "1,3", "--logging_steps", "2", "--report_to", "tensorboard",
         "--output_dir", str(output_dir)]
    )  # fmt: skip
    for row in ("real", "noise", "guidance 1", "guidance 3"):
        assert {f"{row} colour accuracy", f"{row} shape accuracy", f"{row} fid", f"{row} kid"} <= set(metrics)
    assert "colour acc" in capsys.readouterr().out
    scalars = tensorboard_scalars(output_dir / "runs")  # the training loss and rate, every --logging_steps steps
    assert [event.step for event in scalars["train/loss"]] == [2, 4]
    assert all(np.isfinite(event.value) and event.value > 0 for event in scalars["train/loss"])
    assert [event.step for event in scalars["train/learning_rate"]] == [2, 4]
    assert {"model_index.json", "samples.png", "all_results.json", "pipeline_mm_text_to_image.py"} <= {
        p.name for p in output_dir.iterdir()
    }
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        run_text_to_image.main(["--text_model_name_or_path", str(base), "--output_dir", str(output_dir)])

"""No example trains on, saves or publishes NaN/inf (training_mm.nonfinite_guard): a diverging run stops with the
step, the learning rate and what to do, and leaves no non-finite weights in a checkpoint, the output folder or the
(local) Hub."""

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from testers import TINY_RUN, save_tiny_base
from training_mm.output_folder import RunOutput, push_output_folder

import run_captioning
import run_clip
import run_lora

SCRIPTS = {"run_clip": run_clip, "run_captioning": run_captioning, "run_lora": run_lora}
SAVE_EVERY_STEP = ["--save_strategy", "steps", "--save_steps", "1"]
PUSH = ["--push_to_hub", "--hub_model_id", "mm-tester/diverged"]


def _nonfinite_files(folder):
    """The safetensors files under `folder` holding a NaN or inf."""
    files = folder.rglob("*.safetensors")
    return [path for path in files if not all(torch.isfinite(t).all() for t in load_file(path).values())]


def _starting_point(script, tmp_path):
    if script == "run_lora":
        return ["--model_name_or_path", str(save_tiny_base(tmp_path / "base"))]
    return ["--preset", "tiny"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_diverging_run_stops_with_its_step_and_learning_rate_and_publishes_nothing(
    script, builtin_data, tmp_path, hub_server
):
    """At learning rate 1e6 the loss turns NaN within three steps, which Trainer alone would train through (its
    logged loss skips NaN) and save, push and report on."""
    output_dir = tmp_path / "out"
    args = [*_starting_point(script, tmp_path), *TINY_RUN, *SAVE_EVERY_STEP, *PUSH, "--learning_rate", "1e6"]
    with pytest.raises(FloatingPointError) as raised:
        SCRIPTS[script].main([*args, "--output_dir", str(output_dir)])
    message = str(raised.value)
    assert message.startswith(("Training stopped at step ", "Not saving checkpoint-")), message
    assert "learning rate" in message and "lower --learning_rate" in message
    assert _nonfinite_files(output_dir) == []
    assert not (output_dir / "model.safetensors").exists() and not (output_dir / "README.md").exists()
    assert hub_server.repo_ids() == []


@pytest.mark.parametrize("save_strategy", ["steps", "no"])
def test_weights_overflowed_by_a_finite_step_are_never_saved(builtin_data, tmp_path, save_strategy):
    """A step with finite loss and gradients can still overflow the weights (here learning rate 1e39): neither the
    checkpoint after it nor, at the end of the run, the output folder is written."""
    output_dir = tmp_path / "out"
    args = [*TINY_RUN, "--max_steps", "2", "--save_strategy", save_strategy, "--save_steps", "1"]
    destination = "checkpoint-2 (after step 2, learning rate 1e+39)" if save_strategy == "steps" else str(output_dir)
    expected = rf"Not saving {re.escape(destination)}: \d+ tensors of the model hold NaN or inf"
    with pytest.raises(FloatingPointError, match=expected):
        run_clip.main(["--preset", "tiny", *args, "--learning_rate", "1e39", "--output_dir", str(output_dir)])
    assert _nonfinite_files(output_dir) == []
    assert not (output_dir / "model.safetensors").exists()


def test_a_folder_with_nonfinite_weights_is_never_pushed(tmp_path, hub_server):
    folder = tmp_path / "out"
    folder.mkdir()
    save_file({"ok": torch.ones(2), "bad": torch.tensor([1.0, float("nan")])}, folder / "model.safetensors")
    output = RunOutput(folder=folder, resume=None, repo_id="mm-tester/nan", push_to_hub=True)
    args = run_clip.parse_args(["--output_dir", str(folder)])[2]
    expected = r"Not pushing .*1 tensor in its weights hold NaN or inf \(model\.safetensors:bad\)"
    with pytest.raises(FloatingPointError, match=expected):
        push_output_folder(output, args)
    assert hub_server.repo_ids() == []

"""Weights are read from safetensors only (training_mm.safe_loading): every example refuses a checkpoint whose weights
are a pickle (`pytorch_model.bin`), with a command that converts it, and the command works."""

import re

import pytest
import torch
from safetensors.torch import load_file

from modeling_mm import MMModel
from testers import TINY_RUN, save_tiny_base
from training_mm.safe_loading import from_pretrained_safetensors

import run_captioning
import run_clip
import run_lora

SCRIPTS = {"run_clip": run_clip, "run_captioning": run_captioning, "run_lora": run_lora}


def _pickled_checkpoint(folder):
    """A tiny mm checkpoint whose weights are only a pytorch_model.bin (what torch.save writes); returns its tensors."""
    save_tiny_base(folder)
    weights = load_file(folder / "model.safetensors")
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return weights


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_example_refuses_pickled_weights_saying_how_to_convert(script, builtin_data, tmp_path):
    folder = tmp_path / "pickled"
    _pickled_checkpoint(folder)
    with pytest.raises(OSError, match=r"holds its weights only as pickle \(pytorch_model\.bin\).*weights_only=True"):
        SCRIPTS[script].main([*TINY_RUN, "--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_conversion_in_the_message_gives_safetensors_weights_that_load(tmp_path):
    folder = tmp_path / "pickled"
    weights = _pickled_checkpoint(folder)
    with pytest.raises(OSError) as raised:
        from_pretrained_safetensors(MMModel, folder)
    command = re.search(r'python -c "(.*)"', str(raised.value))[1]
    exec(command, {})  # what `python -c` would run, without starting another interpreter

    model = from_pretrained_safetensors(MMModel, folder)
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in weights.items())

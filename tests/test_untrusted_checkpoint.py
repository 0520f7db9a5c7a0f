"""The example scripts load an mm checkpoint with this package's own classes: a checkpoint's remote code (its .py
files, or another repo's that its `auto_map` names) is for consumers without the package, and never runs here."""

import pytest

from testers import TINY_RUN, make_untrusted, save_tiny_base

import run_captioning
import run_clip


def test_examples_continue_a_checkpoint_without_running_its_code(builtin_data, tmp_path, monkeypatch):
    """Even a user who answers "yes" to every "run the custom code?" prompt never gets asked, and nothing of the
    checkpoint's code runs (each of its files raises when imported)."""
    checkpoint = make_untrusted(save_tiny_base(tmp_path / "checkpoint"))
    prompts = []
    monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or "y")
    args = ["--preset", "tiny", *TINY_RUN, "--max_steps", "1", "--model_name_or_path", str(checkpoint)]

    clip = run_clip.main([*args, "--output_dir", str(tmp_path / "clip")])
    captioner = run_captioning.main([*args, "--generation_max_new_tokens", "4", "--max_eval_samples", "4",
                                     "--output_dir", str(tmp_path / "captioner")])  # fmt: skip
    assert prompts == []
    assert {"train_loss", "baseline bleu"} <= set(captioner) and "train_loss" in clip
    for output in ("clip", "captioner"):  # the folders written carry this package's code, not the checkpoint's
        assert "raise RuntimeError" not in (tmp_path / output / "configuration_mm.py").read_text()

"""What `--resume_from_checkpoint` may touch and pick (training_mm.checkpoints, training_mm.output_folder): another run's
checkpoint never opens a finished output folder, and `last` takes the newest complete checkpoint, found before the data
is loaded."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from testers import TINY_RUN
from training_mm.checkpoints import checkpoint_problems

import run_clip

TINY = ["--preset", "tiny", *TINY_RUN]


def _checkpoint(folder, step):
    """A complete checkpoint's files as Trainer writes them (weights, config, optimizer, state last); tiny contents,
    since nothing here loads it."""
    folder.mkdir(parents=True)
    save_file({"weight": torch.ones(64, 64)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "mm"}))
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def _cut_in_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class DataLoadingReached(Exception):
    pass


def test_resuming_another_runs_checkpoint_never_writes_over_a_finished_run(builtin_data, tmp_path):
    finished = tmp_path / "finished_run"
    finished.mkdir()
    save_file({"weight": torch.zeros(2)}, finished / "model.safetensors")
    (finished / "README.md").write_text("the finished run's card")
    before = {path.name: path.read_bytes() for path in finished.iterdir()}
    other = _checkpoint(tmp_path / "other_run" / "checkpoint-4", 4)

    with pytest.raises(FileExistsError, match=r"is not empty.*another run's checkpoint \(not inside it\)"):
        run_clip.main([*TINY, "--output_dir", str(finished), "--resume_from_checkpoint", str(other)])
    assert {path.name: path.read_bytes() for path in finished.iterdir()} == before


def test_resume_last_skips_a_half_written_checkpoint_before_loading_the_data(tmp_path, monkeypatch, caplog):
    """A run killed while writing checkpoint-8 (weights cut off, no trainer_state.json yet) resumes from the intact
    checkpoint-4, saying which one it skipped and why, before any data is loaded."""
    output_dir = tmp_path / "killed"
    intact = _checkpoint(output_dir / "checkpoint-4", 4)
    half_written = output_dir / "checkpoint-8"
    shutil.copytree(intact, half_written)
    (half_written / "trainer_state.json").unlink()
    _cut_in_half(half_written / "model.safetensors")
    resumed_from = []

    def load_splits(data_args, training_args, image_size):
        resumed_from.append(training_args.resume_from_checkpoint)
        raise DataLoadingReached

    monkeypatch.setattr(run_clip, "load_splits", load_splits)
    with caplog.at_level("WARNING"), pytest.raises(DataLoadingReached):
        run_clip.main([*TINY, "--output_dir", str(output_dir), "--resume_from_checkpoint", "last"])
    assert resumed_from == [str(intact)]
    skipped = [record.getMessage() for record in caplog.records if "skipping" in record.getMessage()]
    assert len(skipped) == 1 and str(half_written) in skipped[0]
    assert "no trainer_state.json" in skipped[0] and "model.safetensors: unreadable" in skipped[0]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda ckpt: (ckpt / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda ckpt: (ckpt / "trainer_state.json").write_text('{"global_st'), "trainer_state.json: unreadable"),
        (lambda ckpt: _cut_in_half(ckpt / "model.safetensors"), "model.safetensors: unreadable"),
        (lambda ckpt: (ckpt / "model.safetensors").unlink(), "no weights"),
        (lambda ckpt: _cut_in_half(ckpt / "optimizer.pt"), "optimizer.pt: not a complete torch.save archive"),
    ],
    ids=["no-state", "cut-json", "cut-weights", "no-weights", "cut-optimizer"],
)
def test_an_incomplete_checkpoint_is_refused_by_name_and_last_says_why(tmp_path, damage, reason):
    checkpoint = _checkpoint(tmp_path / "out" / "checkpoint-4", 4)
    assert checkpoint_problems(checkpoint) == []
    damage(checkpoint)
    assert any(problem.startswith(reason) for problem in checkpoint_problems(checkpoint))

    with pytest.raises(ValueError, match=rf"checkpoint-4 is not a complete checkpoint: .*{reason}"):
        run_clip.main([*TINY, "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", str(checkpoint)])
    with pytest.raises(FileNotFoundError, match=rf"no complete checkpoint-\* folder .*\n  checkpoint-4: .*{reason}"):
        run_clip.main([*TINY, "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "last"])

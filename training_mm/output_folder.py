"""A run's output folder: the checks that must fail before training (a non-empty folder, a checkpoint to resume
from, a Hub repo that already has files), and, at the end, the Hub-ready folder (model, processor, card, results
files) and its upload."""

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from .checkpoints import checkpoint_problems, last_complete_checkpoint
from .hub import CardFacts, check_hub_repo_is_empty, describe_model, push_folder_to_hub, write_model_card
from .nonfinite_guard import advice_for, check_finite_files, check_finite_weights

logger = logging.getLogger(__name__)

# What the trainer writes into output_dir on its way; anything else there belongs to someone else.
RUN_ARTIFACTS = ("checkpoint-*", "runs")


@dataclass
class RunOutput:
    """Where a run's Hub-ready folder goes: the local `folder`, the checkpoint to `resume` from (or None), the Hub
    `repo_id`, and whether to push it there at the end (`push_to_hub`)."""

    folder: Path
    resume: str | None
    repo_id: str
    push_to_hub: bool


def prepare_output(training_args, overwrite, other_folders=()):
    """The checks that must fail before training rather than after; returns the run's `RunOutput`.

    Resolves `--resume_from_checkpoint` (also into `training_args`, where the meta-controller restores its state
    from), refuses a non-empty `--output_dir` (and `other_folders`, e.g. run_lora.py's `--merge_output_dir`) unless
    `overwrite`, and takes `--push_to_hub` away from `Trainer` (which would push every checkpoint): the folder is
    pushed once, at the end, by `push_output_folder`, and a Hub repo that already has files is refused here.
    """
    folder = Path(training_args.output_dir)
    resume = resolve_resume(training_args.resume_from_checkpoint, folder)
    training_args.resume_from_checkpoint = resume
    check_output_dir(folder, overwrite, resume)
    for other in other_folders:
        check_output_dir(Path(other), overwrite, None)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    repo_id = training_args.hub_model_id or folder.name
    if push_to_hub:
        check_hub_repo_is_empty(repo_id, training_args.hub_token)
    return RunOutput(folder=folder, resume=resume, repo_id=repo_id, push_to_hub=push_to_hub)


def resolve_resume(value, output_dir):
    """`--resume_from_checkpoint last` means the newest complete checkpoint in output_dir (newer, incomplete ones are
    skipped with a warning); a path must be a complete checkpoint (see training_mm.checkpoints)."""
    if value is None:
        return None
    if value == "last":
        return str(last_complete_checkpoint(output_dir))
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such folder (or pass `last`).")
    if problems := checkpoint_problems(value):
        raise ValueError(
            f"--resume_from_checkpoint {value} is not a complete checkpoint: {'; '.join(problems)}. Resume from an "
            "earlier checkpoint-N (or pass `last` for the newest complete one)."
        )
    return value


def check_output_dir(output_dir, overwrite, resume, ignore=()):
    """Refuses to write into a non-empty folder unless asked to (or continuing the run that is there).

    Checked before training and again before writing; the second time, what this run wrote itself (`ignore`:
    checkpoints, TensorBoard logs) does not count. Resuming continues the run in `output_dir` only when the `resume`
    checkpoint lies inside it: a checkpoint of another run would write a new model over the one there.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file; choose a folder.")
    if overwrite or resumes_inside(resume, output_dir) or not output_dir.is_dir():
        return
    entries = sorted(p.name for p in output_dir.iterdir() if not any(p.match(pattern) for pattern in ignore))
    if entries:
        checkpoint = get_last_checkpoint(str(output_dir))
        hint = f" or --resume_from_checkpoint last to continue from {checkpoint}," if checkpoint else ""
        elsewhere = (
            f" --resume_from_checkpoint {resume} is another run's checkpoint (not inside it), so this run would "
            "write a new model over the one there."
            if resume
            else ""
        )
        raise FileExistsError(
            f"Output folder {output_dir} is not empty ({len(entries)} entries: {', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}).{elsewhere} Pass --overwrite_output_dir to write into it anyway,"
            f"{hint} or choose another --output_dir."
        )


def resumes_inside(resume, output_dir):
    """Whether the `resume` checkpoint (a path, or None) lies inside `output_dir`: the run there continues."""
    return resume is not None and Path(resume).resolve().is_relative_to(Path(output_dir).resolve())


def save_output_folder(trainer, output, overwrite, what="model", **card):
    """Writes the Hub-ready folder: the trained model (or adapter) with its remote code and processor, and a README.md
    model card (`training_mm.hub.write_model_card`; `card` holds the `CardFacts` fields other than the title, repo and
    summary, which come from the repo and `trainer.model`).

    Checks the folder again first (another process may have written there during training); Trainer's pickled
    arguments are removed, as a Hub folder holds no pickles. Returns whether this process wrote the folder's files.
    """
    check_output_dir(output.folder, overwrite, output.resume, ignore=RUN_ARTIFACTS)
    check_finite_weights(trainer.model, output.folder, advice_for(trainer.args))
    trainer.accelerator.wait_for_everyone()  # every process checked before any writes
    trainer.save_model(str(output.folder))  # every process: FSDP/DeepSpeed gather the weights here
    if not trainer.args.should_save:
        return False
    (output.folder / "training_args.bin").unlink(missing_ok=True)
    facts = CardFacts(
        model_name=output.repo_id.split("/")[-1],
        repo_id=output.repo_id,
        model_description=describe_model(trainer.model),
        **card,
    )
    write_model_card(output.folder, facts)
    save_run_results(trainer, facts.metrics)
    logger.info("Wrote the %s, processor and model card to %s", what, output.folder)
    return True


def save_run_results(trainer, metrics):
    """`train_results.json`, `eval_results.json` and `all_results.json` in the output folder, as transformers' own
    examples write them (`Trainer.save_metrics`): the training's runtime, throughput and loss, and every figure the
    card's `model-index` reports (`metrics`) with the last `eval_loss`, so the card can be checked against the run."""
    history = trainer.state.log_history
    trainer.save_metrics("train", next((entry for entry in reversed(history) if "train_runtime" in entry), {}))
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    trainer.save_metrics("eval", {**metrics, **({"eval_loss": eval_losses[-1]} if eval_losses else {})})


def save_evaluation_results(training_args, metrics):
    """An evaluation without training (`--do_train false`): `eval_results.json` and `all_results.json` in
    `--output_dir` (checked like any output folder by `prepare_output`; a checkpoint's own folder is only written with
    --overwrite_output_dir), in the form `Trainer.save_metrics` gives them in transformers' examples."""
    if not training_args.should_save:
        return
    folder = Path(training_args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("eval_results.json", "all_results.json"):
        (folder / name).write_text(json.dumps(metrics, indent=4, sort_keys=True) + "\n")
    logger.info("Wrote eval_results.json and all_results.json to %s", folder)


def push_output_folder(output, training_args, what=""):
    """With --push_to_hub, uploads the output folder to its Hub repo, without the run's checkpoints and logs, which
    stay local (on the process that saves only)."""
    if not (output.push_to_hub and training_args.should_save):
        return
    with tempfile.TemporaryDirectory() as staging:
        staged = Path(staging) / "model"
        shutil.copytree(output.folder, staged, ignore=shutil.ignore_patterns(*RUN_ARTIFACTS))
        check_finite_files(staged)
        commit = push_folder_to_hub(
            staged, output.repo_id, token=training_args.hub_token, private=bool(training_args.hub_private_repo)
        )
    logger.info("Pushed %s%s to the Hub: %s", what, output.folder, commit.commit_url)

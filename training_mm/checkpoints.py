"""Which `checkpoint-N` folders a run can resume from.

A run killed while `Trainer` writes a checkpoint leaves a half-written folder: `Trainer` writes the weights first,
then the optimizer, scheduler and RNG states, and `trainer_state.json` last. `checkpoint_problems` reads only what
can be read without loading the checkpoint (JSON files, safetensors headers, the end of each `torch.save` zip
archive), so a broken checkpoint is found before the data is loaded, not after; `last_complete_checkpoint` skips
those, newest first, and says which and why.
"""

import json
import logging
import re
import zipfile
from pathlib import Path

from safetensors import safe_open
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .safe_loading import PICKLED_WEIGHTS

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
# The model weights a checkpoint holds: whole, sharded (with an index), a PEFT adapter; or, written by FSDP's sharded
# state dict or DeepSpeed, a folder of their own format.
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
SHARDED_WEIGHT_FOLDERS = ("pytorch_model_fsdp_*", "global_step*")

_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problems(folder):
    """What keeps `folder` from being a complete Trainer checkpoint, as a list of readable reasons (empty: none)."""
    folder = Path(folder)
    problems = []
    state = folder / TRAINER_STATE
    if not state.is_file():
        problems.append(f"no {TRAINER_STATE}, which Trainer writes last: the checkpoint was never finished")
    has_sharded_weights = any(path.is_dir() for pattern in SHARDED_WEIGHT_FOLDERS for path in folder.glob(pattern))
    if not has_sharded_weights and not any((folder / name).is_file() for name in WEIGHTS):
        pickled = sorted({path.name for pattern in PICKLED_WEIGHTS for path in folder.glob(pattern)})
        also = f"; its {', '.join(pickled)} is a pickle, which mm does not load" if pickled else ""
        problems.append(f"no weights ({' or '.join(WEIGHTS)}){also}")
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (problem := _unreadable(path)):
            problems.append(f"{path.relative_to(folder)}: {problem}")
    index = folder / "model.safetensors.index.json"
    if index.is_file() and not _unreadable(index):
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        problems += [f"{index.name} names {shard}, which is missing" for shard in missing]
    return problems


def _unreadable(path):
    """Why the file at `path` cannot be read back (None when it can), by its kind; reads headers only."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as weights:
                weights.keys()
        elif path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
            # torch.save writes a zip archive, whose directory is at the end: a cut-off file has none.
            return "not a complete torch.save archive (cut off?)"
    except Exception as error:  # OSError, a JSON or UTF-8 decoding error, safetensors' SafetensorError
        return f"unreadable, {type(error).__name__}: {error}"
    return None


def checkpoints_newest_first(output_dir):
    """The `checkpoint-N` folders in `output_dir`, highest N first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(match[1]), path) for path in output_dir.iterdir()
             if path.is_dir() and (match := _CHECKPOINT_NAME.match(path.name))]  # fmt: skip
    return [path for _, path in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir):
    """The newest complete checkpoint in `output_dir` (a `Path`); logs a warning for each newer one it skips, with
    why. Raises `FileNotFoundError` when there is none, listing what was wrong with each."""
    skipped = []
    for checkpoint in checkpoints_newest_first(output_dir):
        problems = checkpoint_problems(checkpoint)
        if not problems:
            return checkpoint
        skipped.append(f"{checkpoint.name}: {'; '.join(problems)}")
        logger.warning(
            "--resume_from_checkpoint last: skipping %s, which is incomplete: %s.", checkpoint, "; ".join(problems)
        )
    if not skipped:
        raise FileNotFoundError(f"--resume_from_checkpoint last: no checkpoint-* folder in {output_dir} to resume.")
    raise FileNotFoundError(
        f"--resume_from_checkpoint last: no complete checkpoint-* folder in {output_dir} to resume; each is "
        "incomplete:\n  " + "\n  ".join(skipped)
    )

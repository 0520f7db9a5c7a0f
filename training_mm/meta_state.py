"""The meta-controller's checkpoint file: tensors plus one JSON metadata entry in safetensors, nothing pickled."""

import json
import os

from safetensors import safe_open
from safetensors.torch import save_file


STATE_FILE = "meta_controller.safetensors"


def write_state(directory, tensors, metadata):
    """Write `tensors` (name -> tensor) and the JSON-serialisable `metadata` to `directory/STATE_FILE`."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, os.path.join(directory, STATE_FILE), metadata={"state": json.dumps(metadata)})


def read_state(directory):
    """(tensors, metadata) as written by `write_state`."""
    with safe_open(os.path.join(directory, STATE_FILE), framework="pt") as f:
        metadata = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata


def has_state(directory):
    return os.path.isfile(os.path.join(directory, STATE_FILE))

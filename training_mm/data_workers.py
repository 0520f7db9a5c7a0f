"""How the data path spreads its work: processes for the one-off passes over a dataset (`Dataset.map(num_proc=...)`:
the validity check, resampling) and the key their cache is kept under, workers for the DataLoader that decodes and
processes batches during training, and how many shards a stream is cut into so that those workers each read their
own."""

import hashlib
import math
import os

import pyarrow as pa
import pyarrow.compute as pc
import torch


# A map over fewer rows than this runs in the calling process: starting processes would cost more than it saves.
MIN_ROWS_PER_PROCESS = 1000
MAX_MAP_PROCESSES = 8
# DataLoader workers per GPU at most: enough to decode and process images at the rate a GPU trains the presets.
MAX_WORKERS_PER_GPU = 8
# A local dataset turned into a stream gets one shard per this many rows (at least one, at most MAX_STREAM_SHARDS).
ROWS_PER_STREAM_SHARD = 256
MAX_STREAM_SHARDS = 64


def available_cpus():
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_processes(num_rows):
    """Processes for a `Dataset.map` over `num_rows` rows: one per `MIN_ROWS_PER_PROCESS` rows, up to the cores (at
    most `MAX_MAP_PROCESSES`); None (the calling process alone) when that is one."""
    processes = min(num_rows // MIN_ROWS_PER_PROCESS, available_cpus(), MAX_MAP_PROCESSES)
    return processes if processes > 1 else None


def dataloader_workers():
    """Default `dataloader_num_workers` of the training scripts.

    On a GPU machine: the cores left after one per training process, shared among the GPUs (at most
    `MAX_WORKERS_PER_GPU` each), so images are decoded and processed in parallel while the GPU trains. On a CPU-only
    machine: 0, because the training step already runs on every core, and a worker would only take cores from it.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus:
        return 0
    return max(1, min(MAX_WORKERS_PER_GPU, (available_cpus() - gpus) // gpus))


def stream_shards(num_rows):
    """Shards for a local dataset of `num_rows` rows read as a stream (see `ROWS_PER_STREAM_SHARD`)."""
    return max(1, min(MAX_STREAM_SHARDS, math.ceil(num_rows / ROWS_PER_STREAM_SHARD)))


def files_state(dataset, columns):
    """A digest of the size and modification time of every file the `columns` of an undecoded `dataset` name.

    Passed to a `Dataset.map` over those files (among its `fn_kwargs`), it becomes part of the map's cache key, so a
    file replaced or damaged since the last run is read again instead of being taken from the cache; `datasets`
    itself keys the cache on the table, which holds the files' paths, not their contents."""
    digest = hashlib.blake2b(digest_size=16)
    for column in columns:
        values = dataset.data.column(column)
        if not pa.types.is_struct(values.type):  # not an undecoded Image/Audio column: nothing to key on
            continue
        for path in pc.struct_field(values, "path").to_pylist():
            try:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except (OSError, TypeError):  # bytes in the table (part of its own key), or a file that is not there
                digest.update(f"{path}\0-\n".encode())
    return digest.hexdigest()

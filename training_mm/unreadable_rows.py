"""Bad rows of user data: find the rows whose image or audio cannot be read, is empty or holds non-finite values, or
whose caption is empty, and drop them with a logged count (`filter_unreadable`).

The check is cheaper than a decode, and runs in parallel (`Dataset.map(num_proc=...)`, cached by `datasets`, so the
other processes of a distributed run read its result): a JPEG is decoded at 1/8 scale (every byte of it is still
read and entropy-decoded, so a truncated file is caught), a PNG is verified (chunk checksums, no decompression),
an integer-PCM audio file is read to its header (its samples cannot be NaN); float images and float audio, and
other formats, are decoded in full.
"""

import io
import logging
from functools import partial

import numpy as np
import soundfile
from datasets import IterableDataset
from PIL import Image as PILImage

from .audio_decoding import audio_source, decode_audio
from .data_workers import files_state, map_processes
from .media_inputs import undecoded


logger = logging.getLogger(__name__)

MAX_REASONS_LOGGED = 5
STREAMING_LOG_EVERY = 10_000
STREAM_CHECK_BATCH = 64  # rows read from a stream shard at a time
# Audio subtypes whose samples are floats (which may be NaN or infinite); others are integers, finite by type.
FLOAT_AUDIO = ("FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_III")


def filter_unreadable(dataset, image_column="image", audio_column="audio", caption_column="caption", num_proc=None):
    """Drop rows whose image or audio cannot be decoded, is empty or holds non-finite values, or whose caption is
    empty, and say so in the log.

    Logs `skipped N of M rows: <first reasons>` as a warning; raises `ValueError` ("all N rows unreadable: <first
    reasons>") when no row is left. Pass `None` for a column to not check it; a
    column the dataset lacks is not checked either. A `Dataset` is checked now, in `num_proc` processes (default:
    `data_workers.map_processes`); an `IterableDataset` as it is read, shard by shard (so DataLoader workers share
    the work), with a warning every 10,000 rows that found bad ones and one at the end of each pass over a shard.

    >>> clean = filter_unreadable(load_user_dataset("my_photos/")["train"])  # doctest: +SKIP
    """
    present = set(dataset.column_names)
    problem = partial(
        _problem,
        image_column=image_column if image_column in present else None,
        audio_column=audio_column if audio_column in present else None,
        caption_column=caption_column if caption_column in present else None,
    )
    if isinstance(dataset, IterableDataset):
        rows = undecoded(dataset, image_column, audio_column)
        count = rows.num_shards
        shards = [(index, count, rows.shard(num_shards=count, index=index)) for index in range(count)]
        # `features` decodes the images again on the way out: the filter itself must see their raw bytes.
        return IterableDataset.from_generator(
            _readable_rows, gen_kwargs={"shards": shards, "problem": problem}, features=dataset.features
        )
    checked = [name for name in (image_column, audio_column, caption_column) if name in present]
    rows = undecoded(dataset.select_columns(checked), image_column, audio_column)
    media = [name for name in (image_column, audio_column) if name in present]
    problems = rows.map(
        _problems,
        batched=True,
        fn_kwargs={"problem": problem, "files": files_state(rows, media)},
        remove_columns=checked,
        num_proc=num_proc if num_proc is not None else map_processes(len(rows)),
        desc="Checking for unreadable rows",
    )["problem"]
    reasons = {index: reason for index, reason in enumerate(problems) if reason}
    if reasons:
        described = [f"row {index}: {reason}" for index, reason in reasons.items()]
        if len(reasons) == len(dataset):
            raise ValueError(_all_unreadable(len(dataset), described))
        _log_skipped(len(reasons), len(dataset), described)
        dataset = dataset.select([index for index in range(len(dataset)) if index not in reasons])
    return dataset


def _problems(batch, problem, files):
    """`files` (`data_workers.files_state`) is not read: it keys the map's cache on the files' state."""
    return {"problem": [problem(row) or "" for row in _rows_of(batch)]}


def _rows_of(batch):
    """The rows of a batch (a dict of columns)."""
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


def _readable_rows(shards, problem):
    """Yield the readable rows of each stream shard, warning periodically and at the end of a shard about its skipped
    rows; a shard with no readable row is an error."""
    for index, count, rows in shards:
        where = f" of shard {index + 1}/{count}" if count > 1 else ""
        seen, reasons, logged = 0, [], 0
        # `iter`, not a plain loop: in a DataLoader worker, a loop over a stream would shard it by worker once more.
        stream = (row for batch in rows.iter(batch_size=STREAM_CHECK_BATCH) for row in _rows_of(batch))
        for seen, row in enumerate(stream, start=1):
            reason = problem(row)
            if reason:
                reasons.append(f"row {seen - 1}{where}: {reason}")
            else:
                yield row
            if seen % STREAMING_LOG_EVERY == 0 and len(reasons) > logged:
                _log_skipped(len(reasons), seen, reasons, so_far=True)
                logged = len(reasons)
        if reasons and len(reasons) == seen:
            raise ValueError(_all_unreadable(seen, reasons))
        if reasons:
            _log_skipped(len(reasons), seen, reasons)


def _log_skipped(skipped, total, reasons, so_far=False):
    logger.warning("skipped %d of %d rows%s: %s", skipped, total, " so far" if so_far else "", _first(reasons))


def _all_unreadable(total, reasons):
    return (
        f"all {total} rows unreadable, so there is nothing to train or measure on: {_first(reasons)}. Check the "
        "files the image/audio columns name and the caption column (--caption_column)."
    )


def _first(reasons):
    return "; ".join(reasons[:MAX_REASONS_LOGGED]) + ("; ..." if len(reasons) > MAX_REASONS_LOGGED else "")


def _problem(row, *, image_column, audio_column, caption_column):
    """Why `row` is unusable, in a few words, or None when it is fine. A column set to None is not checked."""
    if caption_column and not (isinstance(row[caption_column], str) and row[caption_column].strip()):
        return f"empty caption {row[caption_column]!r}"
    # Decoders raise almost anything on garbage input (OSError, ValueError, SyntaxError, struct.error, ...);
    # whatever it is, the row is unreadable and the reason says why.
    for column, check, kind in ((image_column, _image_problem, "image"), (audio_column, _audio_problem, "audio")):
        if not column:
            continue
        try:
            reason = check(row[column])
        except Exception as err:
            return f"unreadable {kind} {_describe(row[column])}: {err}"
        if reason:
            return reason.format(_describe(row[column]))
    return None


def _image_problem(value):
    """A reason template ("... {} ...", for the file's name) when the image is empty or non-finite; raises when it
    cannot be read."""
    if value is None:
        raise ValueError("no image")
    image = PILImage.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    if 0 in image.size:
        return f"empty image {{}} ({image.width}x{image.height})"
    if image.format == "PNG" and image.mode != "F":
        image.verify()  # every chunk's checksum, without inflating the pixels
    else:
        if image.format == "JPEG":
            image.draft(image.mode, (1, 1))  # decode at 1/8 scale: every byte is still read and entropy-decoded
        image.load()
        if image.mode == "F" and not np.isfinite(np.asarray(image)).all():  # PIL's only floating-point mode
            return "image {} holds NaN or infinite values"
    return None


def _audio_problem(value):
    """As `_image_problem`, for a clip: integer PCM is read to its header, float samples in full."""
    if isinstance(value, dict) and "array" not in value:
        info = soundfile.info(audio_source(value))
        if info.frames == 0:
            return "empty audio {}"
        if info.subtype not in FLOAT_AUDIO:
            return None
    wave = decode_audio(value)[0]
    if wave.size == 0:
        return "empty audio {}"
    if not np.isfinite(wave).all():
        return "audio {} holds NaN or infinite values"
    return None


def _describe(value):
    return repr(value.get("path") or "<bytes>") if isinstance(value, dict) else repr(value)

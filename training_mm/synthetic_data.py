"""The built-in training data: seeded image / caption / spoken-caption triples of small compositional scenes.

Each example is a scene of coloured shapes drawn with PIL ("a large red circle on the left", "a green star
above a blue square", "three yellow hexagons"), a caption of it in one of a few wordings, and that caption
spoken by espeak-ng in a varied voice, speed and pitch, at 16 kHz. Matching them needs colour, shape, size,
position, relation and count from every modality, so a model cannot pass on one shortcut.

Six (colour, shape) pairs, `HELD_OUT`, never appear in `train` or `validation`; every `test` scene contains
one, so test retrieval measures composition of seen words into unseen pairs. Each colour and each shape is
held out in exactly one pair, so all words are still seen in training.

Generation is deterministic: example `i` of a split depends only on `(seed, split, i)`. Built datasets are
cached with `save_to_disk` under `$MM_CACHE/builtin` (default `~/.cache/mm/builtin`), keyed by their
parameters, so only the first run pays for it.
"""

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import product
from pathlib import Path

import datasets
import numpy as np
import soundfile as sf
from datasets import Audio, Dataset, DatasetDict, Features, Image, Value
from datasets.utils import tqdm as hf_tqdm  # datasets' own bar: off after `datasets.disable_progress_bars()`
from PIL import Image as PILImage
from PIL import ImageDraw

from .audio_decoding import SAMPLING_RATE, decode_audio, resample


logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # part of the cache key: bump it whenever the generated data changes

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
HELD_OUT = tuple(zip(COLOURS, SHAPES))  # red circle, green square, ..., orange hexagon
SEEN = tuple(pair for pair in product(COLOURS, SHAPES) if pair not in HELD_OUT)
SPLITS = ("train", "validation", "test")

# Where a lone object sits (its centre, as fractions of the image side) and how a caption says it.
POSITIONS = {
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "middle": (0.5, 0.5),
}
WHERE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}
NUMBERS = {2: "two", 3: "three", 4: "four"}
# How a caption says "A left of B" / "A above B": as is, or flipped to "B right of A" / "B below A".
RELATION_WORDS = {
    "left of": (("left of", "to the left of"), ("right of", "to the right of")),
    "above": (("above", "over"), ("below", "under")),
}
# Polygons as (corners, radii cycled over the corners in units of the object radius, angle of the first corner).
POLYGONS = {
    "square": (4, (1.2,), 45),
    "triangle": (3, (1.3,), -90),
    "star": (10, (1.3, 0.55), -90),
    "diamond": (4, (1.3, 0.8), -90),
    "hexagon": (6, (1.15,), 0),
}
SUPERSAMPLE = 4  # draw large, then shrink: antialiased edges keep small shapes recognisable at 32 px

# Plain espeak-ng English voices (the mbrola ones need extra packages), times variants that change the timbre.
VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-us-nyc", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("", "+m3", "+m7", "+f2", "+f4", "+klatt")
SPEEDS = (150, 200)  # words per minute; the longest caption stays under the 4 s the `small` preset hears
PITCHES = (30, 70)
NO_ESPEAK_WARNING = (
    "espeak-ng was not found, so the built-in data has no audio column (images and captions only). "
    "Install it to get spoken captions: `apt-get install espeak-ng` (Debian/Ubuntu), or `bash scripts/install.sh`."
)


@dataclass(frozen=True)
class Scene:
    """What an image shows. `objects` are (colour, shape) pairs; for a relation, the left or upper one first.

    >>> Scene("relation", (("red", "star"), ("blue", "square")), relation="left of").label
    'red star left of blue square'
    """

    kind: str  # "single", "relation" or "count"
    objects: tuple
    size: str = ""  # single: "small" or "large"
    position: str = ""  # single: a key of POSITIONS
    relation: str = ""  # relation: "left of" or "above"
    count: int = 1  # count: how many copies of objects[0]

    @property
    def label(self):
        """The canonical caption: identical for every wording of the same scene, so it marks positives."""
        names = [f"{colour} {shape}" for colour, shape in self.objects]
        if self.kind == "single":
            return f"{self.size} {names[0]} {WHERE[self.position]}"
        if self.kind == "relation":
            return f"{names[0]} {self.relation} {names[1]}"
        return f"{NUMBERS[self.count]} {names[0]}s"


def sample_scene(rng, held_out):
    """Draw a scene; with `held_out`, at least one of its objects is a `HELD_OUT` pair, else none is."""
    kind = ("single", "relation", "count")[rng.choice(3, p=[0.4, 0.4, 0.2])]
    first = choose(rng, HELD_OUT if held_out else SEEN)
    if kind == "single":
        return Scene(kind, (first,), size=choose(rng, ["small", "large"]), position=choose(rng, list(POSITIONS)))
    if kind == "count":
        return Scene(kind, (first,), count=int(rng.integers(2, 5)))
    others = [pair for pair in (HELD_OUT + SEEN if held_out else SEEN) if pair != first]
    objects = (first, choose(rng, others))
    return Scene(kind, objects if rng.random() < 0.5 else objects[::-1], relation=choose(rng, ["left of", "above"]))


def choose(rng, options):
    """One of `options`, as the Python object itself (`rng.choice` would turn strings into `np.str_`)."""
    return options[rng.integers(len(options))]


def caption_for(scene, rng):
    """Word `scene` in one of a few templates; relations are said either way round ("left of"/"right of").

    >>> caption_for(Scene("count", (("orange", "star"),), count=2), np.random.default_rng(1))
    'there are two orange stars'
    >>> scene = Scene("relation", (("red", "star"), ("blue", "square")), relation="left of")
    >>> caption_for(scene, np.random.default_rng(0))
    'a red star to the left of a blue square'
    """
    if scene.kind == "relation":
        first, second = (f"{colour} {shape}" for colour, shape in scene.objects)
        flipped = rng.random() < 0.5
        relation = choose(rng, RELATION_WORDS[scene.relation][flipped])
        if flipped:
            first, second = second, first
        body, verb = f"{_a(first)} {relation} {_a(second)}", "is"
    elif scene.kind == "single":
        body, verb = _a(scene.label), "is"
    else:
        body, verb = scene.label, "are"
    return choose(rng, ["{}", f"there {verb} {{}}", "a picture of {}"]).format(body)


def _a(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def draw_scene(scene, rng, image_size):
    """Render `scene` on a dark background, with jittered colours, positions and rotations."""
    canvas = image_size * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(0, 60) + rng.integers(0, 15, size=3))
    image = PILImage.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    for (colour, shape), (x, y, radius) in zip(scene.objects * scene.count, _layout(scene, rng)):
        fill = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + rng.integers(-25, 26, size=3), 0, 255))
        x, y, radius = x * canvas, y * canvas, radius * canvas
        if shape == "circle":
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
        else:
            corners, radii, start = POLYGONS[shape]
            angles = np.deg2rad(start + rng.uniform(-12, 12) + np.arange(corners) * 360 / corners)
            scale = radius * np.resize(radii, corners)
            draw.polygon(list(zip(x + scale * np.cos(angles), y + scale * np.sin(angles))), fill=fill)
    return image.resize((image_size, image_size), PILImage.LANCZOS)


def _layout(scene, rng):
    """Object centres and radii as fractions of the image side."""
    if scene.kind == "single":
        x, y = np.array(POSITIONS[scene.position]) + rng.uniform(-0.06, 0.06, size=2)
        return [(x, y, 0.2 if scene.size == "large" else 0.12)]
    if scene.kind == "count":  # distinct cells of a 3x3 grid, so the copies never overlap
        cells = rng.choice(9, size=scene.count, replace=False)
        centres = (np.stack([cells % 3, cells // 3], axis=1) + 0.5) / 3
        centres += rng.uniform(-0.04, 0.04, size=centres.shape)
        return [(x, y, 0.12) for x, y in centres]
    # The pair shares one coordinate (up to a little jitter), so only the named relation holds between them.
    first, second = rng.uniform(0.16, 0.3), rng.uniform(0.7, 0.84)
    shared = rng.uniform(0.3, 0.7) + rng.uniform(-0.05, 0.05, size=2)
    pair = [(first, shared[0], 0.14), (second, shared[1], 0.14)]
    return pair if scene.relation == "left of" else [(y, x, radius) for x, y, radius in pair]


def speak(text, voice, speed, pitch):
    """Say `text` with espeak-ng; returns 16 kHz mono float32 audio with the trailing silence trimmed.

    >>> speak("a red circle", "en-us", 160, 50).dtype  # doctest: +SKIP
    dtype('float32')
    """
    command = ["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch), text]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"`{' '.join(command)}` failed: {result.stderr.decode(errors='replace').strip()}")
    wave, rate = decode_audio({"bytes": result.stdout, "path": None})
    voiced = np.flatnonzero(np.abs(wave) > 1e-3)
    if voiced.size:  # espeak-ng ends with ~0.4 s of silence; keep 50 ms of it
        wave = wave[: voiced[-1] + rate // 20]
    # espeak-ng speaks at 22050 Hz only, and the model's feature extractor takes 16 kHz alone.
    return resample(wave, rate, SAMPLING_RATE)


def available_voices():
    """The `VOICES` this espeak-ng has (older releases lack some); warns about the missing ones."""
    listing = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True, check=True).stdout
    languages = {line.split()[1] for line in listing.splitlines()[1:] if len(line.split()) > 1}
    voices = [voice for voice in VOICES if voice in languages]
    if len(voices) < len(VOICES):
        logger.warning("espeak-ng lacks voices %s; speaking with %s.", sorted(set(VOICES) - set(voices)), voices)
    return voices or ["en"]


def make_example(index, *, split, seed, image_size, voices):
    """Example `index` of `split`: a dict of PNG image, caption, label and (with `voices`) WAV audio bytes."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    scene = sample_scene(rng, held_out=split == "test")
    example = {"caption": caption_for(scene, rng), "label": scene.label}
    image = io.BytesIO()
    draw_scene(scene, rng, image_size).save(image, format="PNG")
    example["image"] = {"bytes": image.getvalue(), "path": None}
    if voices:  # drawn last, so images and captions do not depend on whether audio is made
        example["audio"] = spoken(example["caption"], rng, voices, f"{split}-{index:06d}.wav")
    return example


def spoken(caption, rng, voices, path):
    """`caption` said by a voice, speed and pitch drawn from `rng`: the `audio` column's value (16 kHz WAV bytes)."""
    voice = choose(rng, voices) + choose(rng, VARIANTS)
    wave = speak(caption, voice, int(rng.integers(*SPEEDS)), int(rng.integers(*PITCHES)))
    audio = io.BytesIO()
    sf.write(audio, wave, SAMPLING_RATE, format="WAV", subtype="PCM_16")
    return {"bytes": audio.getvalue(), "path": path}


def audio_possible(with_audio):
    """`with_audio`, unless espeak-ng is missing (then False, with a warning saying how to install it)."""
    if with_audio and shutil.which("espeak-ng") is None:
        logger.warning(NO_ESPEAK_WARNING)
        return False
    return with_audio


def build_synthetic_dataset(
    num_train=3000, num_validation=300, num_test=300, image_size=64, seed=0, with_audio=True, cache_dir=None
):
    """Build (or load from the cache) the built-in dataset: a `DatasetDict` with `train`/`validation`/`test`.

    Columns: `image` (`datasets.Image`), `caption` (str), `audio` (`datasets.Audio(decode=False)`: 16 kHz
    mono WAV bytes; read it with `training_mm.data.decode_audio`) and `label` (the canonical caption: rows
    with equal labels show the same scene). A split of size 0 is left out. Without espeak-ng, or with
    `with_audio=False`, there is no `audio` column. `cache_dir` defaults to `$MM_CACHE/builtin`, else
    `~/.cache/mm/builtin`.

    >>> data = build_synthetic_dataset(num_train=8, num_validation=2, num_test=2, image_size=32)  # doctest: +SKIP
    >>> data["train"][0]["caption"]  # doctest: +SKIP
    'a picture of a small green circle at the top'
    """
    with_audio = audio_possible(with_audio)
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    key = dict(version=GENERATOR_VERSION, sizes=sizes, image_size=image_size, seed=seed, audio=with_audio)

    def build(voices):
        return {split: _build_split(split, size, seed, image_size, voices) for split, size in sizes.items() if size > 0}

    return build_cached("dataset", key, build, with_audio, cache_dir)


def build_cached(what, key, build, with_audio, cache_dir=None):
    """The splits `build(voices)` returns (voices None: no audio), as a `DatasetDict` loaded from the cache folder
    named by the hash of `key` under `cache_dir` (default `$MM_CACHE/builtin`): built and saved there the first time.
    `what` names the data in the log."""
    folder = Path(cache_dir or _default_cache_dir()) / hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    if (folder / "dataset_dict.json").is_file():
        logger.info("Loading the built-in %s from %s", what, folder)
        return datasets.load_from_disk(str(folder))
    voices = available_voices() if with_audio else None
    start = time.perf_counter()
    splits = DatasetDict(build(voices))
    logger.info("Built the built-in %s (%s) in %.1f s", what, dict(key["sizes"]), time.perf_counter() - start)
    _save_atomically(splits, folder)
    return datasets.load_from_disk(str(folder))


def _build_split(split, size, seed, image_size, voices):
    make = partial(make_example, split=split, seed=seed, image_size=image_size, voices=voices)
    features = Features({"image": Image(), "caption": Value("string")})
    if voices:
        features["audio"] = Audio(decode=False)
    features["label"] = Value("string")
    return build_rows(make, size, features, split)


def _default_cache_dir():
    return Path(os.environ.get("MM_CACHE") or Path.home() / ".cache" / "mm") / "builtin"


def _save_atomically(splits, folder):
    """Save to a temporary folder and rename it, so an interrupted run never leaves a half-written cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial_folder = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    splits.save_to_disk(str(partial_folder))
    try:
        partial_folder.rename(folder)
    except OSError:  # another process finished the same dataset first; its copy is identical
        shutil.rmtree(partial_folder)


def build_rows(make, size, features, name):
    """Rows `make(0)`, ..., `make(size - 1)` as a `Dataset` with `features`."""
    # Threads suffice: the heavy part, espeak-ng, runs in subprocesses, and numpy and PIL release the GIL.
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        rows = list(hf_tqdm(pool.map(make, range(size)), total=size, desc=f"Building the built-in {name} split"))
    # Cast after building, not `from_dict(features=...)`: that calls `Audio.encode_example`, which imports
    # torchcodec (datasets >= 4) even for ready WAV bytes, while a cast only relabels the Arrow struct.
    return Dataset.from_dict({column: [row[column] for row in rows] for column in features}).cast(features)

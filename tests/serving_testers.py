"""The session-trained tiny model that the serving tests serve, index and export, and small request helpers.

`train_tiny_clip(folder)` trains a tiny `MMModel` for a few seconds until it ranks six captions against their six
images and six tones, saves it with its processor, and writes the images and tones (PNG, 16 kHz WAV) with a
`metadata.jsonl` of their captions: a collection for `mm-index`.
"""

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image
from testers import tiny_captions, tiny_processor

from configuration_mm import MMConfig
from modeling_mm import MMModel

CAPTIONS = [tiny_captions()[i] for i in (0, 9, 20, 33, 40, 47)]  # six colours, six shapes, distinct words
STEPS = 40


@dataclass
class TrainedClip:
    folder: Path  # the checkpoint
    media: Path  # images/, audio/ and metadata.jsonl
    captions: list
    images: list  # PIL images, in caption order
    audio: list  # float32 waveforms at 16 kHz, in caption order


def tone(frequency, seconds, rate=16000):
    return (0.3 * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def train_tiny_clip(folder) -> TrainedClip:
    folder = Path(folder)
    processor = tiny_processor()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in CAPTIONS]
    audio = [tone(300 + 200 * i, 0.3 + 0.04 * i) for i in range(len(CAPTIONS))]
    batch = processor(text=CAPTIONS, images=images, audio=audio, sampling_rate=16000, return_tensors="pt")
    tokenizer = processor.tokenizer
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    torch.manual_seed(0)
    model = MMModel(MMConfig.from_preset("tiny", text_config={"vocab_size": len(tokenizer), **special}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(STEPS):
        model(**batch, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    for name, logits in (("image", out.logits_per_text), ("audio", out.logits_per_audio.t())):
        ranked = logits.argmax(dim=1).tolist()
        assert ranked == list(range(len(CAPTIONS))), f"the tiny model did not learn text->{name}: {ranked}"
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    media = folder / "media"
    rows = []
    for i, (caption, image, clip) in enumerate(zip(CAPTIONS, images, audio)):
        (media / "images").mkdir(parents=True, exist_ok=True)
        (media / "audio").mkdir(exist_ok=True)
        image.save(media / "images" / f"{i}.png")
        soundfile.write(media / "audio" / f"{i}.wav", clip, 16000)
        rows += [{"file_name": f"images/{i}.png", "caption": caption}, {"file_name": f"audio/{i}.wav", "caption": caption}]
    (media / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return TrainedClip(folder / "model", media, CAPTIONS, images, audio)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(clip, rate=16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, clip, rate, format="WAV")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

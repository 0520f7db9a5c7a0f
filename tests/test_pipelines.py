"""The transformers pipelines of a saved captioner, run where mm is not installed: image-to-text (a PIL image, a path,
a list; max_new_tokens and generate_kwargs), image-text-to-text (a prompt continued), automatic-speech-recognition
(a waveform, a file, a dict), and all three again after the loaded model is saved anew."""

import json

import pytest
import soundfile

from test_generation import CAPTIONS, trained_captioner
from testers import run_clean


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The captioner of test_generation.py, its processor, two of its training images and clips, saved together."""
    folder = tmp_path_factory.mktemp("captioner")
    model, processor, _, _, images, audio = trained_captioner()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for i in range(2):
        images[i].save(folder / f"image{i}.png")
        soundfile.write(folder / f"clip{i}.wav", audio[i], 16000)
    return folder


def test_saved_folder_names_the_pipelines_and_holds_their_code(saved):
    config = json.loads((saved / "config.json").read_text())
    for task in ("image-to-text", "automatic-speech-recognition"):
        module = config["custom_pipelines"][task]["impl"].split(".")[0]
        assert (saved / f"{module}.py").is_file(), task
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_mm_generation.MMForConditionalGeneration"


# Defines check(folder, captions): every pipeline on the saved training images and clips must give their captions.
PIPELINES = """
import numpy as np, soundfile, transformers
from PIL import Image
from transformers import pipeline

def check(folder, captions):
    image = Image.open(folder + "/image0.png")
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    assert type(captioner).__name__ == "MMImageToTextPipeline"
    assert captioner(image) == [{"generated_text": captions[0]}], captioner(image)
    assert captioner(folder + "/image1.png", max_new_tokens=20) == [{"generated_text": captions[1]}]
    batch = captioner([image, folder + "/image1.png"], generate_kwargs={"num_beams": 2, "max_new_tokens": 20})
    assert batch == [[{"generated_text": captions[0]}], [{"generated_text": captions[1]}]], batch
    short = captioner(image, max_new_tokens=2)[0]["generated_text"]
    assert captions[0].startswith(short) and len(short) < len(captions[0]), short
    assert captioner(image, prompt="a photo of") == [{"generated_text": captions[0]}]

    prompted = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    out = prompted(images=image, text="a photo of", max_new_tokens=20)
    assert out[0]["generated_text"] == captions[0], out

    transcriber = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
    wave, rate = soundfile.read(folder + "/clip1.wav", dtype="float32")
    assert transcriber(wave, num_beams=1) == {"text": captions[1]}, transcriber(wave)
    assert transcriber(folder + "/clip0.wav", max_new_tokens=20) == {"text": captions[0]}
    out = transcriber({"array": wave, "sampling_rate": rate}, generate_kwargs={"num_beams": 1})
    assert out == {"text": captions[1]}, out
"""


def test_pipelines_run_from_the_folder_without_the_package(saved):
    code = PIPELINES + f"check({str(saved)!r}, {CAPTIONS[:2]!r})\nprint('PIPELINES OK', transformers.__version__)"
    assert "PIPELINES OK" in run_clean(code, cwd=saved.parent)


def test_resaving_a_loaded_model_keeps_every_pipeline(saved, tmp_path):
    """A captioner loaded as remote code and saved again keeps its pipelines and captions; a contrastive MMModel
    loaded from the same folder and saved again still serves every pipeline (with an untrained decoder)."""
    code = PIPELINES + f"""
import shutil
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
source, target = {str(saved)!r}, {str(tmp_path)!r}
processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
for auto_class, name in ((AutoModelForImageTextToText, "/captioner"), (AutoModel, "/contrastive")):
    auto_class.from_pretrained(source, trust_remote_code=True).save_pretrained(target + name)
    processor.save_pretrained(target + name)
for name in ("image0.png", "image1.png", "clip0.wav", "clip1.wav"):
    shutil.copy(source + "/" + name, target + "/captioner")
check(target + "/captioner", {CAPTIONS[:2]!r})

folder = target + "/contrastive"
image = Image.new("RGB", (32, 32), "red")
out = pipeline("image-to-text", model=folder, trust_remote_code=True)(image, max_new_tokens=3)
assert isinstance(out[0]["generated_text"], str), out
out = pipeline("image-text-to-text", model=folder, trust_remote_code=True)(images=image, text="a", max_new_tokens=3)
assert isinstance(out[0]["generated_text"], str), out
transcriber = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
out = transcriber(np.zeros(8000, np.float32), max_new_tokens=3)
assert isinstance(out["text"], str), out
print("RESAVED OK")
"""
    assert "RESAVED OK" in run_clean(code, cwd=tmp_path)

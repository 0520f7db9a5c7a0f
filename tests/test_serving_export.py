"""Smaller and faster: `mm-export` (ONNX, dynamo exporter) matches PyTorch within 1e-4 in ONNX Runtime and is served
with `--backend onnx`, and its `--int8` files keep cosine >= 0.99 and are served with `--backend onnx-int8`; int8
dynamic quantization keeps cosine >= 0.99 to fp32 and the same retrieval ranking, and is served with `--backend int8`.
(Only the image tower is exported here: each export takes ~15-40 s on this CPU; the benchmark exports all three, see
benchmarks/bench_export.py.)"""

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving_testers import b64, png_bytes

from serving_mm import export
from serving_mm.app import create_app
from serving_mm.runner import load_runner


@pytest.fixture(scope="module")
def fp32(trained_clip):
    return load_runner(str(trained_clip.folder))


def cosine(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_onnx_export_matches_pytorch_and_is_served(trained_clip, fp32, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(trained_clip.folder, checkpoint)
    differences = export.main([str(checkpoint), "--towers", "image", "--int8"])
    assert differences["image"] <= export.PARITY_ATOL
    assert 0.99 <= differences["image-int8"] < 1 - 1e-7  # int8, not a copy of the fp32 file
    assert "image: " in capsys.readouterr().out and (checkpoint / "onnx" / "image.onnx").is_file()
    int8_file, fp32_file = checkpoint / "onnx-int8" / "image.onnx", checkpoint / "onnx" / "image.onnx"
    assert int8_file.stat().st_size < fp32_file.stat().st_size

    onnx = load_runner(str(checkpoint), backend="onnx")
    np.testing.assert_allclose(onnx.embed_images(trained_clip.images), fp32.embed_images(trained_clip.images), atol=1e-4)
    with TestClient(create_app(onnx)) as client:
        assert client.get("/ready").json()["backend"] == "onnx"
        assert client.get("/info").json()["onnx_towers"] == ["image"]  # text and audio stay in PyTorch
        response = client.post("/embed/image", json={"images": [b64(png_bytes(trained_clip.images[1]))]})
        np.testing.assert_allclose(response.json()["embeddings"], fp32.embed_images(trained_clip.images[1:2]), atol=1e-4)
    with pytest.raises(FileNotFoundError, match="mm-export"):
        load_runner(str(trained_clip.folder), backend="onnx")

    onnx_int8 = load_runner(str(checkpoint), backend="onnx-int8")
    full, quantized = fp32.embed_images(trained_clip.images), onnx_int8.embed_images(trained_clip.images)
    assert cosine(full, quantized).min() >= 0.99
    assert (fp32.embed_text(trained_clip.captions) @ quantized.T).argmax(axis=1).tolist() == list(range(6))
    with TestClient(create_app(onnx_int8)) as client:
        assert client.get("/ready").json()["backend"] == "onnx-int8"
    with pytest.raises(FileNotFoundError, match="--int8"):
        load_runner(str(trained_clip.folder), backend="onnx-int8")


def test_int8_keeps_the_embeddings_and_the_ranking(trained_clip, fp32):
    int8 = load_runner(str(trained_clip.folder), backend="int8")
    pairs = {
        "text": (fp32.embed_text(trained_clip.captions), int8.embed_text(trained_clip.captions)),
        "image": (fp32.embed_images(trained_clip.images), int8.embed_images(trained_clip.images)),
        "audio": (fp32.embed_audio(trained_clip.audio), int8.embed_audio(trained_clip.audio)),
    }
    for name, (full, quantized) in pairs.items():
        assert cosine(full, quantized).min() >= 0.99, name
        assert not np.allclose(full, quantized, atol=1e-6), f"{name}: int8 should not be bit-identical to fp32"
    for gallery in ("image", "audio"):  # text->gallery recall@1 of int8 equals fp32's (all six right)
        for texts, items in (pairs["text"][0], pairs[gallery][0]), (pairs["text"][1], pairs[gallery][1]):
            assert ((texts @ items.T).argmax(axis=1) == np.arange(6)).all()
    assert export.model_bytes(int8.model) < 0.6 * export.model_bytes(fp32.model)  # linear weights take a quarter
    with TestClient(create_app(int8)) as client:
        assert client.get("/ready").json()["backend"] == "int8"


def test_captioner_decoder_step_exports_and_greedy_decoding_matches_pytorch(tmp_path):
    """`mm-export` on a captioner writes its encoders and a decoder step with explicit key/value inputs and outputs;
    greedy decoding from them writes PyTorch's tokens on the test scenes, and `--backend onnx` serves those captions.
    (The image encoder only, to keep the test short; `mm-export` exports both and checks both.)"""
    from test_generation import CAPTIONS, media, trained_captioner

    from serving_mm.export_captioner import STEP_FILE, OnnxCaptioner, caption_agreement, export_captioner

    model, processor, image_batch, _, images, _ = trained_captioner()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert export_captioner(model, tmp_path / "onnx", {"image": media(image_batch)}) == {"image": 0}
    step = OnnxCaptioner(tmp_path / "onnx", model.generation_config)
    inputs = [spec.name for spec in step.step.get_inputs()]
    outputs = [spec.name for spec in step.step.get_outputs()]
    assert inputs[4:6] == ["past_key_0", "past_value_0"] and outputs[:3] == ["logits", "present_key_0", "present_value_0"]
    pixels = image_batch["pixel_values"]
    expected = model.generate(pixel_values=pixels, do_sample=False, num_beams=1).numpy()
    np.testing.assert_array_equal(step.generate("image", pixels.numpy()), expected)
    np.testing.assert_array_equal(step.generate("image", pixels[2:3].numpy()), expected[2:3, : expected[2].tolist().index(2) + 1])
    assert (tmp_path / "onnx" / STEP_FILE).is_file()
    # mm-export --int8's version of the encoder and decoder step: ONNX Runtime's int8 weights still write the six
    # learned captions token for token.
    export.quantize_onnx_int8(tmp_path / "onnx", tmp_path / "onnx-int8")
    assert caption_agreement(model, tmp_path / "onnx-int8", {"image": media(image_batch)}) == {"image": (0, 1.0)}

    runner = load_runner(str(tmp_path), backend="onnx")
    runner.captioner.generate = lambda *args, **kwargs: pytest.fail("captioned in PyTorch, not ONNX Runtime")
    with TestClient(create_app(runner)) as client:
        assert client.get("/info").json()["onnx_towers"] == ["captioner"]
        response = client.post("/caption", json={"image": b64(png_bytes(images[4]))})
        assert response.status_code == 200 and response.json()["text"] == CAPTIONS[4]

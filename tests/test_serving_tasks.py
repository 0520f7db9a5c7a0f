"""mm-serve with the checkpoints that are not embedding models (FastAPI TestClient): a fusion classifier on
`/classify`, a text-to-speech model on `/speech` and a diffusers text-to-image pipeline on `/generate`, each with good
and bad input; the endpoints a checkpoint cannot serve answer 404."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serving_testers import b64, png_bytes, tone, wav_bytes
from testers import tiny_processor

from configuration_mm import MMConfig
from modeling_mm import MMForClassification
from serving_mm.app import create_app
from serving_mm.runner import load_runner

TASKS = {
    "colour": {"problem_type": "single_label_classification", "labels": ["red", "green", "blue"]},
    "tags": {"problem_type": "multi_label_classification", "labels": ["round", "small"]},
}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    processor = tiny_processor()
    torch.manual_seed(0)
    config = MMConfig.from_preset("tiny", text_config={"vocab_size": len(processor.tokenizer)}, tasks=TASKS)
    model = MMForClassification(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, load_runner(str(folder))


@pytest.fixture(scope="module")
def classifier_client(classifier):
    with TestClient(create_app(classifier[2], max_wait_ms=50)) as client:
        yield client


def expected_scores(model, processor, **inputs):
    """{task: {label: score}} straight from the model, for one item."""
    with torch.no_grad():
        out = model(**processor(**inputs, return_tensors="pt"))
    scores = {}
    for task, logits in out.task_logits.items():
        activation = torch.softmax if TASKS[task]["problem_type"] == "single_label_classification" else torch.sigmoid
        values = activation(logits[0], -1) if activation is torch.softmax else activation(logits[0])
        scores[task] = dict(zip(TASKS[task]["labels"], values.tolist()))
    return scores


def test_a_fusion_classifier_answers_its_own_classes_for_any_mix_of_modalities(classifier, classifier_client):
    model, processor, _ = classifier
    image, clip = Image.new("RGB", (32, 32), (200, 30, 30)), tone(440, 0.4)
    requests = [
        ({"text": "a red circle", "image": b64(png_bytes(image))}, dict(text=["a red circle"], images=[image])),
        ({"audio": b64(wav_bytes(clip))}, dict(audio=[clip], sampling_rate=16000)),
        ({"text": "a blue star"}, dict(text=["a blue star"])),
    ]
    # Sent together: the batcher groups them, the runner runs one forward call per set of modalities.
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda r: classifier_client.post("/classify", json=r[0]), requests))
    for response, (_, inputs) in zip(responses, requests):
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        expected = expected_scores(model, processor, **inputs)
        for task in TASKS:
            got = {p["label"]: p["score"] for p in predictions[task]}
            assert list(got) == sorted(expected[task], key=expected[task].get, reverse=True)  # best first
            np.testing.assert_allclose([got[k] for k in expected[task]], list(expected[task].values()), atol=2e-4)
    form = classifier_client.post("/classify", data={"text": "a blue star"})
    assert form.json() == responses[2].json()
    assert classifier_client.get("/ready").json()["capabilities"] == ["classify"]


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({}, "text/image/audio", "at least one"),
        ({"text": "  "}, "text", "empty"),
        ({"image": "bm90IGFuIGltYWdl"}, "image", "could not be decoded"),
        ({"audio": b64(wav_bytes(tone(440, 0.3, 8000), 8000))}, "audio", "8000 Hz"),
        ({"text": "a red circle", "labels": ["red"]}, "labels", "own classes"),
    ],
)
def test_bad_classifier_input_gets_a_422_naming_the_field(classifier_client, body, field, words):
    response = classifier_client.post("/classify", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and words in response.json()["detail"]


def test_a_classifier_does_not_embed_speak_or_generate(classifier_client):
    for path, body in (("/embed/text", {"texts": ["a"]}), ("/speech", {"text": "a"}), ("/generate", {"prompt": "a"})):
        response = classifier_client.post(path, json=body)
        assert response.status_code == 404 and "['classify']" in response.json()["detail"], response.text


@pytest.fixture(scope="module")
def speaker(tmp_path_factory):
    from test_text_to_speech import tiny_model

    folder = tmp_path_factory.mktemp("speech")
    model, _ = tiny_model()
    processor = tiny_processor()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor.tokenizer, load_runner(str(folder))


def test_speech_returns_the_models_waveform_as_wav_and_refuses_bad_text(speaker):
    model, tokenizer, runner = speaker
    with TestClient(create_app(runner)) as client:
        response = client.post("/speech", json={"text": "a red circle"})
        assert response.status_code == 200, response.text
        assert response.json()["sampling_rate"] == 16000 and response.json()["format"] == "wav"
        samples, rate = soundfile.read(io.BytesIO(base64.b64decode(response.json()["audio"])), dtype="float32")
        expected = model.generate_speech(**tokenizer(["a red circle"], return_tensors="pt"))
        assert rate == 16000 and len(samples) == int(expected.waveform_lengths[0]) > 0
        np.testing.assert_allclose(samples, expected.waveform[0, : len(samples)].numpy(), atol=1e-5)
        assert client.post("/speech", data={"text": "a red circle"}).json() == response.json()  # multipart

        for body, field, words in (
            ({"text": ""}, "text", "empty"),
            ({}, "text", "missing"),
            ({"text": "red " * 60}, "text", "tokens long"),
        ):
            bad = client.post("/speech", json=body)
            assert bad.status_code == 422 and bad.json()["field"] == field and words in bad.json()["detail"], bad.text
        assert client.post("/caption", json={"image": b64(png_bytes(Image.new("RGB", (32, 32))))}).status_code == 404
        assert client.get("/ready").status_code == 200


@pytest.fixture(scope="module")
def painter(tmp_path_factory):
    from test_text_to_image import tiny_pipeline

    folder = tmp_path_factory.mktemp("text_to_image")
    pipe = tiny_pipeline()
    pipe.save_pretrained(folder)
    return pipe, load_runner(str(folder)), folder


def test_generate_returns_the_pipelines_seeded_image_and_refuses_bad_settings(painter):
    pipe, runner, folder = painter
    settings = {"prompt": "a red circle", "num_inference_steps": 2, "guidance_scale": 3.0, "seed": 7}
    with TestClient(create_app(runner)) as client:
        response = client.post("/generate", json=settings)
        assert response.status_code == 200, response.text
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))))
        expected = pipe(
            ["a red circle"], num_inference_steps=2, guidance_scale=3.0, generator=[torch.Generator().manual_seed(7)]
        ).images[0]
        assert image.shape == (16, 16, 3)
        np.testing.assert_array_equal(image, np.asarray(expected))
        again = client.post("/generate", json=settings).json()["image"]
        other = client.post("/generate", json={**settings, "seed": 8}).json()["image"]
        assert again == response.json()["image"] and other != again

        for change, field, words in (
            ({"prompt": " "}, "prompt", "empty"),
            ({"prompt": "red " * 60}, "prompt", "tokens long"),
            ({"num_inference_steps": 0}, "num_inference_steps", "from 1 to"),
            ({"guidance_scale": -1}, "guidance_scale", "from 0.0 to"),
            ({"guidance_scale": "lots"}, "guidance_scale", "number"),
            ({"seed": -3}, "seed", "integer"),
        ):
            bad = client.post("/generate", json={**settings, **change})
            assert bad.status_code == 422 and bad.json()["field"] == field and words in bad.json()["detail"], bad.text
        assert client.post("/speech", json={"text": "a"}).status_code == 404
        assert client.get("/info").json()["capabilities"] == ["generate"]
    with pytest.raises(ValueError, match="--backend torch"):
        load_runner(str(folder), backend="int8")

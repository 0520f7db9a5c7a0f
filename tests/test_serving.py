"""mm-serve's app (FastAPI TestClient) on a session-trained tiny model: every endpoint with good and bad input,
dynamic batching (merged requests counted by forward calls, the wait cap on an injected clock, the 503 queue
limit), metrics, and captioning with a captioner checkpoint."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving_testers import b64, png_bytes, tone, wav_bytes

from serving_mm.app import create_app
from serving_mm.batching import DynamicBatcher, QueueFull
from serving_mm.runner import load_runner


@pytest.fixture(scope="module")
def runner(trained_clip):
    return load_runner(str(trained_clip.folder))


@pytest.fixture
def client(runner):
    with TestClient(create_app(runner)) as client:
        yield client


def embeddings(response):
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"])


def test_health_ready_info_and_ready_fails_before_the_worker_starts(runner):
    app = create_app(runner)
    cold = TestClient(app)  # no `with`: the lifespan (which starts the worker) has not run
    assert cold.get("/health").json() == {"status": "ok"}
    assert cold.get("/ready").status_code == 503
    with TestClient(app) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["capabilities"] == ["text", "image", "audio"]
        assert client.get("/info").json()["embedding_dim"] == 32


def test_text_embeddings_json_and_multipart_match_the_model(client, runner, trained_clip):
    expected = runner.embed_text(trained_clip.captions[:2])
    by_json = embeddings(client.post("/embed/text", json={"texts": trained_clip.captions[:2]}))
    by_form = embeddings(client.post("/embed/text", data={"texts": trained_clip.captions[:2]}))
    np.testing.assert_allclose(by_json, expected, atol=1e-5)
    np.testing.assert_allclose(by_form, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(by_json, axis=1), 1.0, atol=1e-5)


def test_image_and_audio_embeddings_json_and_multipart_match_the_model(client, runner, trained_clip):
    image, clip = trained_clip.images[0], trained_clip.audio[0]
    by_json = embeddings(client.post("/embed/image", json={"images": [b64(png_bytes(image))]}))
    by_form = embeddings(client.post("/embed/image", files={"images": ("a.png", png_bytes(image), "image/png")}))
    np.testing.assert_allclose(by_json, runner.embed_images([image]), atol=1e-5)
    np.testing.assert_allclose(by_form, by_json, atol=1e-6)
    by_json = embeddings(client.post("/embed/audio", json={"audio": [b64(wav_bytes(clip))]}))
    by_form = embeddings(client.post("/embed/audio", files={"audio": ("a.wav", wav_bytes(clip), "audio/wav")}))
    np.testing.assert_allclose(by_json, runner.embed_audio([clip]), atol=1e-4)  # WAV is 16-bit: a rounding step
    np.testing.assert_allclose(by_form, by_json, atol=1e-6)


def test_zero_shot_classification_puts_the_right_caption_first(client, trained_clip):
    labels = trained_clip.captions
    for i in (1, 4):
        response = client.post("/classify", json={"labels": labels, "image": b64(png_bytes(trained_clip.images[i]))})
        assert response.status_code == 200, response.text
        assert response.json()["labels"][0] == labels[i]
        assert abs(sum(response.json()["scores"]) - 1) < 1e-5
        form = {"labels": labels}
        response = client.post("/classify", data=form, files={"audio": ("c.wav", wav_bytes(trained_clip.audio[i]))})
        assert response.status_code == 200, response.text
        assert response.json()["labels"][0] == labels[i]


@pytest.mark.parametrize(
    "path, body, status, field, words",
    [
        ("/embed/text", {"texts": ["a red circle", "  "]}, 422, "texts[1]", "empty"),
        ("/embed/text", {"texts": []}, 422, "texts", "empty list"),
        ("/embed/text", {"text": "a red circle"}, 422, "texts", "missing"),
        ("/embed/text", {"texts": [3]}, 422, "texts[0]", "expected a string"),
        ("/embed/image", {"images": ["bm90IGFuIGltYWdl"]}, 422, "images[0]", "could not be decoded as an image"),
        ("/embed/image", {"images": ["%%%"]}, 422, "images[0]", "not valid base64"),
        ("/embed/audio", {"audio": ["bm90IGF1ZGlv"]}, 422, "audio[0]", "could not be decoded as audio"),
        ("/embed/audio", {"audio": ["8kHz"]}, 422, "audio[0]", "8000 Hz"),
        ("/classify", {"labels": ["a"], "image": "IMG", "audio": "8kHz"}, 422, "image/audio", "exactly one"),
        ("/classify", {"image": "IMG"}, 422, "labels", "missing"),
        ("/caption", {"image": "IMG"}, 404, None, "cannot caption"),
        ("/search", {"text": "a red circle"}, 404, None, "No index is loaded"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(client, trained_clip, path, body, status, field, words):
    media = {"IMG": b64(png_bytes(trained_clip.images[0])), "8kHz": b64(wav_bytes(tone(440, 0.5, 8000), 8000))}
    body = {key: [media.get(v, v) for v in value] if isinstance(value, list) else media.get(value, value) for key, value in body.items()}
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    if field is not None:
        assert response.json()["detail"].startswith(f"{field}: ") and response.json()["field"] == field


def test_undecodable_upload_non_json_and_too_large_bodies_get_4xx(runner):
    with TestClient(create_app(runner, max_body_bytes=2000)) as client:
        response = client.post("/embed/image", files={"images": ("x.png", b"\x89PNG broken", "image/png")})
        assert response.status_code == 422 and response.json()["field"] == "images[0]"
        response = client.post("/embed/text", content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]
        response = client.post("/embed/text", json={"texts": ["a red circle " * 200]})
        assert response.status_code == 413 and "limit of 2,000" in response.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced on the bytes received
            for _ in range(10):
                yield b" " * 500

        response = client.post("/embed/text", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and "--max_body_bytes" in response.json()["detail"]
        assert client.get("/ready").status_code == 200  # the worker survived all of it


def test_concurrent_requests_are_merged_into_one_forward_call(runner, trained_clip):
    calls = []
    counted = _wrap(runner, "embed_text", lambda texts: calls.append(len(texts)))
    # Eight requests, a batch of eight and a long wait cap: the batch closes when the eighth arrives.
    with TestClient(create_app(counted, max_batch_size=8, max_wait_ms=30_000)) as client:
        texts = [trained_clip.captions[i % 6] for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda t: client.post("/embed/text", json={"texts": [t]}), texts))
        assert calls == [8]
        got = np.concatenate([embeddings(r) for r in responses])
        np.testing.assert_allclose(got, runner.embed_text(texts), atol=1e-5)  # each request got its own row
        metrics = client.get("/metrics").text
        assert 'mm_batch_size_sum{kind="text"} 8.0' in metrics and 'mm_batch_size_count{kind="text"} 1.0' in metrics
        assert 'mm_requests_total{endpoint="/embed/text",status="200"} 8.0' in metrics
        assert "mm_queue_depth 0.0" in metrics and "mm_request_seconds_bucket" in metrics
    calls.clear()
    with TestClient(create_app(counted, max_batch_size=1)) as client:  # batching off: one call per request
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda t: client.post("/embed/text", json={"texts": [t]}), texts[:4]))
    assert calls == [1, 1, 1, 1]


class FakeClock:
    """Time that moves only when the batcher waits: the wake-up times it asks for are recorded instead of slept;
    `arrivals` submits items at given times (the clock then moves in 2 ms steps)."""

    def __init__(self):
        self.now, self.waits, self.arrivals = 0.0, [], {}

    def __call__(self):
        return self.now

    def wait(self, condition, timeout):
        self.waits.append(round(self.now + timeout, 6))  # when the batcher asked to be woken at the latest
        self.now += timeout if not self.arrivals else 0.002
        for submit in self.arrivals.pop(round(self.now, 6), []):
            submit()


def test_no_item_waits_longer_than_the_cap_and_later_arrivals_join_the_batch():
    clock = FakeClock()
    batches = []
    batcher = DynamicBatcher(
        {"x": lambda xs: batches.append(list(xs)) or xs}, max_batch_size=4, max_wait_s=0.01, clock=clock, wait=clock.wait
    )
    batcher.submit("x", "a")
    assert batcher.run_once() == 1
    assert batches == [["a"]] and clock.waits == [0.01] and clock.now == pytest.approx(0.01)  # waited the cap, once

    clock.now, clock.waits = 0.0, []
    batcher.submit("x", "b")
    clock.arrivals = {0.002: [lambda: batcher.submit("x", "c")], 0.004: [lambda: batcher.submit("x", "d")]}
    batcher.run_once()  # "c" and "d" arrive while "b" waits, then the cap passes before a fourth item
    assert batches[-1] == ["b", "c", "d"]
    assert clock.now == pytest.approx(0.01) and max(clock.waits) == pytest.approx(0.01)  # never past b's deadline

    clock.waits = []
    for item in "efgh":
        batcher.submit("x", item)
    batcher.submit("x", "i")
    batcher.run_once()  # a full batch runs without waiting at all
    assert batches[-1] == list("efgh") and clock.waits == [] and batcher.depth == 1


def test_one_bad_item_fails_alone_and_kinds_are_batched_apart():
    def handler(items):
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    batcher = DynamicBatcher({"x": handler, "y": handler}, max_batch_size=8, max_wait_s=0)
    good, bad, other = batcher.submit("x", "ok"), batcher.submit("x", "bad"), batcher.submit("y", "why")
    assert batcher.run_once() == 2 and good.result() == "OK"
    with pytest.raises(ValueError, match="bad item"):
        bad.result()
    assert batcher.run_once() == 1 and other.result() == "WHY"


def test_a_full_queue_answers_503_and_the_server_recovers(runner, trained_clip):
    entered, release = threading.Event(), threading.Event()
    blocking = _wrap(runner, "embed_text", lambda texts: (entered.set(), release.wait(30)))
    app = create_app(blocking, max_batch_size=1, max_queue=2)
    with TestClient(app) as client, ThreadPoolExecutor(3) as pool:
        post = lambda: client.post("/embed/text", json={"texts": [trained_clip.captions[0]]})  # noqa: E731
        first = pool.submit(post)
        assert entered.wait(30)  # the worker is busy with the first request
        queued = [pool.submit(post) for _ in range(2)]
        while app.state.batcher.depth < 2:
            threading.Event().wait(0.01)
        refused = post()
        assert refused.status_code == 503 and "max_queue=2" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"
        release.set()
        assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]
        assert 'status="503"} 1.0' in client.get("/metrics").text


def test_a_value_error_from_the_processor_is_a_422_and_the_worker_lives_on(runner):
    def refuse(texts):
        if "too long" in texts:
            raise ValueError("Text 0 is 99 tokens long, more than the limit of 32")

    with TestClient(create_app(_wrap(runner, "embed_text", refuse))) as client:
        response = client.post("/embed/text", json={"texts": ["too long"]})
        assert response.status_code == 422 and "more than the limit of 32" in response.json()["detail"]
        assert client.post("/embed/text", json={"texts": ["a red circle"]}).status_code == 200


def test_queue_full_is_raised_by_the_batcher_itself():
    batcher = DynamicBatcher({"x": list}, max_queue=1)
    batcher.submit("x", 1)
    with pytest.raises(QueueFull, match="max_queue=1"):
        batcher.submit("x", 2)


def test_a_captioner_checkpoint_serves_caption_and_transcribe(tmp_path):
    from test_generation import CAPTIONS, trained_captioner

    model, processor, _, _, images, audio = trained_captioner()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    runner = load_runner(str(tmp_path))
    assert runner.capabilities == ["text", "image", "audio", "caption"]
    with TestClient(create_app(runner)) as client:
        response = client.post("/caption", json={"image": b64(png_bytes(images[2]))})
        assert response.status_code == 200, response.text
        assert response.json()["text"] == CAPTIONS[2]
        response = client.post("/transcribe", files={"audio": ("c.wav", wav_bytes(audio[3]))})
        assert response.status_code == 200 and response.json()["text"] == CAPTIONS[3]
        assert client.post("/transcribe", json={"image": b64(png_bytes(images[0]))}).json()["field"] == "audio"


def _wrap(runner, method, before):
    """A copy of `runner` whose `method` calls `before(items)` first (to count or block forward calls)."""
    import copy

    wrapped = copy.copy(runner)
    original = getattr(runner, method)

    def call(items):
        before(items)
        return original(items)

    setattr(wrapped, method, call)
    return wrapped

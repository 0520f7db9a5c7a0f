"""Search over a collection: `mm-index build/add` on the session-trained model's images and tones, the server's
/search endpoint (text->image, text->audio, image->image; JSON and multipart), /items, and the HNSW index."""

import csv
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving_testers import b64, png_bytes, wav_bytes

from serving_mm import collection
from serving_mm.app import create_app
from serving_mm.index import EmbeddingIndex, load_indexes
from serving_mm.runner import load_runner


@pytest.fixture(scope="module")
def index_dir(trained_clip, tmp_path_factory):
    output = tmp_path_factory.mktemp("index")
    collection.main(["build", str(trained_clip.folder), str(trained_clip.media), "--output", str(output)])
    return output


@pytest.fixture(scope="module")
def client(trained_clip, index_dir):
    with TestClient(create_app(load_runner(str(trained_clip.folder)), index_dir=index_dir)) as client:
        yield client


def test_build_writes_an_exact_index_per_modality_with_captions(index_dir, trained_clip):
    indexes, info = load_indexes(index_dir)
    assert sorted(indexes) == ["audio", "image"] and info["checkpoint"] == str(trained_clip.folder)
    assert {m: (e["kind"], e["count"]) for m, e in info["modalities"].items()} == {"image": ("exact", 6), "audio": ("exact", 6)}
    assert [row["caption"] for row in indexes["image"].metadata] == trained_clip.captions


def test_search_text_to_image_and_audio_and_image_to_image(client, trained_clip):
    for i, caption in enumerate(trained_clip.captions):
        for modality in ("image", "audio"):
            response = client.post("/search", json={"text": caption, "modality": modality, "k": 3})
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert len(results) == 3 and results[0]["caption"] == caption, (modality, results)
            assert results[0]["score"] >= results[1]["score"]
    query = b64(png_bytes(trained_clip.images[2]))
    best = client.post("/search", json={"image": query, "modality": "image"}).json()["results"][0]
    assert best["file"] == "images/2.png" and best["score"] == pytest.approx(1.0, abs=1e-4)
    upload = {"image": ("q.png", png_bytes(trained_clip.images[4]), "image/png")}
    best = client.post("/search", data={"modality": "image", "k": "2"}, files=upload).json()["results"][0]
    assert best["file"] == "images/4.png"
    best = client.post("/search", json={"audio": b64(wav_bytes(trained_clip.audio[1])), "modality": "audio"})
    assert best.json()["results"][0]["file"] == "audio/1.wav"


def test_items_serves_the_indexed_file_and_bad_search_input_gets_4xx(client, trained_clip):
    response = client.get("/items/image/3")
    assert response.status_code == 200 and response.content == (trained_clip.media / "images" / "3.png").read_bytes()
    assert client.get("/items/image/99").status_code == 404
    response = client.post("/search", json={"text": "a red circle", "modality": "video"})
    assert response.status_code == 422 and response.json()["field"] == "modality"
    response = client.post("/search", json={"text": "a red circle", "k": 0})
    assert response.status_code == 422 and response.json()["field"] == "k"
    response = client.post("/search", json={"modality": "image"})
    assert response.status_code == 422 and "text, image or audio" in response.json()["detail"]
    assert client.get("/info").json()["indexes"] == {"image": 6, "audio": 6}


def test_add_extends_an_index_without_rebuilding_it(trained_clip, tmp_path, capsys):
    with open(tmp_path / "first.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "caption"])
        for i in range(3):
            writer.writerow([str(trained_clip.media / "images" / f"{i}.png"), trained_clip.captions[i]])
    more = tmp_path / "more"
    more.mkdir()
    for i in range(3, 6):
        shutil.copy(trained_clip.media / "images" / f"{i}.png", more / f"extra{i}.png")
    (more / "broken.png").write_bytes(b"not a png")  # skipped with a warning, not a crash
    collection.main(["build", str(trained_clip.folder), str(tmp_path / "first.csv"), "--output", str(tmp_path / "ix")])
    before = EmbeddingIndex.load(tmp_path / "ix", "image")
    collection.main(["add", str(tmp_path / "ix"), str(more)])
    after = EmbeddingIndex.load(tmp_path / "ix", "image")
    assert len(before) == 3 and len(after) == 6
    np.testing.assert_array_equal(after.index.reconstruct_n(0, 3), before.index.reconstruct_n(0, 3))
    assert [row["file"] for row in after.metadata[3:]] == ["extra3.png", "extra4.png", "extra5.png"]
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["modalities"]["image"]["count"] == 6
    runner = load_runner(str(trained_clip.folder))
    hits = after.search(runner.embed_text([trained_clip.captions[5]]), k=1)[0]
    assert after.metadata[hits[0][0]]["file"] == "extra5.png"
    assert "added 3, now 6 items" in capsys.readouterr().out


def test_large_collections_get_hnsw_with_its_recall_printed(trained_clip, tmp_path, capsys):
    collection.main(
        ["build", str(trained_clip.folder), str(trained_clip.media), "--output", str(tmp_path), "--exact_threshold", "4"]
    )
    out = capsys.readouterr().out
    assert "image: 6 items, hnsw index" in out and "recall@10 vs exact search 1.000" in out
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = EmbeddingIndex.build(vectors[:2000], [{"i": i} for i in range(2000)], exact_threshold=1000)
    assert index.kind == "hnsw" and index.recall_at_10(vectors[:2000], num_queries=200) > 0.9
    graph = index.index
    index.add(vectors[2000:], [{"i": i} for i in range(2000, 3000)])
    assert index.index is graph and len(index) == 3000  # the same graph, extended
    assert index.search(vectors[2500:2501], k=1)[0][0][0] == 2500

"""Search over a collection: FAISS indexes of an mm model's image or audio embeddings, with their metadata.

An index folder holds, per modality, `<modality>.faiss` (FAISS's own format, not pickle), `<modality>.jsonl` (one
metadata row per vector, in order: the file and its caption if any) and `index.json` (the checkpoint, embedding size
and index kind). Collections below `exact_threshold` items get an exact inner-product index (`IndexFlatIP`, cosine on
normalised embeddings); larger ones an HNSW graph, whose recall@10 against exact search is measured when it is built.
HNSW takes new vectors without retraining, so `EmbeddingIndex.add` never rebuilds. See `mm-index --help`.
"""

import json
from pathlib import Path

import faiss
import numpy as np

from training_mm.collators import MEDIA

EXACT_THRESHOLD = 20_000
HNSW_NEIGHBOURS = 32  # graph degree M; with efSearch 128 recall@10 stays high at 100k items of 128-d embeddings
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
RECALL_QUERIES = 1000  # stored vectors used as queries to measure an approximate index's recall@10


class EmbeddingIndex:
    """The vectors and metadata of one modality of a collection.

    Args:
        index: a FAISS index over L2-normalised float32 embeddings (inner product = cosine).
        metadata: one dict per vector, in insertion order (e.g. {"file": "cat.png", "caption": "a cat"}).
    """

    def __init__(self, index, metadata: list[dict]):
        if index.ntotal != len(metadata):
            raise ValueError(f"The index holds {index.ntotal} vectors but there are {len(metadata)} metadata rows.")
        self.index = index
        self.metadata = metadata

    @property
    def kind(self) -> str:
        return "hnsw" if isinstance(self.index, faiss.IndexHNSW) else "exact"

    def __len__(self):
        return self.index.ntotal

    @classmethod
    def build(cls, embeddings: np.ndarray, metadata: list[dict], exact_threshold: int = EXACT_THRESHOLD):
        """An exact index for fewer than `exact_threshold` items, an HNSW index otherwise."""
        embeddings = _float32(embeddings)
        dim = embeddings.shape[1]
        if len(embeddings) < exact_threshold:
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
        index.add(embeddings)
        return cls(index, list(metadata))

    def add(self, embeddings: np.ndarray, metadata: list[dict]):
        """Appends vectors and their metadata; the existing index is extended, not rebuilt."""
        embeddings = _float32(embeddings)
        if len(embeddings) != len(metadata):
            raise ValueError(f"{len(embeddings)} embeddings but {len(metadata)} metadata rows.")
        if embeddings.shape[1] != self.index.d:
            raise ValueError(f"The embeddings have {embeddings.shape[1]} dimensions; this index holds {self.index.d}.")
        self.index.add(embeddings)
        self.metadata.extend(metadata)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[int, float]]]:
        """For each query, up to `k` (row, cosine similarity) pairs, best first."""
        scores, rows = self.index.search(_float32(queries), min(k, len(self)))
        return [[(int(r), float(s)) for r, s in zip(row, score) if r >= 0] for row, score in zip(rows, scores)]

    def recall_at_10(self, embeddings: np.ndarray, num_queries: int = RECALL_QUERIES, seed: int = 0) -> float:
        """The fraction of exact search's 10 nearest neighbours that this index returns, averaged over
        `num_queries` of the stored `embeddings` used as queries (1.0 for an exact index)."""
        embeddings = _float32(embeddings)
        rng = np.random.default_rng(seed)
        queries = embeddings[rng.choice(len(embeddings), min(num_queries, len(embeddings)), replace=False)]
        exact = faiss.IndexFlatIP(embeddings.shape[1])
        exact.add(embeddings)
        k = min(10, len(embeddings))
        _, truth = exact.search(queries, k)
        _, found = self.index.search(queries, k)
        return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)]))

    def save(self, folder, modality: str):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / f"{modality}.faiss"))
        with open(folder / f"{modality}.jsonl", "w", encoding="utf-8") as file:
            for row in self.metadata:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder, modality: str):
        folder = Path(folder)
        index = faiss.read_index(str(folder / f"{modality}.faiss"))
        with open(folder / f"{modality}.jsonl", encoding="utf-8") as file:
            metadata = [json.loads(line) for line in file if line.strip()]
        return cls(index, metadata)


def load_indexes(folder) -> tuple[dict[str, EmbeddingIndex], dict]:
    """The indexes of every modality in an index folder, and its `index.json`."""
    folder = Path(folder)
    info_path = folder / "index.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{folder} is not an index folder (no index.json); build one with `mm-index build`.")
    info = json.loads(info_path.read_text())
    return {m: EmbeddingIndex.load(folder, m) for m in MEDIA if (folder / f"{m}.faiss").is_file()}, info


def _float32(array) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"Expected a (n, dim) array of embeddings, got shape {array.shape}.")
    return array

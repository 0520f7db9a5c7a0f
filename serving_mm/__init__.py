"""Serving, search and export of mm checkpoints: `mm-serve` (a FastAPI app with dynamic batching), `mm-index` (FAISS
indexes of a collection) and `mm-export` (ONNX towers, int8 quantization).

Import the submodules directly (e.g. `from serving_mm.app import create_app`). Needs the `serve` extra:
`pip install -e ".[serve]"`.
"""

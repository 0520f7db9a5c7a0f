"""The FastAPI app that serves one mm checkpoint: embeddings, zero-shot classification, captions, search, a web page.

Every model call goes through one `DynamicBatcher` (one model copy; requests arriving together run as one batch).
Inputs come as JSON (texts, base64 media) or as multipart uploads with the same field names. Endpoints:

    GET  /health, /ready, /metrics (Prometheus), /info, / (the search page)
    POST /embed/text {"texts": [...]}        /embed/image {"images": [b64, ...]}   /embed/audio {"audio": [b64, ...]}
    POST /classify {"labels": [...], "image": b64 | "audio": b64}
    POST /caption {"image": b64 | "audio": b64}, /transcribe {"audio": b64}     (captioner checkpoints)
    POST /classify {"text": ..., "image": b64, "audio": b64} (any of them)      (fusion classifier checkpoints)
    POST /speech {"text": "..."} -> base64 WAV                                 (text-to-speech checkpoints)
    POST /generate {"prompt": "...", "num_inference_steps", "guidance_scale", "seed"} -> base64 PNG
                                                                               (text-to-image pipeline folders)
    POST /search {"text": "..." | "image": b64 | "audio": b64, "modality": "image" | "audio", "k": 10}
    GET  /items/{modality}/{row}               (an indexed file, for the page's thumbnails and players)

Bad input answers 4xx with `{"detail": "<field>: <problem>"}`; a full queue answers 503.
"""

import asyncio
import base64
import time
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from training_mm.collators import MEDIA

from .batching import DynamicBatcher, QueueFull
from .index import load_indexes
from .media import InputError, as_list, check_text, decode_audio, decode_image, from_base64
from .runner import CapabilityError
from .task_runners import MAX_GUIDANCE_SCALE, MAX_INFERENCE_STEPS

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_ITEMS = 64  # per request; larger jobs belong to mm-index
MAX_K = 100


def create_app(
    runner,
    index_dir=None,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    batcher_options: dict | None = None,
) -> FastAPI:
    """The app serving `runner` (from `serving_mm.runner.load_runner`) and, with `index_dir`, the indexes that
    `mm-index` wrote there. `max_batch_size=1` turns batching off. `batcher_options` go to `DynamicBatcher` (tests
    inject a clock)."""
    registry = CollectorRegistry()
    requests = Counter("mm_requests", "Requests by endpoint and status code", ["endpoint", "status"], registry=registry)
    latency = Histogram("mm_request_seconds", "Request latency", ["endpoint"], registry=registry)
    batch_sizes = Histogram(
        "mm_batch_size", "Items per model call", ["kind"], registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128)
    )
    batch_wait = Histogram(
        "mm_batch_wait_seconds", "How long a batch's oldest item waited", ["kind"], registry=registry
    )

    def on_batch(kind, size, waited):
        batch_sizes.labels(kind).observe(size)
        batch_wait.labels(kind).observe(waited)

    batcher = DynamicBatcher(
        runner.handlers(),
        max_batch_size=max_batch_size,
        max_wait_s=max_wait_ms / 1000,
        max_queue=max_queue,
        on_batch=on_batch,
        **(batcher_options or {}),
    )
    queue_depth = Gauge("mm_queue_depth", "Items waiting to be batched", registry=registry)
    queue_depth.set_function(lambda: batcher.depth)
    indexes, index_info = load_indexes(index_dir) if index_dir is not None else ({}, {})
    for modality, index in indexes.items():
        if index.index.d != getattr(runner, "embedding_dim", None):
            raise ValueError(
                f"The {modality} index in {index_dir} holds {index.index.d}-d vectors but the model embeds in "
                f"{runner.embedding_dim} dimensions: it was built with another model ({index_info.get('checkpoint')})."
            )

    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="mm", lifespan=lifespan)
    app.state.batcher, app.state.runner, app.state.indexes, app.state.registry = batcher, runner, indexes, registry
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        endpoint = request.scope.get("route").path if request.scope.get("route") else "unmatched"
        requests.labels(endpoint, str(response.status_code)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(InputError)
    async def input_error(request, error: InputError):
        return JSONResponse({"detail": str(error), "field": error.field}, status_code=error.status)

    @app.exception_handler(ValueError)
    async def model_input_error(request, error: ValueError):
        # What the processor refuses after the request's own checks passed (it names the item): still the input.
        return JSONResponse({"detail": f"input: {error}", "field": "input"}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request, error: QueueFull):
        detail = {"detail": f"Server busy: {error} Retry shortly."}
        return JSONResponse(detail, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(CapabilityError)
    async def not_capable(request, error: CapabilityError):
        return JSONResponse({"detail": str(error)}, status_code=404)

    async def run(kind, payload):
        if kind not in batcher.handlers:
            raise CapabilityError(
                f"This checkpoint cannot serve {kind!r} requests; it serves {runner.capabilities} (see /info)."
            )
        return await asyncio.wrap_future(batcher.submit(kind, payload))

    async def embed(kind, items):
        return np.stack(await asyncio.gather(*(run(kind, item) for item in items)))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not batcher.running:
            return JSONResponse({"ready": False, "detail": "the model worker is not running"}, status_code=503)
        return {"ready": True, "backend": runner.backend, "capabilities": runner.capabilities}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def info():
        return {
            "backend": runner.backend,
            "onnx_towers": getattr(runner, "onnx_towers", []),
            "capabilities": runner.capabilities,
            "embedding_dim": getattr(runner, "embedding_dim", None),
            "sampling_rate": getattr(runner, "sampling_rate", None),
            "indexes": {modality: len(index) for modality, index in indexes.items()},
        }

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (resources.files("serving_mm") / "static" / "search.html").read_text(encoding="utf-8")

    @app.post("/embed/text")
    async def embed_text(request: Request):
        body = await read_body(request)
        texts = _texts(body, "texts")
        return {"embeddings": (await embed("text", texts)).tolist()}

    @app.post("/embed/image")
    async def embed_image(request: Request):
        images = media_list(await read_body(request), "images", "image")
        return {"embeddings": (await embed("image", images)).tolist()}

    @app.post("/embed/audio")
    async def embed_audio(request: Request):
        clips = media_list(await read_body(request), "audio", "audio")
        return {"embeddings": (await embed("audio", clips)).tolist()}

    @app.post("/classify")
    async def classify(request: Request):
        body = await read_body(request)
        if "classify" in runner.capabilities:
            return await classify_fused(body)
        if "text" not in runner.capabilities:
            raise CapabilityError(f"This checkpoint cannot classify; it serves {runner.capabilities} (see /info).")
        labels = _texts(body, "labels")
        modality, item = one_media(body)
        query = (await embed(modality, [item]))[0]
        logits = runner.logit_scale * (await embed("text", labels)) @ query + runner.logit_bias
        scores = _sigmoid(logits) if runner.loss_type == "siglip" else _softmax(logits)
        order = np.argsort(-scores)
        return {"labels": [labels[i] for i in order], "scores": [float(scores[i]) for i in order]}

    async def classify_fused(body):
        """A fusion classifier's own classes for one item of any mix of text, image and audio."""
        if body.get("labels") is not None:
            raise InputError("labels", "this checkpoint is a trained classifier with its own classes; drop `labels`.")
        item = {}
        if body.get("text") is not None:
            item["text"] = check_text(body["text"], "text")
        for modality in MEDIA:
            if body.get(modality) is not None:
                item[modality] = to_media(_one(body[modality], modality), modality, modality)
        if not item:
            raise InputError("text/image/audio", "send at least one of `text`, `image` or `audio` to classify.")
        return {"predictions": await run("classify", item)}

    @app.post("/speech")
    async def speech(request: Request):
        body = await read_body(request)
        if "speech" not in runner.capabilities:
            raise CapabilityError(f"This checkpoint cannot speak; it serves {runner.capabilities} (see /info).")
        text = runner.check_text(check_text(_required(body, "text"), "text"), "text")
        wav = await run("speech", text)
        return {"audio": base64.b64encode(wav).decode(), "sampling_rate": runner.sampling_rate, "format": "wav"}

    @app.post("/generate")
    async def generate(request: Request):
        body = await read_body(request)
        if "generate" not in runner.capabilities:
            raise CapabilityError(
                f"This checkpoint cannot generate images; it serves {runner.capabilities} (see /info)."
            )
        prompt = runner.check_prompt(check_text(_required(body, "prompt"), "prompt"), "prompt")
        steps = _int_field(body.get("num_inference_steps", 25), "num_inference_steps", 1, MAX_INFERENCE_STEPS)
        guidance = _float_field(body.get("guidance_scale", 3.0), "guidance_scale", 0.0, MAX_GUIDANCE_SCALE)
        seed = _int_field(body.get("seed", 0), "seed", 0, 2**63 - 1)
        png = await run("generate", (prompt, steps, guidance, seed))
        return {"image": base64.b64encode(png).decode(), "format": "png", "seed": seed}

    async def caption(body):
        if "caption" not in runner.capabilities:
            raise CapabilityError(
                "This checkpoint is an MMModel (embeddings only) and cannot caption; serve an "
                "MMForConditionalGeneration checkpoint (examples/run_captioning.py writes one)."
            )
        modality, item = one_media(body)
        return {"text": await run(f"caption_{modality}", item)}

    @app.post("/caption")
    async def caption_endpoint(request: Request):
        return await caption(await read_body(request))

    @app.post("/transcribe")
    async def transcribe(request: Request):
        body = await read_body(request)
        _required(body, "audio")
        return await caption({"audio": body["audio"]})

    @app.post("/search")
    async def search(request: Request):
        body = await read_body(request)
        if not indexes:
            raise CapabilityError("No index is loaded; start mm-serve with --index DIR (built by `mm-index build`).")
        target = body.get("modality") or next(iter(indexes))
        if target not in indexes:
            raise InputError("modality", f"{target!r} has no index here; indexed modalities: {sorted(indexes)}.")
        k = _int_field(body.get("k", 10), "k", 1, MAX_K)
        if body.get("text") is not None:
            query = (await embed("text", [check_text(body["text"], "text")]))[0]
        else:
            modality, item = one_media(body, what="a query: text, image or audio")
            query = (await embed(modality, [item]))[0]
        index = indexes[target]
        hits = index.search(query[None], k)[0]
        results = [{"row": row, "score": score, **index.metadata[row]} for row, score in hits]
        return {"modality": target, "results": results}

    @app.get("/items/{modality}/{row}")
    async def item(modality: str, row: int):
        if modality not in indexes or not 0 <= row < len(indexes[modality]):
            raise HTTPException(404, f"No {modality} item {row} in the index.")
        path = Path(indexes[modality].metadata[row].get("path", ""))
        if not path.is_file():
            raise HTTPException(404, f"The file of {modality} item {row} is gone ({path}).")
        return FileResponse(path)

    def media_list(body, field, modality):
        values = as_list(_required(body, field), field, MAX_ITEMS)
        return [to_media(value, f"{field}[{i}]", modality) for i, value in enumerate(values)]

    def one_media(body, what="an image or audio"):
        present = [m for m in MEDIA if body.get(m) is not None]
        if len(present) != 1:
            problem = f"send exactly one of `image` or `audio` ({what}); got {present or 'none'}."
            raise InputError("image/audio", problem)
        return present[0], to_media(_one(body[present[0]], present[0]), present[0], present[0])

    def to_media(value, field, modality):
        data = value if isinstance(value, bytes) else from_base64(value, field)
        if modality == "image":
            return decode_image(data, field)
        return decode_audio(data, field, runner.sampling_rate)

    return app


async def read_body(request: Request) -> dict:
    """The request's fields: a JSON object, or a multipart form whose files become bytes and whose repeated fields
    become lists (`labels=a&labels=b`)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form-urlencoded"):
        try:
            form = await request.form()
        except HTTPException:
            raise
        except Exception as error:
            raise InputError("body", f"is not a readable form ({error}).", 400) from None
        body = {}
        for key in form.keys():
            values = [await v.read() if hasattr(v, "read") else v for v in form.getlist(key)]
            body[key] = values if len(values) > 1 or key in ("texts", "labels", "images") else values[0]
        return body
    try:
        body = await request.json()
    except HTTPException:
        raise
    except Exception:
        raise InputError("body", "is not valid JSON; send a JSON object or a multipart form.", 400) from None
    if not isinstance(body, dict):
        raise InputError("body", f"must be a JSON object, got {type(body).__name__}.", 400)
    return body


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes answers 413, by its Content-Length when it has one and
    by counting the bytes received otherwise (chunked uploads)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": self._message(int(declared)), "field": "body"}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self._message(received))
            return message

        await self.app(scope, limited, send)

    def _message(self, size):
        return f"body: the request body is {size:,} bytes, more than the limit of {self.limit:,} (--max_body_bytes)."


def _texts(body: dict, field: str) -> list[str]:
    values = as_list(_required(body, field), field, MAX_ITEMS)
    return [check_text(text, f"{field}[{i}]") for i, text in enumerate(values)]


def _required(body: dict, field: str):
    if body.get(field) is None:
        raise InputError(field, "is missing.")
    return body[field]


def _one(value, field):
    """A field's single value (a one-item list, as a multipart form may give, is unwrapped)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise InputError(field, f"expected one item, got {len(value)}.")
        return value[0]
    return value


def _float_field(value, field, low, high) -> float:
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise InputError(field, f"must be a number from {low} to {high}, got {value!r:.40}.")
    return number


def _int_field(value, field, low, high) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(field, f"must be an integer from {low} to {high}, got {value!r:.40}.")
    return value


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))

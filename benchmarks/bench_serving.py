#!/usr/bin/env python
"""mm-serve throughput and latency at concurrency 1, 8 and 32, dynamic batching on and off.

Starts `python -m serving_mm.server` on 127.0.0.1 (a free port) for each setting, sends a fixed number of
requests per concurrency level from a bounded load generator (httpx, one in-flight request per worker), stops the
server, and prints a table and one JSON line per measurement. Each request embeds one caption (/embed/text) or one
image (/embed/image). The model is an untrained checkpoint of the chosen preset (speed does not depend on the
weights) unless --checkpoint is given.

    python benchmarks/bench_serving.py --quick
    python benchmarks/bench_serving.py --endpoint image --requests 400
"""

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import httpx

# This checkout's packages (and serving_models.py next to this file), whatever mm an editable install points to.
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from serving_models import save_checkpoint, scenes  # noqa: E402

CONCURRENCY = (1, 8, 32)


async def load(url, payloads, concurrency, requests):
    """Sends `requests` POSTs with `concurrency` workers; returns (seconds, latencies, failures)."""
    latencies, failures, sent = [], 0, 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker():
            nonlocal sent, failures
            while sent < requests:
                body = payloads[sent % len(payloads)]
                sent += 1
                start = time.perf_counter()
                response = await client.post(url, json=body)
                latencies.append(time.perf_counter() - start)
                failures += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, failures


def serve(checkpoint, port, max_batch_size, threads):
    command = [sys.executable, "-m", "serving_mm.server", checkpoint, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--threads", str(threads)]
    command += ["--max_batch_size", str(max_batch_size), "--max_wait_ms", "5", "--max_queue", "1024"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # `-m` imports this checkout's serving_mm
    server = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2)
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"mm-serve exited with {server.returncode}")
            time.sleep(0.3)
    server.kill()
    raise RuntimeError("mm-serve did not become ready in 300 s")


def payloads_for(endpoint, image_size):
    images, captions = scenes(64, image_size)
    if endpoint == "text":
        return [{"texts": [caption]} for caption in captions]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append({"images": [base64.b64encode(buffer.getvalue()).decode()]})
    return encoded


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an mm checkpoint (default: an untrained one of --preset)")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--endpoint", default="text", choices=("text", "image"))
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--quick", action="store_true", help="96 requests per level")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (mm-serve --threads)")
    args = parser.parse_args(argv)
    requests = 96 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or folder
        if args.checkpoint is None:
            save_checkpoint(folder, args.preset)
        from configuration_mm import MMConfig

        image_size = MMConfig.from_pretrained(checkpoint).vision_config.image_size
        payloads = payloads_for(args.endpoint, image_size)
        rows = []
        for batching, max_batch_size in (("on", 32), ("off", 1)):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            server = serve(checkpoint, port, max_batch_size, args.threads)
            try:
                url = f"http://127.0.0.1:{port}/embed/{args.endpoint}"
                asyncio.run(load(url, payloads, 4, 16))  # warm-up
                for concurrency in CONCURRENCY:
                    seconds, latencies, failures = asyncio.run(load(url, payloads, concurrency, requests))
                    q = statistics.quantiles(latencies, n=100)
                    rows.append(
                        dict(
                            endpoint=args.endpoint, batching=batching, concurrency=concurrency, requests=requests,
                            throughput_rps=round(requests / seconds, 1), p50_ms=round(q[49] * 1000, 1),
                            p95_ms=round(q[94] * 1000, 1), failures=failures,
                        )
                    )  # fmt: skip
            finally:
                server.terminate()
                server.wait(30)
    what = args.checkpoint or f"{args.preset} preset (untrained)"
    print(f"\nmm-serve /embed/{args.endpoint}, {what}, {args.threads} torch thread(s), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| batching | concurrency | requests/s | p50 ms | p95 ms | failed |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batching']} | {r['concurrency']} | {r['throughput_rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['failures']} |")
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()

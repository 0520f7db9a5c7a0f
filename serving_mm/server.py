"""`mm-serve CHECKPOINT`: serves an mm checkpoint (a local folder or a Hub id) with uvicorn.

    mm-serve outputs/run_clip-small --port 8000
    mm-serve outputs/run_clip-small --index outputs/photos-index        # + /search and the search page
    mm-serve outputs/run_clip-small --backend int8                      # or onnx / onnx-int8, after `mm-export`
"""

import argparse
import logging

from .app import DEFAULT_MAX_BODY_BYTES, create_app
from .runner import BACKENDS, load_runner


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm-serve", description="Serve an mm checkpoint over HTTP.")
    parser.add_argument("checkpoint", help="a checkpoint folder (e.g. what examples/run_clip.py wrote) or a Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--index", help="an index folder written by `mm-index build`, for /search and the page")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="torch",
        help="torch (fp32), int8, onnx (mm-export) or onnx-int8 (mm-export --int8)",
    )
    parser.add_argument("--max_batch_size", type=int, default=32, help="items per model call; 1 turns batching off")
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="the longest a request waits for a batch")
    parser.add_argument("--max_queue", type=int, default=256, help="waiting requests beyond this get 503")
    parser.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies get 413")
    parser.add_argument("--max_new_tokens", type=int, help="caption length limit (default: the model's)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    return parser


def main(argv=None):
    import torch
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = load_runner(args.checkpoint, backend=args.backend, max_new_tokens=args.max_new_tokens)
    app = create_app(
        runner,
        index_dir=args.index,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()

"""Dynamic batching: requests that arrive together run as one forward call of the one model copy.

Each request is one item of one kind ("text", "image", "audio", "caption_image", "caption_audio"). A single worker
thread takes the oldest waiting item, then waits for more items of the same kind until the batch holds
`max_batch_size` items or the oldest one has waited `max_wait_s`, whichever comes first, and runs the batch. The
queue holds at most `max_queue` waiting items; `submit` raises `QueueFull` beyond that (the server answers 503), so
memory stays bounded under overload. The clock and the timed wait are injectable, so the wait cap is tested with a
fake clock instead of by timing.
"""

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(RuntimeError):
    """The batcher's queue holds `max_queue` items already; retry later."""


@dataclass
class _Item:
    kind: str
    payload: Any
    arrived: float
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """Groups submitted items into batches and runs `handlers[kind](payloads) -> results` once per batch.

    Args:
        handlers: for each kind, a function from a list of payloads to a list of results of the same length.
        max_batch_size: the most items in one call; 1 turns batching off.
        max_wait_s: the longest the oldest item of a batch waits for others before its batch runs.
        max_queue: the most items waiting (not yet in a running batch); more are refused with `QueueFull`.
        clock: returns the current time in seconds (default `time.monotonic`).
        wait: `wait(condition, timeout)` blocks until notified or `timeout` seconds pass (default
            `condition.wait`); a test passes one that advances a fake clock instead.
        on_batch: called with (kind, batch size, seconds the oldest item waited) before each batch runs (metrics).

    Example:
    ```python
    >>> batcher = DynamicBatcher({"double": lambda xs: [2 * x for x in xs]}, max_batch_size=8, max_wait_s=0.005)
    >>> batcher.start()
    >>> batcher.submit("double", 21).result()
    42
    >>> batcher.stop()
    ```
    """

    def __init__(
        self,
        handlers: dict[str, Callable[[list], list]],
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[threading.Condition, float], Any] | None = None,
        on_batch: Callable[[str, int, float], Any] | None = None,
    ):
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) must be >= 1 and max_wait_s "
                f"({max_wait_s}) >= 0."
            )
        self.handlers = handlers
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.clock = clock
        self._wait = wait or (lambda condition, timeout: condition.wait(timeout))
        self.on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def depth(self) -> int:
        """Items waiting to be batched."""
        return len(self._pending)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, kind: str, payload) -> Future:
        """Queues one item; its `Future` gets the handler's result for it (or the handler's exception).

        Raises:
            KeyError: no handler for `kind`.
            QueueFull: `max_queue` items are waiting already.
        """
        if kind not in self.handlers:
            raise KeyError(f"No handler for {kind!r}; known kinds: {sorted(self.handlers)}.")
        with self._condition:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting already (max_queue={self.max_queue}).")
            item = _Item(kind, payload, self.clock())
            self._pending.append(item)
            self._condition.notify_all()
        return item.future

    def next_batch(self) -> list[_Item]:
        """Blocks until an item is waiting, then collects its batch (see the module docstring); returns [] when
        stopped while idle."""
        with self._condition:
            while not self._pending and not self._stopping:
                self._condition.wait()
            if not self._pending:
                return []
            kind = self._pending[0].kind
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._count(kind) < self.max_batch_size and not self._stopping:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                self._wait(self._condition, remaining)
            batch = [item for item in self._pending if item.kind == kind][: self.max_batch_size]
            for item in batch:
                self._pending.remove(item)
            return batch

    def run_once(self) -> int:
        """Collects one batch and runs it; returns its size (0 when stopped while idle)."""
        batch = self.next_batch()
        if not batch:
            return 0
        if self.on_batch is not None:
            self.on_batch(batch[0].kind, len(batch), self.clock() - batch[0].arrived)
        try:
            results = self.handlers[batch[0].kind]([item.payload for item in batch])
            if len(results) != len(batch):
                kind = batch[0].kind
                raise RuntimeError(f"The {kind!r} handler returned {len(results)} results for {len(batch)} items.")
        except Exception as error:  # one bad item must not fail its neighbours: run them one by one
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return 1
            for item in batch:
                try:
                    item.future.set_result(self.handlers[item.kind]([item.payload])[0])
                except Exception as item_error:
                    item.future.set_exception(item_error)
            return len(batch)
        for item, result in zip(batch, results):
            item.future.set_result(result)
        return len(batch)

    def start(self):
        """Runs batches on a daemon thread until `stop`."""
        if self.running:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mm-batcher", daemon=True)
        self._thread.start()

    def stop(self):
        """Finishes the batch in progress and the waiting items, then ends the worker thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self):
        while self.run_once() or not self._stopping:
            pass

    def _count(self, kind: str) -> int:
        return sum(item.kind == kind for item in self._pending)

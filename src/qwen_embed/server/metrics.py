"""Prometheus metrics of the server, in a registry of their own (one per app, so tests can make many).

Names follow the Prometheus conventions (`_total` counters, `_seconds` durations):
- qwen_embed_requests_total{route, status}: answered HTTP requests
- qwen_embed_queue_requests{model}, qwen_embed_queue_tokens{model}: queued or running now
- qwen_embed_batch_requests{model}, qwen_embed_batch_inputs{model}, qwen_embed_batch_tokens{model}:
  histograms of what each forward pass held
- qwen_embed_tokenization_seconds{model}, qwen_embed_queue_seconds{model},
  qwen_embed_inference_seconds{model}: stage durations
- qwen_embed_input_tokens{model}: tokens per input after truncation

Under `serve --workers N` every process (HTTP workers and model processes) records into files of its
own in one folder (prometheus_client's multiprocess mode, chosen by PROMETHEUS_MULTIPROC_DIR, which the
supervisor sets before it starts them), and any worker's /metrics merges the files on read: counters
and histograms add up, the queue gauges add up over the live workers (`livesum`), and a dead process's
counts stay counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_POW2 = tuple(float(2**i) for i in range(0, 13))  # 1 .. 4096
_TOKENS = tuple(float(2**i) for i in range(4, 21))  # 16 .. 1M
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def metrics_label(name: str) -> str:
    """A model's name for metrics labels: a hub id as it is, a local folder by its last part (labels never
    carry absolute paths)."""
    if name.startswith(("/", ".", "~")) or "\\" in name or Path(name).exists():
        return Path(name).name or name
    return name


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir`: render the sum over every process recording into that folder (module docstring)."""
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qwen_embed_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.queue_requests = Gauge("qwen_embed_queue_requests", "requests queued or running", ["model"], registry=r,
                                    multiprocess_mode="livesum")
        self.queue_tokens = Gauge("qwen_embed_queue_tokens", "tokens queued or running", ["model"], registry=r,
                                  multiprocess_mode="livesum")
        self.batch_requests = Histogram("qwen_embed_batch_requests", "requests merged into one forward pass",
                                        ["model"], buckets=_POW2, registry=r)
        self.batch_inputs = Histogram("qwen_embed_batch_inputs", "sequences in one forward pass", ["model"],
                                      buckets=_POW2, registry=r)
        self.batch_tokens = Histogram("qwen_embed_batch_tokens", "tokens in one forward pass", ["model"],
                                      buckets=_TOKENS, registry=r)
        self.tokenization = Histogram(
            "qwen_embed_tokenization_seconds", "tokenization stage per request (waiting for a tokenizer thread "
            "included)", ["model"], buckets=_SECONDS, registry=r)
        self.queue = Histogram("qwen_embed_queue_seconds", "time from queued to the start of its forward pass",
                               ["model"], buckets=_SECONDS, registry=r)
        self.inference = Histogram("qwen_embed_inference_seconds", "forward pass time per batch", ["model"],
                                   buckets=_SECONDS, registry=r)
        self.input_tokens = Histogram("qwen_embed_input_tokens", "tokens per input after truncation", ["model"],
                                      buckets=_TOKENS, registry=r)

    def count_request(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()

    def set_queue(self, model: str, requests: int, tokens: int) -> None:
        self.queue_requests.labels(model).set(requests)
        self.queue_tokens.labels(model).set(tokens)

    def observe_batch(self, model: str, requests: int, inputs: int, tokens: int, seconds: float,
                      queue_seconds: Sequence[float]) -> None:
        self.batch_requests.labels(model).observe(requests)
        self.batch_inputs.labels(model).observe(inputs)
        self.batch_tokens.labels(model).observe(tokens)
        self.inference.labels(model).observe(seconds)
        for q in queue_seconds:
            self.queue.labels(model).observe(q)

    def observe_tokenization(self, model: str, seconds: float, lengths: Sequence[int]) -> None:
        self.tokenization.labels(model).observe(seconds)
        hist = self.input_tokens.labels(model)
        for n in lengths:
            hist.observe(n)

    def render(self) -> bytes:
        """The text exposition format."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)

"""Metrics: each app has its own registry; the exposition holds the documented series."""

from __future__ import annotations

from qwen_embed.server.metrics import Metrics


def test_series_and_values() -> None:
    a, b = Metrics(), Metrics()  # two apps in one process do not collide
    a.count_request("/v1/embeddings", 200)
    a.count_request("/v1/embeddings", 200)
    a.set_queue("emb", 3, 120)
    a.observe_batch("emb", requests=2, inputs=5, tokens=100, seconds=0.01, queue_seconds=[0.001, 0.002])
    a.observe_tokenization("emb", 0.002, [10, 20, 70])
    text = a.render().decode()
    assert 'qwen_embed_requests_total{route="/v1/embeddings",status="200"} 2.0' in text
    assert 'qwen_embed_queue_requests{model="emb"} 3.0' in text and 'qwen_embed_queue_tokens{model="emb"} 120.0' in text
    assert 'qwen_embed_batch_requests_bucket{le="1.0",model="emb"} 0.0' in text
    assert 'qwen_embed_batch_requests_bucket{le="2.0",model="emb"} 1.0' in text
    assert 'qwen_embed_batch_inputs_sum{model="emb"} 5.0' in text
    assert 'qwen_embed_queue_seconds_count{model="emb"} 2.0' in text
    assert 'qwen_embed_input_tokens_sum{model="emb"} 100.0' in text
    assert 'qwen_embed_tokenization_seconds_count{model="emb"} 1.0' in text
    assert 'status="200"' not in b.render().decode()

"""SIGKILL in the middle of `synth queries`, then the same command: the same file as an uninterrupted run,
and no prompt answered before the kill is sent again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwen_embed.cli import main
from qwen_embed.synth import GeneratorSettings, OpenAIGenerator
from qwen_embed.synth.cache import ResponseCache

from .conftest import PERSONAS, write_passages
from .fake_llm import FakeLLM


def command(url: str, passages: Path, out: Path, model: Path) -> list[str]:
    return ["synth", "queries", "--passages", str(passages), "--personas", str(PERSONAS), "--generator", url,
            "--model", "fake-model", "-o", str(out), "--embedding-model", str(model), "--device", "cpu",
            "--concurrency", "2", "--chunk", "2", "--timeout", "10", "--backoff", "0.01", "--temperature", "0"]


@pytest.mark.slow  # a subprocess that imports torch and openai: ~10 s on a busy machine
def test_sigkill_then_resume_equals_uninterrupted(tiny_embedding_path: Path, tmp_path: Path) -> None:
    reference = FakeLLM()  # the uninterrupted run, on a server of its own: the same script, no delay to wait for
    server = FakeLLM(delay=0.1)  # the killed run and its resumption: a delay leaves time to kill it midway
    try:
        passages = write_passages(tmp_path / "p.jsonl", ["valid", "malformed", "valid", "copy"] * 4)
        (tmp_path / "ref").mkdir()
        (tmp_path / "run").mkdir()
        ref, out = tmp_path / "ref" / "pairs.jsonl", tmp_path / "run" / "pairs.jsonl"
        assert main(command(reference.url, passages, ref, tiny_embedding_path)) == 0
        n_ref = len(reference.prompts())

        cache_file = out.with_name("pairs.jsonl.cache.jsonl")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen([sys.executable, "-m", "qwen_embed", *command(server.url, passages, out,
                                                                              tiny_embedding_path)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (cache_file.exists() and cache_file.read_text().count("\n") >= 10):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        partial = out.with_name("pairs.jsonl.partial")
        assert not out.exists() and partial.exists()
        done_before = partial.read_text().count("\n")
        ref_rows = ref.read_text().splitlines()
        assert 1 <= done_before < len(ref_rows)

        identity = OpenAIGenerator(server.url, "fake-model", GeneratorSettings(temperature=0)).identity()
        cached = ResponseCache(cache_file, identity)  # what the killed run paid for
        cached.close()
        assert len(cached) >= 10
        sent_before = len(server.prompts())

        assert main(command(server.url, passages, out, tiny_embedding_path)) == 0
        assert out.read_text() == ref.read_text()  # same rows, same order, no duplicates
        assert not partial.exists()
        resent = [p for p in server.prompts()[sent_before:] if cached.get(p) is not None]
        assert resent == []
        # everything the uninterrupted run asked was asked once more at most (the replies in flight at the kill)
        assert len(server.prompts()) <= n_ref + 2
    finally:
        server.close()
        reference.close()

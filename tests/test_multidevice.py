"""One worker process per device: the result equals a single-process run (two CPU workers here)."""

import itertools
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder, QwenEmbedError
from qwen_embed.errors import InputError
from qwen_embed.multidevice import DevicePool, encode_on_devices, shard_bounds
from tests.procs import alive
from tests.reference import random_texts
from tests.threads import subprocess_env


def test_shard_bounds_cover_in_order() -> None:
    texts = ["a" * n for n in (5, 1, 1, 1, 30, 2, 2, 2, 2)]
    for parts in (1, 2, 3, 12):
        b = shard_bounds(texts, parts)
        assert len(b) == parts and b[0][0] == 0 and b[-1][1] == len(texts)
        assert all(x[1] == y[0] for x, y in itertools.pairwise(b))


def test_two_workers_equal_one_process(tiny_embedding_path: Path, embedder: Embedder) -> None:
    texts = random_texts(30, seed=21, max_words=60)
    two = encode_on_devices(tiny_embedding_path, texts, ["cpu", "cpu"], dim=48)
    one = embedder.encode(texts, dim=48)  # the session's Embedder.from_pretrained(tiny_embedding_path, device="cpu")
    assert two.shape == one.shape and np.abs(two - one).max() <= 1e-5


def test_deterministic_workers_give_each_texts_own_bits(tiny_embedding_path: Path) -> None:
    """deterministic=True reaches every worker: each vector is bitwise the text's own, embedded alone by an
    Embedder(deterministic=True) in this process, whatever shard and batch the text was in."""
    texts = random_texts(7, seed=8, max_words=40)
    with DevicePool(tiny_embedding_path, ["cpu", "cpu"], warmup=False, threads=1, deterministic=True) as pool:
        got = pool.encode(texts, dim=32)
    alone = Embedder.from_pretrained(tiny_embedding_path, deterministic=True)
    assert np.array_equal(got, np.concatenate([alone.encode([t], dim=32) for t in texts]))


def test_pool_serves_several_calls_and_survives_a_bad_one(tiny_embedding_path: Path, embedder: Embedder) -> None:
    emb = embedder  # the session's Embedder.from_pretrained(tiny_embedding_path, device="cpu")
    docs, queries = random_texts(9, seed=3, max_words=40), random_texts(3, seed=4, max_words=10)
    with DevicePool(tiny_embedding_path, ["cpu", "cpu"]) as pool:
        assert [s["device"] for s in pool.worker_startup()] == ["cpu", "cpu"]
        got_docs = pool.encode(docs)
        with pytest.raises(InputError, match=r"dim=31 is out of range"):  # refused before any job is sent
            pool.encode(docs, dim=31)
        with pytest.raises(QwenEmbedError, match=r"worker on cpu failed: .*instruction"):  # refused by the workers
            pool.encode(docs, instruction=123)  # type: ignore[arg-type]
        got_queries = pool.encode(queries, instruction="find it", dim=32, normalize=False)
        one_text = pool.encode(["only one text"])  # the second worker gets an empty shard
        assert len(pool.last_stats) == 1
    assert np.abs(got_docs - emb.encode(docs)).max() <= 1e-5
    assert np.abs(got_queries - emb.encode(queries, instruction="find it", dim=32, normalize=False)).max() <= 1e-5
    assert np.abs(one_text - emb.encode(["only one text"])).max() <= 1e-5
    with pytest.raises(QwenEmbedError, match="closed"):
        pool.encode(docs)


def test_worker_failure_names_the_device(tiny_embedding_path: Path) -> None:
    # one torch thread, as every test process (tests/threads.py): a lone worker would take both shared cores
    with pytest.raises(QwenEmbedError, match=r"worker on cpu failed: .*instruction"):
        encode_on_devices(tiny_embedding_path, ["a", "b"], ["cpu"], instruction=123, threads=1)  # type: ignore[arg-type]


def test_start_up_failure_names_the_device(tmp_path: Path) -> None:
    with pytest.raises(QwenEmbedError, match=r"worker on cpu failed: "):
        DevicePool(tmp_path / "no-such-model", ["cpu"])


def test_a_dead_worker_is_reported_and_closes_the_pool(tiny_embedding_path: Path) -> None:
    pool = DevicePool(tiny_embedding_path, ["cpu"], warmup=False)
    pool._procs[0].kill()  # as the kernel's out-of-memory killer would
    pool._procs[0].join()
    with pytest.raises(QwenEmbedError, match=r"worker on cpu failed: it was killed by SIGKILL"):
        pool.encode(["a text"])
    assert pool.closed


def test_no_devices_is_refused_before_any_worker_starts(tiny_embedding_path: Path) -> None:
    with pytest.raises(QwenEmbedError, match="non-empty list"):
        DevicePool(tiny_embedding_path, [])


@pytest.mark.slow
def test_a_killed_parent_takes_its_workers_and_scratch_folder_with_it(tiny_embedding_path: Path) -> None:
    """SIGKILL of the process that holds a DevicePool, in the middle of an encode call: its worker ends
    within seconds and removes the pool's scratch folder (in /dev/shm here); before, the worker waited for
    work forever and the folder, as large as the output, stayed until a reboot."""
    script = textwrap.dedent("""
        import sys
        from qwen_embed.multidevice import DevicePool
        pool = DevicePool(sys.argv[1], ["cpu"], warmup=False, threads=1)
        print(pool._scratch, *[p.pid for p in pool._procs], flush=True)
        pool.encode(["a few words to embed again and again"] * 200_000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tiny_embedding_path)], stdout=subprocess.PIPE,
                            text=True, env=subprocess_env())
    assert proc.stdout is not None
    scratch, *pids = proc.stdout.readline().split()
    assert pids, "the pool did not start"
    deadline = time.monotonic() + 60
    while not list(Path(scratch).glob("vectors-*.npy")):  # the call has begun: its output file exists
        assert proc.poll() is None and time.monotonic() < deadline, "the encode call did not begin"
        time.sleep(0.02)
    time.sleep(0.3)  # the worker is embedding its shard
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while any(alive(int(pid)) for pid in pids) or Path(scratch).exists():
        assert time.monotonic() < deadline, (f"worker alive: {[alive(int(p)) for p in pids]}, "
                                             f"scratch folder left: {Path(scratch).exists()}")
        time.sleep(0.05)


def test_a_closed_pool_leaves_no_scratch_folder(tiny_embedding_path: Path) -> None:
    with DevicePool(tiny_embedding_path, ["cpu"], warmup=False, threads=1) as pool:
        pool.encode(["one", "two"])
        pool.encode(["three"])
        scratch = Path(pool._scratch)
        assert scratch.is_dir() and list(scratch.iterdir()) == []  # each call's output removed after it
    assert not scratch.exists()


def test_a_bad_dim_or_conflicting_devices_are_refused_before_any_worker_starts(
        tiny_embedding_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import qwen_embed.multidevice as md
    from qwen_embed.cli import main

    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker pool was started")

    monkeypatch.setattr(md, "DevicePool", no_pool)
    for dim in (7, 32.0, 10_000):
        with pytest.raises(InputError, match="dim"):
            md.encode_on_devices(tiny_embedding_path, ["a"], ["cpu", "cpu"], dim=dim)  # type: ignore[arg-type]
    src = tmp_path / "in.txt"
    src.write_text("a\n")
    assert main(["embed", str(src), "--model", str(tiny_embedding_path), "--devices", "cpu,cpu", "--device", "cpu",
                 "-o", str(tmp_path / "v.npy")]) == 2
    assert "--device cpu and --devices cpu,cpu both given" in capsys.readouterr().err

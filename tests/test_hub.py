"""qwen_embed.hub: folders, hub ids through a fake local Hugging Face cache (no network), weight files and the
weights fingerprint. Weight files are written by the reference writer (`safetensors.numpy`)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from qwen_embed import hub
from qwen_embed.errors import InputError, ModelNotFoundError, WeightsError
from qwen_embed.hub import HUB_FILES, resolve_model_dir, safetensors_files, weights_fingerprint
from tests.threads import subprocess_env

REPO_ID = "Qwen/Qwen3-Embedding-0.6B"
REV = "c54f2e6e80b2d7b7de06f51cec4959f6b3e03418"  # a made-up 40-hex commit


# -- helpers -----------------------------------------------------------------------------------------------
def write_weights(path: Path, seed: int = 0, extra: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {"embed_tokens.weight": rng.standard_normal((16, 8)).astype(np.float32),
                                      "norm.weight": rng.standard_normal(8 + extra).astype(np.float16)}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return tensors


def make_checkpoint(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen3Model"]}))
    write_weights(folder / "model.safetensors", seed)
    return folder


def make_sharded(folder: Path, order: tuple[int, ...] = (1, 2)) -> list[Path]:
    """Two shards (and their HF index, weight_map listed in `order`); returns the shard paths in name order."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for i, name in enumerate(names):
        save_file({f"layers.{i}.w": np.full((4,), i, np.float32)}, str(folder / name), metadata={"format": "pt"})
    weight_map = {f"layers.{i - 1}.w": names[i - 1] for i in order}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 32}, "weight_map": weight_map}))
    return [folder / n for n in names]


def data_start(path: Path) -> int:
    with path.open("rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache under tmp_path, used by huggingface_hub whenever it was imported."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once, when huggingface_hub is imported
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """huggingface_hub may read its cache but never download; the reachability probe must not run either.
    Returns the recorded snapshot_download calls."""
    import huggingface_hub

    real = huggingface_hub.snapshot_download
    calls: list[dict[str, Any]] = []

    def guarded(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        if kwargs.get("local_files_only") is not True:
            raise AssertionError(f"a download of {repo_id} was attempted")
        return str(real(repo_id, **kwargs))

    def unreachable_probe(timeout: float = 3.0) -> bool:
        raise AssertionError("the hub's reachability was probed")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", guarded)
    monkeypatch.setattr(hub, "_hub_reachable", unreachable_probe)
    return calls


def cache_snapshot(cache: Path, repo_id: str, rev: str, *, main: bool = True, seed: int = 0) -> Path:
    """The hub cache layout: models--org--name/{blobs/<hash>, snapshots/<rev>/<file> -> ../../blobs/<hash>,
    refs/main}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snap = repo / "blobs", repo / "snapshots" / rev
    blobs.mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    source = make_checkpoint(cache.parent / f"src-{rev}", seed)
    for f in source.iterdir():
        blob = blobs / f"{rev[:8]}{f.name}".replace(".", "")
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(rev)  # as huggingface_hub writes it: no newline
    return snap


# -- resolve_model_dir: local paths ------------------------------------------------------------------------
def test_local_folder_resolves_to_itself(tmp_path: Path, no_network: list[dict[str, Any]]) -> None:
    folder = make_checkpoint(tmp_path / "ckpt")
    assert resolve_model_dir(folder) == folder
    assert resolve_model_dir(str(folder)) == folder
    assert no_network == []


def test_home_relative_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[Any]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = make_checkpoint(tmp_path / "models" / "ckpt")
    assert resolve_model_dir("~/models/ckpt") == folder


def test_local_folder_shaped_like_a_hub_id_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                no_network: list[Any]) -> None:
    """A folder `Qwen/Qwen3-Embedding-0.6B` under the working directory is that folder, not the hub's."""
    monkeypatch.chdir(tmp_path)
    make_checkpoint(tmp_path / REPO_ID)
    assert resolve_model_dir(REPO_ID) == Path(REPO_ID)
    assert resolve_model_dir(REPO_ID).resolve() == (tmp_path / REPO_ID).resolve()
    assert no_network == []


def test_a_file_is_refused(tmp_path: Path, no_network: list[Any]) -> None:
    f = tmp_path / "model.safetensors"
    write_weights(f)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir(f)
    text = one_line(e)
    assert str(f) in text and "is a file" in text and "config.json" in text


@pytest.mark.parametrize("name", ["/no/such/checkpoint", "./missing", "a/b/c", "missing", "~/definitely-missing"])
def test_missing_path_that_is_not_a_hub_id(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           hf_cache: Path, no_network: list[Any]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir(name)
    text = one_line(e)
    assert name in text and "does not exist" in text and "check the path" in text
    assert no_network == []  # not even the cache is asked


def test_missing_folder_beside_existing_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_cache: Path,
                                             no_network: list[dict[str, Any]]) -> None:
    """'runs/tiny-init' with a local runs/: a missing output folder, looked up in the cache only."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir("runs/tiny-init")
    text = one_line(e)
    assert "runs/tiny-init does not exist" in text and "its folder runs does" in text
    assert [c["local_files_only"] for c in no_network] == [True]
    snap = cache_snapshot(hf_cache, "runs/tiny-init", REV)  # ... unless the cache has it
    assert resolve_model_dir("runs/tiny-init").resolve() == snap.resolve()


# -- resolve_model_dir: hub ids ------------------------------------------------------------------------------
def test_hub_id_in_the_cache_resolves_to_its_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      hf_cache: Path, no_network: list[dict[str, Any]]) -> None:
    monkeypatch.chdir(tmp_path)
    cache_snapshot(hf_cache, REPO_ID, "0" * 40, main=False, seed=1)  # an older revision, not refs/main
    snap = cache_snapshot(hf_cache, REPO_ID, REV, seed=2)
    got = resolve_model_dir(REPO_ID)
    assert got.resolve() == snap.resolve()
    assert got.parent.name == "snapshots" and got.name == REV
    assert (got / "config.json").is_file() and safetensors_files(got) == [got / "model.safetensors"]
    assert all(c["local_files_only"] for c in no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: the cache still answers
    assert resolve_model_dir(REPO_ID).resolve() == snap.resolve()


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_hub_id_offline_not_cached_says_what_to_do(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   hf_cache: Path, no_network: list[dict[str, Any]]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    cache_snapshot(hf_cache, "Qwen/Qwen3-Reranker-0.6B", REV)  # another model is cached
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir(REPO_ID)
    text = one_line(e)
    assert REPO_ID in text and "HF_HUB_OFFLINE" in text
    assert f"huggingface-cli download {REPO_ID}" in text and "--model /path/to/Qwen3-Embedding-0.6B" in text
    assert all(c["local_files_only"] for c in no_network)


def test_hub_id_unreachable_fails_fast_without_downloading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           hf_cache: Path, no_network: list[Any]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: False)
    t = time.monotonic()
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir(REPO_ID)
    assert time.monotonic() - t < 10
    text = one_line(e)
    assert REPO_ID in text and "out of reach" in text and "pass the folder" in text


def fake_hub(monkeypatch: pytest.MonkeyPatch, download: Callable[..., str]) -> list[dict[str, Any]]:
    """A reachable hub whose downloads `download` answers (the cache stays empty)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        return download(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: True)
    return calls


def test_hub_id_downloads_the_files_a_checkpoint_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       hf_cache: Path) -> None:
    monkeypatch.chdir(tmp_path)
    target = make_checkpoint(tmp_path / "downloaded")
    calls = fake_hub(monkeypatch, lambda repo_id, **kw: str(target))
    assert resolve_model_dir(REPO_ID) == target
    patterns = calls[-1]["allow_patterns"]
    assert patterns == HUB_FILES
    wanted = ["config.json", "model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer_config.json"]
    assert all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in wanted)
    assert not any(fnmatch.fnmatch(f, p) for p in patterns for f in ["pytorch_model.bin", "onnx/model.onnx"])


def test_download_failure_names_the_model_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      hf_cache: Path) -> None:
    def fail(repo_id: str, **kwargs: Any) -> str:
        raise RuntimeError("boom")

    monkeypatch.chdir(tmp_path)
    fake_hub(monkeypatch, fail)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir(REPO_ID)
    text = one_line(e)
    assert f"could not download {REPO_ID}" in text and "RuntimeError: boom" in text and "pass the folder" in text


def test_download_failure_is_one_line_for_a_multi_line_hub_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 hf_cache: Path) -> None:
    def fail(repo_id: str, **kwargs: Any) -> str:
        raise RuntimeError("404 Client Error.\n\nRepository Not Found for url: https://huggingface.co/api/models/x.\n"
                           "Please make sure you specified the correct `repo_id`.")

    monkeypatch.chdir(tmp_path)
    fake_hub(monkeypatch, fail)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir(REPO_ID)
    assert "Repository Not Found" in one_line(e)


def test_hub_reachable_probes_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub._hub_reachable(timeout=2.0) is True
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # closed now: refused at once
    t = time.monotonic()
    assert hub._hub_reachable(timeout=2.0) is False
    assert time.monotonic() - t < 2.0


@pytest.mark.parametrize(("endpoint", "address"), [
    (None, ("huggingface.co", 443)),
    ("https://hf-mirror.example", ("hf-mirror.example", 443)),
    ("http://hub.internal", ("hub.internal", 80)),
    ("http://hub.internal:8080/", ("hub.internal", 8080)),
])
def test_hub_reachable_address_and_timeout(endpoint: str | None, address: tuple[str, int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[object, object]] = []

    def connect(addr: tuple[str, int], timeout: float | None = None) -> socket.socket:
        seen.append((addr, timeout))
        raise OSError("no network in tests")

    if endpoint is None:
        monkeypatch.delenv("HF_ENDPOINT", raising=False)
    else:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(socket, "create_connection", connect)
    assert hub._hub_reachable(timeout=1.5) is False
    assert seen == [(address, 1.5)]


# -- safetensors_files -------------------------------------------------------------------------------------
def test_single_and_unindexed_files(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "one")
    (folder / "tokenizer.json").write_text("{}")
    assert safetensors_files(folder) == [folder / "model.safetensors"]
    write_weights(folder / "a.safetensors", 1)
    assert safetensors_files(folder) == [folder / "a.safetensors", folder / "model.safetensors"]


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_index_names_the_shards_in_name_order(order: tuple[int, int], tmp_path: Path) -> None:
    shards = make_sharded(tmp_path / "ckpt", order)
    write_weights(tmp_path / "ckpt" / "stray.safetensors")  # not in the index: not a weight file
    assert safetensors_files(tmp_path / "ckpt") == shards


def test_index_shared_shard_listed_once(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shards = make_sharded(folder)
    index = {"metadata": {}, "weight_map": {"a": shards[1].name, "b": shards[0].name, "c": shards[1].name}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert safetensors_files(folder) == shards


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    shards = make_sharded(tmp_path / "ckpt")
    shards[1].unlink()
    with pytest.raises(WeightsError) as e:
        safetensors_files(tmp_path / "ckpt")
    assert "missing" in one_line(e) and shards[1].name in str(e.value)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"metadata": {}}), json.dumps({"weight_map": ["a"]}),
                                  json.dumps({"weight_map": {"a": 3}})])
def test_unreadable_index(text: str, tmp_path: Path) -> None:
    make_sharded(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(text)
    with pytest.raises(WeightsError) as e:
        safetensors_files(tmp_path / "ckpt")
    assert "model.safetensors.index.json" in one_line(e)


def test_no_weights_names_what_was_found(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(WeightsError) as e:
        safetensors_files(folder)
    text = one_line(e)
    assert "config.json, pytorch_model.bin" in text and "save_pretrained" in text
    (folder / "config.json").unlink()
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(WeightsError, match="found: nothing"):
        safetensors_files(folder)


# -- weights_fingerprint -----------------------------------------------------------------------------------
def test_fingerprint_is_stable_and_location_free(tmp_path: Path, hf_cache: Path) -> None:
    folder = make_checkpoint(tmp_path / "a" / "ckpt")
    fp = weights_fingerprint(folder)
    assert len(fp) == 32 and int(fp, 16) >= 0
    assert weights_fingerprint(str(folder)) == fp
    copy = Path(shutil.copytree(folder, tmp_path / "elsewhere" / "renamed"))
    assert weights_fingerprint(copy) == fp
    moved = folder.rename(tmp_path / "moved")
    assert weights_fingerprint(moved) == fp
    os.utime(moved / "model.safetensors", (1_000_000, 1_000_000))
    (moved / "config.json").write_text(json.dumps({"architectures": ["Qwen3Model"], "note": "changed"}))
    (moved / "README.md").write_text("not weights")
    assert weights_fingerprint(moved) == fp  # only the weights count
    snap = cache_snapshot(hf_cache, REPO_ID, REV, seed=0)  # same weights behind the cache's symlinks
    assert weights_fingerprint(snap) == fp


def test_fingerprint_changes_with_any_weight_byte(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "ckpt")
    f = folder / "model.safetensors"
    fp = weights_fingerprint(folder)
    start, size = data_start(f), f.stat().st_size
    original = f.read_bytes()
    for offset in sorted({start, start + 1, (start + size) // 2, size - 2, size - 1}):
        flip_byte(f, offset)
        assert weights_fingerprint(folder) != fp, offset
        f.write_bytes(original)
    assert weights_fingerprint(folder) == fp
    assert weights_fingerprint(make_checkpoint(tmp_path / "other", seed=1)) != fp  # other weights, same shapes


def test_fingerprint_changes_with_the_header(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "ckpt")
    fp = weights_fingerprint(folder)
    t = write_weights(folder / "model.safetensors")
    renamed = {"renamed.weight" if k == "norm.weight" else k: v for k, v in t.items()}  # same bytes, other name
    save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert weights_fingerprint(folder) != fp
    write_weights(folder / "model.safetensors", extra=1)  # one more element: other shape and size
    assert weights_fingerprint(folder) != fp


def test_fingerprint_of_a_large_file_sees_its_first_and_last_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    f = folder / "model.safetensors"
    save_file({"w": np.arange(3 * 2**18, dtype=np.float32)}, str(f))  # 3 MiB: more than 16 blocks of 64 KiB
    fp = weights_fingerprint(folder)
    for offset in (data_start(f), f.stat().st_size - 1):
        flip_byte(f, offset)
        assert weights_fingerprint(folder) != fp
        flip_byte(f, offset)
    assert weights_fingerprint(folder) == fp


def test_fingerprint_covers_every_indexed_shard(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shards = make_sharded(folder)
    fp = weights_fingerprint(folder)
    write_weights(folder / "stray.safetensors")  # not a weight file of this checkpoint
    assert weights_fingerprint(folder) == fp
    for shard in shards:
        flip_byte(shard, shard.stat().st_size - 1)
        assert weights_fingerprint(folder) != fp, shard.name
        flip_byte(shard, shard.stat().st_size - 1)
    with pytest.raises(WeightsError):
        weights_fingerprint(tmp_path)


def test_module_needs_no_torch(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "ckpt")
    code = ("import sys, qwen_embed.hub as h; d = h.resolve_model_dir(sys.argv[1]); h.safetensors_files(d); "
            "h.weights_fingerprint(d); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                         env=subprocess_env(), check=True, timeout=60)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("model", [None, 5, "", b"Qwen/Qwen3-Embedding-0.6B"])
def test_a_model_that_is_not_a_name_or_a_path_is_one_line(model: object) -> None:
    from qwen_embed import Embedder, Reranker

    for load in (Embedder.from_pretrained, Reranker.from_pretrained):
        with pytest.raises(InputError, match=r"the model must be a hub id .* or a checkpoint folder, got "
                                             + re.escape(repr(model))):
            load(model)  # type: ignore[arg-type]

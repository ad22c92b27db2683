"""Where a checkpoint's files are, without torch: a local folder or a hub id -> a folder, its weight files,
and a cheap fingerprint of its weights.

`resolve_model_dir` turns a local folder or a hub id into a folder (the local hub cache first, a
download second, a clear error when offline; never a silent fallback). `safetensors_files` lists the
weight files (the shards an index names, refused when they lie outside the folder), and
`weights_fingerprint` identifies the weights from their headers and sampled bytes.

Nothing here imports torch, so the processes that only need a checkpoint's folder (the embed-corpus
driver's checks, a Ray tokenize task) start without it. `weights.py` (the loader) re-exports every
name, so `qwen_embed.weights.resolve_model_dir` keeps working.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import InputError, ModelNotFoundError, WeightsError

HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "config_sentence_transformers.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_WEIGHT_FILE = re.compile(r"^(model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|"
                          r"pytorch_model(-\d{5}-of-\d{5})?\.bin|pytorch_model\.bin\.index\.json)$")


# a checkpoint's files other than its weights and config.json, which a writer of a new checkpoint from it copies
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json")
# how sentence-transformers loads an embedding model (Qwen3-Embedding's: last-token pooling, then normalize):
# without them it would load the folder with mean pooling, silently other embeddings
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def copy_side_files(src: Path, dst: Path, *, config: bool = False, sentence_transformers: bool = True) -> None:
    """Copy a checkpoint's tokenizer files (and config.json when `config`) from `src` into `dst`, and its
    sentence-transformers files with the module folders that modules.json names (`1_Pooling`, ...) when
    `sentence_transformers` (an embedding model written from an embedding model, not a reranker)."""
    import shutil

    names = [*(["config.json"] if config else []), *TOKENIZER_FILES,
             *(SENTENCE_TRANSFORMERS_FILES if sentence_transformers else ())]
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    if sentence_transformers and (src / "modules.json").is_file():
        try:
            modules = json.loads((src / "modules.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            modules = []
        root = src.resolve()
        for m in modules if isinstance(modules, list) else []:
            folder = m.get("path") if isinstance(m, dict) else None
            if isinstance(folder, str) and folder and (src / folder).is_dir() \
                    and (src / folder).resolve().is_relative_to(root) and "/" not in folder.strip("/"):
                shutil.copytree(src / folder, dst / folder, dirs_exist_ok=True)


def is_weight_file(name: str) -> bool:
    """Whether `name` is one of a checkpoint's weight files as transformers names them (`model.safetensors`,
    `model-00001-of-00003.safetensors`, `model.safetensors.index.json`, and the same for pytorch_model*.bin):
    a checkpoint's weights are one set of these, so a writer replacing a checkpoint replaces them all."""
    return _WEIGHT_FILE.match(name) is not None


def model_name_text(name_or_path: object) -> str:
    """A model argument as text: a non-empty hub id or path (str or os.PathLike of str), else one InputError."""
    text = os.fspath(name_or_path) if isinstance(name_or_path, str | os.PathLike) else None
    if not isinstance(text, str) or not text:
        raise InputError(f"the model must be a hub id (e.g. 'Qwen/Qwen3-Embedding-0.6B') or a checkpoint folder, "
                         f"got {name_or_path!r}.")
    return text


def resolve_model_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """A local checkpoint folder, or a hub id resolved through the local cache or a download."""
    text = model_name_text(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; pass the checkpoint folder that holds config.json.")
        return path
    missing = ModelNotFoundError(f"model folder {text} does not exist; check the path (a hub id looks like "
                                 f"'Qwen/Qwen3-Embedding-0.6B').")
    if not _HUB_ID.match(text) or text.startswith((".", "~")):
        raise missing
    if path.parent.is_dir():  # 'runs/tiny-init' with a local runs/: a missing folder, unless the cache has it
        cached = _from_cache(text)
        if cached is None:
            raise ModelNotFoundError(f"model folder {text} does not exist (its folder {path.parent} does); check "
                                     f"the path, or run the step that writes it first.")
        return cached
    return _from_hub(text)


def _from_cache(repo_id: str) -> Path | None:
    """The local hub cache's snapshot of `repo_id`, or None."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        return None


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency
        raise ModelNotFoundError("huggingface_hub is not installed; pass a local folder.") from None
    cached = _from_cache(repo_id)
    if cached is not None:
        return cached
    how = (
        f"Download it where the hub is reachable (`huggingface-cli download {repo_id}`) and pass the "
        f"folder instead, e.g. --model /path/to/{repo_id.split('/')[-1]}."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelNotFoundError(f"{repo_id} is not a local folder, and not in the local hub cache with HF_HUB_OFFLINE "
                                 f"set. {how}")
    if not _hub_reachable():
        raise ModelNotFoundError(f"{repo_id} is not a local folder, and not in the local hub cache with the hub out of "
                                 f"reach. {how}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, etag_timeout=10))
    except Exception as e:
        why = " ".join(str(e).split())  # one line: the hub's HTTP errors span several
        raise ModelNotFoundError(f"could not download {repo_id} ({type(e).__name__}: {why}). {how}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the hub endpoint, so that an offline machine fails in seconds, not minutes."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


FINGERPRINT_SAMPLES = 16
FINGERPRINT_BLOCK = 1 << 16


def weights_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """A cheap identity of a checkpoint's weights: SHA-256 over each safetensors file's header (tensor
    names, shapes, dtypes, offsets), size and 16 blocks of 64 KiB spread over its bytes.

    The same weights give the same value wherever the folder is (moved, copied, a hub cache); other
    weights differ in their sampled bytes (trained or random weights differ everywhere), so two models of
    one shape are told apart without reading gigabytes."""
    import hashlib

    h = hashlib.sha256()
    for f in safetensors_files(Path(model_dir)):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            h.update(head + fh.read(min(n, size)))
            for i in range(FINGERPRINT_SAMPLES):
                fh.seek(max(0, (size - FINGERPRINT_BLOCK) * i // max(1, FINGERPRINT_SAMPLES - 1)))
                h.update(fh.read(FINGERPRINT_BLOCK))
    return h.hexdigest()[:32]


def safetensors_files(model_dir: Path) -> list[Path]:
    """The weight files of a checkpoint: the shards named by the index, or the single file(s)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise WeightsError(f"{index} is unreadable ({e}).") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise WeightsError(f"{index}: weight_map must map tensor names to shard file names.")
        root = model_dir.resolve()
        for name in sorted(set(weight_map.values())):
            if "/" in name or "\\" in name or name in (".", "..") or \
                    not (model_dir / name).resolve().is_relative_to(root):
                raise WeightsError(f"{index} names the shard {name!r}, which is not a file of {model_dir}; shards "
                                   f"must sit in the checkpoint folder (refusing to read outside it).")
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{index} names shards that are missing: {', '.join(missing)}.")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in model_dir.iterdir())[:10]
        raise WeightsError(
            f"no *.safetensors weights in {model_dir} (found: {', '.join(found) or 'nothing'}). "
            "qwen-embed reads safetensors only; convert .bin weights with transformers' save_pretrained."
        )
    return files

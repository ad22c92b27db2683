"""`ModelFacts` (server/facts.py): what the HTTP side knows of a model, without its weights.

References: the module docstring (the facts of a folder, read without weights and without torch, are those a
loaded model gives: in process from `Embedder` / `Reranker`, in front of model processes from the folder);
the loaded model itself (`ModelFacts.of`) as the reference for `from_folder`; the documented defaults (the
batch token budget "65536 on CUDA, 8192 on CPU", `Embedder.from_pretrained`; weights "bfloat16 on CUDA,
float32 elsewhere", `settings.weights_dtype_name`; max length 8192 or the model's limit); and the checkpoint's
own config.json read with the standard library.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.errors import ConfigError, InputError, ModelNotFoundError, QwenEmbedError
from qwen_embed.server.facts import ModelFacts

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def short_embedder(tiny_embedding_path: Path) -> Embedder:
    return Embedder.from_pretrained(tiny_embedding_path, device="cpu", max_length=40)


def comparable(facts: ModelFacts) -> dict[str, object]:
    """Every field but the tokenizer object (compared by what it does)."""
    return {f.name: getattr(facts, f.name) for f in dataclasses.fields(facts) if f.name != "tokenizer"}


def test_the_facts_of_a_folder_are_those_of_the_loaded_model(short_embedder: Embedder,
                                                             tiny_embedding_path: Path) -> None:
    of_model = ModelFacts.of(short_embedder)
    of_folder = ModelFacts.from_folder(str(tiny_embedding_path), ["cpu"], None, 40, None)
    assert comparable(of_folder) == comparable(of_model)
    text = "The capital of China is Beijing. 北京"
    assert of_folder.tokenizer.encode_one(text) == of_model.tokenizer.encode_one(text)


def test_the_facts_of_a_loaded_model(short_embedder: Embedder, tiny_embedding_path: Path) -> None:
    facts = ModelFacts.of(short_embedder)
    config = json.loads((tiny_embedding_path / "config.json").read_text())
    assert facts.path == tiny_embedding_path and facts.name == str(tiny_embedding_path)
    assert (facts.config.hidden_size, facts.config.vocab_size) == (config["hidden_size"], config["vocab_size"]) \
        == (64, 151936)
    assert (facts.max_length, facts.batch_tokens, facts.device, facts.dtype) == (40, 8192, "cpu", "float32")


def test_the_facts_of_a_reranker(tiny_reranker_path: Path) -> None:
    rr = Reranker.from_pretrained(tiny_reranker_path, device="cpu", max_length=128, batch_tokens=1000)
    facts = ModelFacts.of(rr)
    assert (facts.max_length, facts.batch_tokens, facts.device, facts.dtype) == (128, 1000, "cpu", "float32")
    folder = ModelFacts.from_folder(str(tiny_reranker_path), ["cpu"], None, 128, 1000)
    assert comparable(folder) == comparable(facts)


@pytest.mark.parametrize(("devices", "dtype", "device", "expected"), [
    (["cpu"], None, "cpu", "float32"),
    (["cpu"], "bf16", "cpu", "bfloat16"),
    (["cpu"], "torch.float16", "cpu", "float16"),
    (["cpu"], "int8", "cpu", "float32"),  # int8 linear layers over float32 weights
    (["cuda:0"], None, "cuda:0", "bfloat16"),
    (["cuda:0", "cuda:1"], "float32", "cuda:0,cuda:1", "float32"),
])
def test_device_and_dtype_as_reported(tiny_embedding_path: Path, devices: list[str], dtype: str | None,
                                      device: str, expected: str) -> None:
    """Read from the folder alone, so a CUDA device needs no GPU here."""
    facts = ModelFacts.from_folder(str(tiny_embedding_path), devices, dtype, 64, None)
    assert (facts.device, facts.dtype) == (device, expected)


@pytest.mark.parametrize(("devices", "batch_tokens", "expected"), [
    (["cpu"], None, 8192), (["cuda:0"], None, 65536), (["cuda:1", "cuda:2"], None, 65536), (["cpu"], 300, 300),
])
def test_batch_tokens_default_by_device(tiny_embedding_path: Path, devices: list[str], batch_tokens: int | None,
                                        expected: int) -> None:
    assert ModelFacts.from_folder(str(tiny_embedding_path), devices, None, 64, batch_tokens).batch_tokens == expected


@pytest.mark.parametrize(("max_length", "error"), [
    (1, "max_length=1 is out of range: use 2..32768"), (32769, "max_length=32769 is out of range: use 2..32768"),
])
def test_a_max_length_over_the_models_limit_is_refused(tiny_embedding_path: Path, max_length: int,
                                                       error: str) -> None:
    with pytest.raises(InputError, match=error):
        ModelFacts.from_folder(str(tiny_embedding_path), ["cpu"], None, max_length, None)


@pytest.mark.parametrize(("devices", "dtype", "error"), [
    (["cuda:0"], "int8", "int8 runs on the CPU only"), (["cpu"], "int4", "dtype 'int4' is not supported"),
])
def test_a_dtype_that_cannot_load_is_refused_as_loading_would(tiny_embedding_path: Path, devices: list[str],
                                                              dtype: str, error: str) -> None:
    with pytest.raises(QwenEmbedError, match=error) as info:
        ModelFacts.from_folder(str(tiny_embedding_path), devices, dtype, 64, None)
    assert "\n" not in str(info.value)


def test_a_missing_folder_or_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist; check the path") as missing:
        ModelFacts.from_folder(str(tmp_path / "nope"), ["cpu"], None, 64, None)
    with pytest.raises(ConfigError, match=r"config\.json does not exist") as no_config:
        ModelFacts.from_folder(str(tmp_path), ["cpu"], None, 64, None)
    assert "\n" not in str(missing.value) + str(no_config.value)


def test_facts_are_frozen(tiny_embedding_path: Path) -> None:
    facts = ModelFacts.from_folder(str(tiny_embedding_path), ["cpu"], None, 64, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.max_length = 10  # type: ignore[misc]


def module_imports(name: str) -> set[str]:
    """The modules `name` imports when it is imported: its top-level imports, not those under TYPE_CHECKING
    or inside functions (relative ones resolved), read from its source."""
    path = SRC / (name.replace(".", "/") + ".py")
    if not path.is_file():
        path = SRC / name.replace(".", "/") / "__init__.py"
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names
                         if (SRC / module.replace(".", "/") / f"{a.name}.py").is_file())
    return found


def test_facts_can_be_read_without_importing_torch() -> None:
    """The module docstring: torch is not imported here (the `serve --workers` supervisor reads facts)."""
    seen: set[str] = set()
    todo = ["qwen_embed.server.facts", "qwen_embed", "qwen_embed.server"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for m in module_imports(name) if m.startswith("qwen_embed"))
    third_party = {m.split(".")[0] for n in seen for m in module_imports(n) if not m.startswith("qwen_embed")}
    assert "qwen_embed.tokenizer" in seen and "qwen_embed.config" in seen  # the walk follows the imports
    assert "torch" not in third_party, sorted(n for n in seen if "torch" in module_imports(n))

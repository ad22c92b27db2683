"""Shared fixtures: the one tiny-checkpoint factory, the models loaded from it, and the shared data folder.

`tiny_checkpoint(kind, **options)` writes a random-weight checkpoint with `qwen_embed.tiny.make_checkpoint`
once per session for each distinct request; every checkpoint fixture is one request of it:

- `tiny_embedding_path` / `tiny_reranker_path`: hidden 64, 2 layers, the real Qwen tokenizer when
  ../shared has it (else the small one); loaded as `embedder` / `reranker`.
- `small_embedding_path` / `small_reranker_path`: the same shape with the small (~1k) tokenizer: short
  sequences, fast to train and to serve; loaded as `small_embedder` (64-token context) and
  `small_reranker` (256-token context, card template).

`../shared/data` beside the repository holds real data (BEIR SciFact, the real Qwen tokenizer,
trec_eval outputs); tests that need it take the `shared_data` fixture and skip, saying why, when it
is absent. Tests that start a process pass `tests.threads.subprocess_env()`: one torch thread there too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.threads import ONE_THREAD

# One thread per test process and per process it starts (they inherit the environment; tests that build an
# environment use `tests.threads.subprocess_env`). Set before torch starts its pools.
os.environ.update(ONE_THREAD)
# No CA certificates to load (tests/no-ca/README.md): every httpx client the tests make read the system's CA
# bundle, ~20 ms of CPU each, 20 CPU-seconds a run. No test makes a TLS connection (there is no network).
os.environ.pop("SSL_CERT_FILE", None)
os.environ["SSL_CERT_DIR"] = str(Path(__file__).resolve().parent / "no-ca")

import pytest

if TYPE_CHECKING:
    from qwen_embed import Embedder, Reranker


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """torch.set_num_threads(1) in every process that runs tests (ONE_THREAD above already starts torch so).
    Torch and the package are imported where used, not here: an xdist controller, which runs no test, then
    starts its workers without first importing torch (~1.2 s on one core while the other waits)."""
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """After each test (its teardown done): collect its garbage now, then freeze what is left alive (session
    and module fixtures, imported modules) out of the garbage collector's later passes. Each full collection
    of a test process walked every object torch, transformers, Ray and the models had made (1M+): 14-16 of
    them, 4.3-5.1 s per xdist worker; now each test's collection walks only what that test made, 1.9-2.2 s
    per worker in all. A cycle that becomes garbage later among frozen objects is never collected (memory
    only: fixtures release their resources in their teardown); the objects at the end of a run are as many
    as before (1.1M). An unraisable exception of a test's garbage is reported with the next test."""
    import gc

    try:
        return (yield)
    finally:
        gc.collect()
        gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with the most tests marked slow run first, each module's tests together and in their order.
    xdist hands tests to its workers in this order, and a worker that runs out takes pending tests from the
    other; a test already started cannot move, so a 20-30 s test (training that must learn, the recipe run
    end to end) near the end of the list ran alone on one core while the other waited. With them first,
    the run ends on the many short tests, which the two workers share out evenly."""
    from collections import Counter

    modules = {i.nodeid: i.nodeid.split("::")[0] for i in items}
    slow = Counter(modules[i.nodeid] for i in items if i.get_closest_marker("slow") is not None)
    rank = {m: n for n, m in enumerate(sorted(dict.fromkeys(modules.values()), key=lambda m: -slow[m]))}  # stable
    items.sort(key=lambda i: rank[modules[i.nodeid]])


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The test process is about to end (a worker, or the controller): skip the interpreter's last garbage
    collection, as qwen-embed's own commands do (`processes.skip_final_gc`). It ran after the test run of
    each xdist worker, over everything torch, transformers, Ray and the models made: 2-3.5 s of exit that
    the controller waited for, and ~0.7 s in the controller. Trylast: pytest's check for unraisable
    exceptions collects the garbage first and reports what it finds, as before."""
    import gc

    gc.freeze()


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repository in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_tokenizer_path(shared_data: Path) -> Path:
    """The real Qwen3 tokenizer.json (../shared/data/tokenizers/qwen)."""
    return shared_data / "tokenizers" / "qwen" / "tokenizer.json"


@pytest.fixture
def encoded_chars(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], list[int]]:
    """`encoded_chars(tokenizer)` -> a list that gets the length of every string the QwenTokenizer's
    `tokenizers` object encodes from then on (to show that a long text is read only as far as needed)."""

    def spy(tok: Any) -> list[int]:
        seen: list[int] = []
        inner = tok.tok

        class Spy:
            def encode_batch(self, texts: list[str], add_special_tokens: bool) -> Any:
                seen.extend(map(len, texts))
                return inner.encode_batch(texts, add_special_tokens=add_special_tokens)

            def encode(self, text: str, add_special_tokens: bool) -> Any:
                seen.append(len(text))
                return inner.encode(text, add_special_tokens=add_special_tokens)

        monkeypatch.setattr(tok, "tok", Spy())
        return seen

    return spy


TinyCheckpoint = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """The one tiny-checkpoint factory: `tiny_checkpoint(kind="embedding", **make_checkpoint options)` -> a
    folder, written once per session for each distinct (kind, options); treat it as read-only."""
    made: dict[tuple[str, tuple[tuple[str, Any], ...]], Path] = {}

    def get(kind: str = "embedding", **options: Any) -> Path:
        from qwen_embed.tiny import make_checkpoint

        key = (kind, tuple(sorted(options.items())))
        if key not in made:  # a distinct folder name per checkpoint: the index tells models apart by name
            name = f"tiny-{kind}" + (f"-{len(made)}" if options else "")
            made[key] = make_checkpoint(tmp_path_factory.mktemp("ckpt") / name, kind,  # type: ignore[arg-type]
                                        **options)
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny_embedding_path(tiny_checkpoint: TinyCheckpoint) -> Path:
    """Tiny embedding checkpoint (hidden 64, 2 layers); real Qwen tokenizer when ../shared has it."""
    return tiny_checkpoint("embedding")


@pytest.fixture(scope="session")
def tiny_reranker_path(tiny_checkpoint: TinyCheckpoint) -> Path:
    """Tiny causal-LM reranker checkpoint (hidden 64, 2 layers)."""
    return tiny_checkpoint("reranker")


@pytest.fixture(scope="session")
def small_embedding_path(tiny_checkpoint: TinyCheckpoint) -> Path:
    """Tiny embedding checkpoint with the small (~1k) tokenizer: short sequences, fast to train and serve."""
    return tiny_checkpoint("embedding", tokenizer="small")


@pytest.fixture(scope="session")
def small_reranker_path(tiny_checkpoint: TinyCheckpoint) -> Path:
    """Tiny causal-LM reranker with the small (~1k) tokenizer."""
    return tiny_checkpoint("reranker", tokenizer="small")


@pytest.fixture(scope="session")
def embedder(tiny_embedding_path: Path) -> Embedder:
    from qwen_embed import Embedder

    return Embedder.from_pretrained(tiny_embedding_path, device="cpu")


@pytest.fixture(scope="session")
def reranker(tiny_reranker_path: Path) -> Reranker:
    from qwen_embed import Reranker

    return Reranker.from_pretrained(tiny_reranker_path, device="cpu")


@pytest.fixture(scope="session")
def small_embedder(small_embedding_path: Path) -> Embedder:
    """The small-tokenizer embedder with a 64-token context."""
    from qwen_embed import Embedder

    return Embedder.from_pretrained(small_embedding_path, device="cpu", max_length=64)


@pytest.fixture(scope="session")
def small_reranker(small_reranker_path: Path) -> Reranker:
    """The small-tokenizer reranker with a 256-token context (card template)."""
    from qwen_embed import Reranker

    return Reranker.from_pretrained(small_reranker_path, device="cpu", max_length=256)

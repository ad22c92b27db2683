"""Settings: flag over QWEN_EMBED_* variable over default; validation messages."""

from __future__ import annotations

import pytest

from qwen_embed.errors import InputError
from qwen_embed.server.settings import SETTINGS, ServerSettings, default_of, resolve


def test_flag_over_env_over_default() -> None:
    env = {"QWEN_EMBED_EMBEDDING_MODEL": "from-env", "QWEN_EMBED_PORT": "9001", "QWEN_EMBED_MAX_WAIT_MS": "2.5",
           "QWEN_EMBED_PUBLIC_PATHS": "/health, /info", "QWEN_EMBED_WARMUP": "false", "QWEN_EMBED_API_KEY": ""}
    s = resolve({"port": 9002}, env)
    assert s.embedding_model == "from-env" and s.port == 9002 and s.max_wait_ms == 2.5
    assert s.public_paths == ("/health", "/info") and s.warmup is False
    assert s.api_key is None  # an empty variable counts as unset
    assert s.max_queue == ServerSettings().max_queue == default_of("max_queue")


def test_every_field_has_a_flag_and_a_variable() -> None:
    fields = set(ServerSettings.__dataclass_fields__)
    assert {s.name for s in SETTINGS} == fields
    assert all(s.env == "QWEN_EMBED_" + s.name.upper() and s.flag.startswith("--") and s.help for s in SETTINGS)


@pytest.mark.parametrize(("flags", "env", "words"), [
    ({}, {}, "nothing to serve"),
    ({"embedding_model": "m"}, {"QWEN_EMBED_PORT": "eighty"}, "QWEN_EMBED_PORT='eighty' is not valid"),
    ({"embedding_model": "m"}, {"QWEN_EMBED_WARMUP": "maybe"}, "use true/false"),
    ({"embedding_model": "m", "max_queue": 0}, {}, "max-queue=0 must be at least 1"),
    ({"embedding_model": "m", "max_wait_ms": -1.0}, {}, "max-wait-ms=-1.0 is out of range"),
    ({"embedding_model": "m", "port": 70000}, {}, "port=70000 is out of range"),
    ({"embedding_model": "m", "max_batch_tokens": 0}, {}, "max-batch-tokens=0"),
])
def test_bad_settings_say_what_and_how(flags: dict[str, object], env: dict[str, str], words: str) -> None:
    with pytest.raises(InputError, match=None) as e:
        resolve(flags, env)
    assert words in str(e.value)

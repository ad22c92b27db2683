"""Layering: no library module imports a CLI module (the CLI is a leaf), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "qwen_embed"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module or module.name) of every import in `source`, at any depth (lazy ones too);
    `package` is the package the file sits in, for relative imports."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def is_cli(module: str) -> bool:
    return module.startswith("qwen_embed") and module.split(".")[-1] == "cli"


def test_no_library_module_imports_a_cli_module() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if is_cli(name) or name.endswith("__main__"):
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        bad += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {mod}"
                for line, mod in imports_of(path.read_text(encoding="utf-8"), package) if is_cli(mod)]
    assert not bad, "library modules must not import the CLI:\n" + "\n".join(bad)


def test_the_reader_resolves_relative_and_lazy_imports() -> None:
    source = "import os\ndef f():\n    from ..cli import atomic_output\n    from . import cli\n"
    found = [m for _, m in imports_of(source, "qwen_embed.eval")]
    assert "qwen_embed.cli" in found and "qwen_embed.eval.cli" in found
    assert [m for m in found if is_cli(m)] == ["qwen_embed.cli", "qwen_embed.eval.cli"]
    assert not any(is_cli(m) for _, m in imports_of("from .client import x\nimport clickhouse", "qwen_embed"))

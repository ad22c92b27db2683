"""The public interface only grows: `--help` of every command and the server's OpenAPI document.

`snapshots/interface.json` holds the interface of an earlier tree: for every command and subcommand,
its options (flags, default, whether required, choices, nargs), positionals, subcommands and the
`--help` text; and the OpenAPI document of the server built around tiny models. A later tree must
keep all of it, and may only add: new commands, new options (not required), new choices, new
routes, new response fields, new optional request fields. Help wording may change (the snapshot
keeps the text so that a diff shows it).

After an intended addition, refresh the snapshot with
`QWEN_EMBED_UPDATE_INTERFACE=1 pytest tests/test_interface.py` and commit it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest

SNAPSHOT = Path(__file__).parent / "snapshots" / "interface.json"
UPDATE = os.environ.get("QWEN_EMBED_UPDATE_INTERFACE") == "1"


# -- the interface as data -----------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return repr(value)


def _parser_interface(parser: argparse.ArgumentParser) -> dict[str, Any]:
    options: dict[str, Any] = {}
    positionals: list[dict[str, Any]] = []
    commands: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands[name] = _parser_interface(sub)
            continue
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        row = {"dest": action.dest, "default": _plain(action.default), "required": bool(action.required),
               "nargs": _plain(action.nargs), "choices": _plain(list(action.choices) if action.choices else None),
               "takes_value": action.nargs != 0}
        if action.option_strings:
            for flag in action.option_strings:
                options[flag] = row
        else:
            positionals.append(row)
    return {"help": parser.format_help(), "options": options, "positionals": positionals, "commands": commands}


def cli_interface() -> dict[str, Any]:
    """Every command of `qwen-embed`, recursively (help formatted 100 columns wide)."""
    from qwen_embed.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return _parser_interface(build_parser())
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def openapi_interface(embedder: Any, reranker: Any) -> dict[str, Any]:
    """The OpenAPI document of the server around both tiny models (as tests/server builds it)."""
    from qwen_embed.server import ServerSettings, create_app

    settings = ServerSettings(embedding_model="emb", reranker_model="rr", max_wait_ms=10, max_length=64)
    app = create_app(settings, embedder=embedder, reranker=reranker)
    return json.loads(json.dumps(app.openapi()))


@pytest.fixture(scope="module")
def current(embedder: Any, reranker: Any) -> dict[str, Any]:
    return {"cli": cli_interface(), "openapi": openapi_interface(embedder, reranker)}


# -- comparison: only additions ------------------------------------------------------------------
def _compare_parser(old: dict[str, Any], new: dict[str, Any], where: str, problems: list[str]) -> None:
    for name, sub in old["commands"].items():
        if name not in new["commands"]:
            problems.append(f"{where} {name}: command removed")
        else:
            _compare_parser(sub, new["commands"][name], f"{where} {name}", problems)
    for flag, row in old["options"].items():
        now = new["options"].get(flag)
        if now is None:
            problems.append(f"{where} {flag}: option removed")
            continue
        for key in ("default", "nargs", "takes_value"):
            if now[key] != row[key]:
                problems.append(f"{where} {flag}: {key} changed {row[key]!r} -> {now[key]!r}")
        if now["required"] and not row["required"]:
            problems.append(f"{where} {flag}: became required")
        if row["choices"] is not None and now["choices"] is not None \
                and not set(row["choices"]) <= set(now["choices"]):
            problems.append(f"{where} {flag}: choices lost {set(row['choices']) - set(now['choices'])}")
        if row["choices"] is None and now["choices"] is not None:
            problems.append(f"{where} {flag}: now restricted to choices {now['choices']}")
    for flag, row in new["options"].items():
        if flag not in old["options"] and row["required"]:
            problems.append(f"{where} {flag}: a new option must not be required")
    old_pos = [(p["dest"], p["nargs"], p["default"]) for p in old["positionals"]]
    new_pos = [(p["dest"], p["nargs"], p["default"]) for p in new["positionals"]]

    def same_or_widened(was: tuple[object, ...], now: tuple[object, ...]) -> bool:
        """A positional kept, or made optional (a required one taking nargs='?': every old call still works)."""
        return was == now or (was[0] == now[0] and (was[1], now[1]) in ((None, "?"), ("+", "*")))

    kept = len(new_pos) >= len(old_pos) and all(same_or_widened(a, b) for a, b in zip(old_pos, new_pos, strict=False))
    if not kept or any(p["required"] for p in new["positionals"][len(old_pos):]):
        problems.append(f"{where}: positionals changed {old_pos} -> {new_pos}")


def _refs(node: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                out.add(v.rsplit("/", 1)[-1])
            else:
                out |= _refs(v)
    elif isinstance(node, list):
        for v in node:
            out |= _refs(v)
    return out


def _closure(names: set[str], schemas: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in schemas:
            continue
        seen.add(name)
        todo.extend(_refs(schemas[name]))
    return seen


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _compare_schema(old: Any, new: Any, where: str, is_request: bool, problems: list[str]) -> None:
    if not isinstance(old, dict) or not isinstance(new, dict):
        if old != new:
            problems.append(f"{where}: changed {old!r} -> {new!r}")
        return
    for key in ("type", "$ref", "format"):
        if old.get(key) != new.get(key):
            problems.append(f"{where}: {key} changed {old.get(key)!r} -> {new.get(key)!r}")
    if "enum" in old and not {_canonical(v) for v in old["enum"]} <= {_canonical(v) for v in new.get("enum", [])}:
        problems.append(f"{where}: enum values removed")
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, sub in old_props.items():
        if name not in new_props:
            problems.append(f"{where}.{name}: field removed")
        else:
            _compare_schema(sub, new_props[name], f"{where}.{name}", is_request, problems)
    old_req, new_req = set(old.get("required", [])), set(new.get("required", []))
    if is_request and not new_req <= old_req:
        problems.append(f"{where}: request fields became required: {sorted(new_req - old_req)}")
    if not is_request and not old_req <= new_req:
        problems.append(f"{where}: response fields became optional: {sorted(old_req - new_req)}")
    for key in ("items", "additionalProperties"):
        if key in old:
            _compare_schema(old[key], new.get(key), f"{where}[{key}]", is_request, problems)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in old:
            for i, alt in enumerate(old[key]):  # each old alternative lives on in a compatible new one
                if not any(_compatible(alt, now, is_request) for now in new.get(key, [])):
                    problems.append(f"{where}: {key}[{i}] alternative removed or narrowed")


def _compatible(old: Any, new: Any, is_request: bool) -> bool:
    found: list[str] = []
    _compare_schema(old, new, "", is_request, found)
    return not found


def _compare_openapi(old: dict[str, Any], new: dict[str, Any], problems: list[str]) -> None:
    for path, ops in old["paths"].items():
        for method, op in ops.items():
            now = new["paths"].get(path, {}).get(method)
            if now is None:
                problems.append(f"{method.upper()} {path}: route removed")
                continue
            old_params = {(p["name"], p["in"]): p for p in op.get("parameters", [])}
            new_params = {(p["name"], p["in"]): p for p in now.get("parameters", [])}
            for key, p in old_params.items():
                if key not in new_params:
                    problems.append(f"{method.upper()} {path}: parameter {key} removed")
                elif new_params[key].get("required") and not p.get("required"):
                    problems.append(f"{method.upper()} {path}: parameter {key} became required")
            for key, p in new_params.items():
                if key not in old_params and p.get("required"):
                    problems.append(f"{method.upper()} {path}: new parameter {key} is required")
            if _canonical(op.get("requestBody", {}).get("content", {})) != \
                    _canonical(now.get("requestBody", {}).get("content", {})):
                problems.append(f"{method.upper()} {path}: request body schema changed")
            for status in op.get("responses", {}):
                if status not in now.get("responses", {}):
                    problems.append(f"{method.upper()} {path}: response {status} removed")
    old_schemas = old.get("components", {}).get("schemas", {})
    new_schemas = new.get("components", {}).get("schemas", {})
    request_refs: set[str] = set()
    for ops in old["paths"].values():
        for op in ops.values():
            request_refs |= _refs(op.get("requestBody", {})) | _refs(op.get("parameters", []))
    requests = _closure(request_refs, old_schemas)
    for name, schema in old_schemas.items():
        if name not in new_schemas:
            problems.append(f"schema {name}: removed")
        else:
            _compare_schema(schema, new_schemas[name], f"schema {name}", name in requests, problems)


# -- the tests -----------------------------------------------------------------------------------
def test_interface_only_grows(current: dict[str, Any]) -> None:
    if UPDATE:
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    old = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    problems: list[str] = []
    _compare_parser(old["cli"], current["cli"], "qwen-embed", problems)
    _compare_openapi(old["openapi"], current["openapi"], problems)
    assert not problems, "the public interface lost or changed something:\n" + "\n".join(problems)


def test_snapshot_covers_every_command() -> None:
    """The snapshot is not empty: it holds the commands and routes the package is known to have."""
    old = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert {"embed", "rerank", "info", "make-tiny", "serve", "index", "search", "eval", "train", "mine",
            "merge-lora"} <= set(old["cli"]["commands"])
    assert {"/v1/embeddings", "/v1/rerank"} <= set(old["openapi"]["paths"])


def test_comparison_catches_a_removed_option_and_a_new_required_field(current: dict[str, Any]) -> None:
    """The checker itself can fail: drop an option and make a request field required."""
    old = json.loads(json.dumps(current))
    new = json.loads(json.dumps(current))
    del new["cli"]["commands"]["embed"]["options"]["--dim"]
    new["cli"]["commands"]["rerank"]["options"]["--top-n"] = {
        **new["cli"]["commands"]["rerank"]["options"]["--top-n"], "default": 5}
    problems: list[str] = []
    _compare_parser(old["cli"], new["cli"], "qwen-embed", problems)
    assert any("--dim: option removed" in p for p in problems)
    assert any("--top-n: default changed" in p for p in problems)
    schemas = new["openapi"]["components"]["schemas"]
    name = next(n for n in schemas if n.startswith("EmbeddingRequest") or n.startswith("Embed"))
    schemas[name]["required"] = sorted(set(schemas[name].get("required", [])) | set(schemas[name]["properties"]))
    problems = []
    _compare_openapi(old["openapi"], new["openapi"], problems)
    assert any("became required" in p for p in problems), problems

"""A recipe file: named stages in order, each one of the package's jobs with its settings.

    name: scifact-small
    workdir: runs/recipe           # every stage writes its folder here (relative to the recipe file)
    evaluate: {dataset: data/scifact, split: test, max_queries: 300}   # held-out metric after each stage
    stages:
      - {name: weak, kind: pairs, sources: [{beir: data/scifact, pairs: title-text}]}
      - {name: stage1, kind: train-embed, config: {model: {path: runs/init}, data: {train_files: [{from: weak.train}]}}}
      - {name: mined, kind: mine, model: {from: stage1.model}, input: {from: weak.train}}
      ...

A value `{from: STAGE.OUTPUT}` anywhere in a stage's settings is replaced by the path of that output
of an earlier stage when the stage runs. `check_recipe` validates the whole file before any work:
unique names, known kinds, settings each kind accepts, references to existing outputs of earlier
stages only (a reference to a later stage, to itself or around a cycle is refused, naming it), then
every setting of every stage as its run would check it (a training stage's `config:` by the training
package's own parser), references standing for paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, is_whole
from ..textio import read_yaml

REF_KEY = "from"


@dataclass(frozen=True)
class Ref:
    """A reference to an output of an earlier stage (`{from: stage.output}`)."""

    stage: str
    output: str

    def __str__(self) -> str:
        return f"{self.stage}.{self.output}"


@dataclass(frozen=True)
class Stage:
    """One stage: its name, kind and raw settings (references unresolved)."""

    name: str
    kind: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class Recipe:
    """A parsed, checked recipe."""

    name: str
    path: Path  # the recipe file
    workdir: Path  # absolute
    stages: list[Stage]
    evaluate: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def stage(self, name: str) -> Stage:
        """The stage called `name`; KeyError naming the stages there are when none is."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"recipe {self.path} has no stage {name!r}; its stages are "
                       f"{', '.join(s.name for s in self.stages)}.")


def parse_ref(value: Any, where: str) -> Ref | None:
    """A `{from: "stage.output"}` mapping as a Ref; None for any other value."""
    if not isinstance(value, dict) or REF_KEY not in value:
        return None
    if len(value) != 1 or not isinstance(value[REF_KEY], str) or value[REF_KEY].count(".") != 1:
        raise InputError(f"{where}: a reference is written {{from: STAGE.OUTPUT}} (one key, e.g. "
                         f"{{from: stage1.model}}), got {value!r}.")
    stage, output = value[REF_KEY].split(".")
    return Ref(stage, output)


def refs_in(value: Any, where: str) -> Iterator[tuple[str, Ref]]:
    """Every reference inside a settings value, with the dotted key path where it sits."""
    ref = parse_ref(value, where)
    if ref is not None:
        yield where, ref
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from refs_in(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from refs_in(v, f"{where}[{i}]")


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and check a recipe YAML file (see the module docstring)."""
    from .stages import check_recipe

    p = Path(path)
    raw = read_yaml(p, "recipe")
    if not isinstance(raw, dict):
        raise InputError(f"recipe {p} must be a mapping with `stages:` (and optional name, workdir, evaluate).")
    known = {"name", "workdir", "stages", "evaluate", "seed"}
    unknown = sorted(set(raw) - known, key=str)
    if unknown:
        raise InputError(f"recipe {p}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(known))}.")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise InputError(f"recipe {p} needs a non-empty list `stages:`.")
    stages = []
    for i, s in enumerate(stages_raw):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("kind"), str):
            raise InputError(f"recipe {p}: stage {i + 1} needs a string `name` and `kind`, got {s!r:.80}.")
        stages.append(Stage(s["name"], s["kind"], {k: v for k, v in s.items() if k not in ("name", "kind")}))
    for key, example in (("name", "scifact-small"), ("workdir", "runs/recipe")):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InputError(f"recipe {p}: `{key}` must be a non-empty string (e.g. {key}: {example}), "
                             f"got {value!r:.80}; quote a number.")
    workdir = Path(raw.get("workdir") or f"runs/{p.stem}")
    if not workdir.is_absolute():
        workdir = (p.parent / workdir).resolve()
    evaluate = raw.get("evaluate")
    if evaluate is None:
        evaluate = {}
    if not isinstance(evaluate, dict):
        raise InputError(f"recipe {p}: `evaluate` must be a mapping such as {{dataset: PATH, split: test}}.")
    seed = raw.get("seed", 0)
    if not is_whole(seed):
        raise InputError(f"recipe {p}: seed must be an integer, got {seed!r}.")
    recipe = Recipe(str(raw.get("name") or p.stem), p.resolve(), workdir, stages, evaluate, seed)
    check_recipe(recipe)
    return recipe

"""Run a recipe: stages in order, each skipped when done with the same settings, resumed when interrupted.

Folders under the recipe's `workdir`:
- `STAGE/` holds a finished stage: its outputs and `stage.json` (kind, fingerprint, outputs, stats,
  seconds, held-out metric). The folder appears by an atomic rename of `STAGE.partial/` once the
  stage finished: its existence is the proof that the stage ran.
- `STAGE.partial/` is a stage in progress. Its command's own resume applies: a training stage picks
  up from its last checkpoint, mining from its last written chunk. One that already holds its
  `stage.json` of the same fingerprint (killed just before the rename) is renamed, not run again.
- `STAGE.replaced/` is a finished stage moved aside for a moment while its new version takes its place
  (`_install`); a run killed in that moment leaves it, and the next run puts it back (or deletes it,
  when the new version is in place).

A stage's fingerprint covers its kind, its settings and, for every `{from: ...}` reference, the
fingerprint of the referenced stage. A finished stage whose fingerprint still matches is skipped; a
changed setting changes the fingerprint of that stage and of every stage after it that uses it, so
exactly those re-run. A finished stage is never deleted before its replacement has finished: the new
version runs in `STAGE.partial/` while `STAGE/` stays as it was (a rerun that fails or is killed leaves
it there, finished), and replaces it by two renames once complete. Every setting of every stage is
checked when the recipe loads (`stages.check_recipe`), before any of this. Files named by path in the
settings are fingerprinted by path only: after changing such a file in place, pass `--rerun STAGE`.

Paths in a stage's stats that name its partial folder are recorded as they are after the rename.

After each stage that makes an embedding model, the recipe's `evaluate` set (a BEIR split) measures
it; `recipe_report.md` and `recipe_report.png` sum up the stages at the end.

A workdir belongs to one recipe (its `name:`, recorded in `.recipe.json`): another recipe pointed at it is
refused, since its stages of the same names would replace that recipe's. One run works in a workdir at a
time (`files.OutputLock`): a second run started meanwhile is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import OutputLock, fingerprint, write_json_atomic
from .spec import Recipe, Ref, parse_ref
from .stages import KINDS, HeldOut, StageContext, retrieval_metric

MARKER = ".recipe.json"
RECORD = "stage.json"
FORMAT = 1
REPLACED = ".replaced"  # STAGE.replaced: a finished stage moved aside while its new version is renamed in


@dataclass
class StageRecord:
    """What a finished stage recorded in its stage.json."""

    name: str
    kind: str
    fingerprint: str
    outputs: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    metric: dict[str, Any] | None = None
    status: str = "ran"  # ran / skipped (this time)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "fingerprint": self.fingerprint, "outputs": self.outputs,
                "stats": self.stats, "seconds": self.seconds, "metric": self.metric, "format": FORMAT}


def _read_record(folder: Path) -> StageRecord | None:
    try:
        raw = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        return StageRecord(raw["name"], raw["kind"], raw["fingerprint"], raw["outputs"], raw.get("stats", {}),
                           float(raw.get("seconds", 0.0)), raw.get("metric"), "skipped")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _resolve(value: Any, where: str, done: dict[str, StageRecord], workdir: Path) -> Any:
    """Settings with every reference replaced by the absolute path(s) of that output."""
    ref = parse_ref(value, where)
    if ref is not None:
        rec = done[ref.stage]
        out = rec.outputs[ref.output]
        base = workdir / ref.stage
        return [str(base / p) for p in out] if isinstance(out, list) else str(base / out)
    if isinstance(value, dict):
        return {k: _resolve(v, f"{where}.{k}", done, workdir) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, f"{where}[{i}]", done, workdir) for i, v in enumerate(value)]
    return value


def _fingerprint_settings(value: Any, where: str, prints: dict[str, str]) -> Any:
    ref = parse_ref(value, where)
    if ref is not None:
        return {"from": str(ref), "fingerprint": prints[ref.stage]}
    if isinstance(value, dict):
        return {k: _fingerprint_settings(v, f"{where}.{k}", prints) for k, v in value.items()}
    if isinstance(value, list):
        return [_fingerprint_settings(v, f"{where}[{i}]", prints) for i, v in enumerate(value)]
    return value


def stage_fingerprints(recipe: Recipe) -> dict[str, str]:
    """Each stage's fingerprint (kind, settings, referenced stages' fingerprints, recipe seed)."""
    prints: dict[str, str] = {}
    for s in recipe.stages:
        kind = KINDS[s.kind]
        evaluate = recipe.evaluate if kind.model_output else None
        prints[s.name] = fingerprint(FORMAT, s.kind, _fingerprint_settings(s.settings, s.name, prints),
                                     recipe.seed, evaluate)
    return prints


def check_workdir(recipe: Recipe) -> None:
    """The work folder is new, empty, or this recipe's own (it has the marker); anything else is refused."""
    wd = recipe.workdir
    if wd.exists() and not wd.is_dir():
        raise InputError(f"recipe workdir {wd} is a file; set `workdir:` to a folder.")
    if wd.is_dir() and any(wd.iterdir()) and not (wd / MARKER).is_file():
        raise InputError(f"recipe workdir {wd} exists and holds files that no recipe wrote; choose another "
                         f"`workdir:` (the runner never writes over what it did not create).")
    owner = _read_marker(wd)
    # another recipe's stages of the same names would be replaced
    if owner is not None and owner.get("name") not in (None, recipe.name):
        raise InputError(f"recipe workdir {wd} holds the work of recipe {owner.get('name')!r} "
                         f"({owner.get('recipe')}), not of {recipe.name!r}; give this recipe its own `workdir:` "
                         f"(or its `name:`, to continue that recipe's work).")
    if not wd.parent.is_dir():
        raise InputError(f"the folder of recipe workdir {wd} does not exist; create {wd.parent} first.")


def _read_marker(workdir: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((workdir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _finished_record(workdir: Path, name: str) -> StageRecord | None:
    """The record of the finished stage `name`: in its folder, or, when a run was killed while replacing it,
    in the folder it was moved aside to (which the next run puts back)."""
    final = workdir / name
    if final.exists():
        return _read_record(final)
    return _read_record(workdir / f"{name}{REPLACED}")


def status(recipe: Recipe) -> list[dict[str, Any]]:
    """Per stage: done (with the same settings), changed (done with other settings), partial, or todo."""
    prints = stage_fingerprints(recipe)
    out = []
    for s in recipe.stages:
        rec = _finished_record(recipe.workdir, s.name)
        if rec is not None and rec.fingerprint == prints[s.name]:
            state = "done"
        elif rec is not None:
            state = "changed"
        elif (recipe.workdir / f"{s.name}.partial").is_dir():
            state = "partial"
        else:
            state = "todo"
        row: dict[str, Any] = {"stage": s.name, "kind": s.kind, "state": state}
        if rec is not None and state == "done":
            row["seconds"] = rec.seconds
            row["metric"] = (rec.metric or {}).get("ndcg_at_10")
        out.append(row)
    return out


def run(recipe: Recipe, *, rerun: Sequence[str] = (), say: Callable[[str], None] | None = None) -> list[StageRecord]:
    """Run every stage that is not done with the same settings; returns the records in order."""
    tell = say or (lambda m: print(m, file=sys.stderr))
    unknown = [r for r in rerun if r not in {s.name for s in recipe.stages}]
    if unknown:
        names = ", ".join(s.name for s in recipe.stages)
        raise InputError(f"--rerun {unknown[0]}: the recipe has no such stage ({names}).")
    check_workdir(recipe)
    recipe.workdir.mkdir(exist_ok=True)
    with OutputLock(recipe.workdir, what="recipe workdir"):  # one run at a time: two would run a stage twice
        check_workdir(recipe)  # again, now that no other run can change it
        write_json_atomic(recipe.workdir / MARKER, {"recipe": str(recipe.path), "name": recipe.name})
        return _run_stages(recipe, rerun, tell)


def _run_stages(recipe: Recipe, rerun: Sequence[str], tell: Callable[[str], None]) -> list[StageRecord]:
    prints = stage_fingerprints(recipe)
    forced: set[str] = set()
    for name in rerun:  # a forced stage forces everything that uses it
        forced.add(name)
    records: dict[str, StageRecord] = {}
    held_out = HeldOut()  # evaluation sets read and tokenized once for the whole run
    for s in recipe.stages:
        refs = {r.stage for _, r in _refs(s)}
        if refs & forced:
            forced.add(s.name)
        final = recipe.workdir / s.name
        _finish_replacing(final, tell)
        rec = _read_record(final)
        if rec is not None and rec.fingerprint == prints[s.name] and s.name not in forced:
            tell(f"[{s.name}] done already ({s.kind}); skipped")
            records[s.name] = rec
            continue
        if final.exists():
            if rec is None:
                raise InputError(f"{final} exists but holds no {RECORD}: it was not made by this runner; move it "
                                 f"away or rename the stage.")
            # kept as it is until the new version has finished (_install): a failed rerun loses nothing
            tell(f"[{s.name}] settings or inputs changed since it ran: running it again")
        records[s.name] = _run_stage(recipe, s, prints[s.name], records, tell, held_out)
    write_report(recipe, [records[s.name] for s in recipe.stages])
    return [records[s.name] for s in recipe.stages]


def _install(partial: Path, final: Path) -> None:
    """Rename the finished `partial` to `final`. A finished stage there already (its settings changed, or
    --rerun) is first moved aside to STAGE.replaced and deleted only once the new one is in place: whenever a
    run stops, one finished version of the stage is there (`_finish_replacing` completes an interrupted swap)."""
    aside = final.with_name(final.name + REPLACED)
    if final.exists():
        final.rename(aside)
    partial.rename(final)
    if aside.exists():
        shutil.rmtree(aside)


def _finish_replacing(final: Path, tell: Callable[[str], None]) -> None:
    """Complete a swap that a run killed inside `_install` left: the stage moved aside (STAGE.replaced, which
    this runner made: it holds the stage's record) is deleted when its new version is in place, else put back."""
    aside = final.with_name(final.name + REPLACED)
    if not aside.exists():
        return
    if _read_record(aside) is None:
        raise InputError(f"{aside} exists but holds no {RECORD}: it was not made by this runner; move it away or "
                         f"rename the stage.")
    if _read_record(final) is not None:
        shutil.rmtree(aside)
    elif not final.exists():
        aside.rename(final)
        tell(f"[{final.name}] put back as it was: a run was stopped while it replaced it")


def _refs(stage: Any) -> list[tuple[str, Ref]]:
    from .spec import refs_in

    return list(refs_in(stage.settings, stage.name))


def _run_stage(recipe: Recipe, s: Any, fp: str, done: dict[str, StageRecord],
               tell: Callable[[str], None], held_out: HeldOut) -> StageRecord:
    partial = recipe.workdir / f"{s.name}.partial"
    mark = partial / ".fingerprint"
    finished = _read_record(partial)
    if finished is not None and finished.fingerprint == fp:  # killed after its record, before the rename
        mark.unlink(missing_ok=True)
        _install(partial, recipe.workdir / s.name)
        tell(f"[{s.name}] finished by an interrupted run; kept")
        return finished
    if partial.is_dir() and (not mark.is_file() or mark.read_text().strip() != fp):
        tell(f"[{s.name}] an interrupted run with other settings is discarded")
        shutil.rmtree(partial)
    resuming = partial.is_dir()
    partial.mkdir(exist_ok=True)
    mark.write_text(fp + "\n")
    tell(f"[{s.name}] {'resuming' if resuming else 'running'} ({s.kind})")
    kind = KINDS[s.kind]
    settings = _resolve(s.settings, s.name, done, recipe.workdir)
    t = time.perf_counter()
    result = kind.run(StageContext(recipe, s, settings, partial, tell, held_out))
    seconds = time.perf_counter() - t
    metric = None
    model = partial / str(result.outputs[kind.model_output]) if kind.model_output else None
    if model is not None and recipe.evaluate and _makes_an_embedder(model, settings):
        metric = retrieval_metric(model, recipe.evaluate, held_out)
        metric.pop("run", None)
        tell(f"[{s.name}] held-out nDCG@10 {metric['ndcg_at_10']:.4f}")
    final = recipe.workdir / s.name
    rec = StageRecord(s.name, s.kind, fp, result.outputs, _moved(_jsonable(result.stats), partial, final), seconds,
                      metric)
    write_json_atomic(partial / RECORD, rec.to_json())
    mark.unlink()
    _install(partial, final)
    tell(f"[{s.name}] finished in {seconds:.1f} s")
    return rec


def _makes_an_embedder(model: Path, settings: dict[str, Any]) -> bool:
    """Whether a stage's model is an embedding model (held-out retrieval measures it): not when its settings
    say reranker, nor when its config.json names a reranker's architecture (a merge of reranker checkpoints
    has no `model_kind` setting)."""
    if settings.get("model_kind", "embedding") != "embedding":
        return False
    config = model / "config.json"
    if not config.is_file():
        return True
    from ..config import ModelConfig

    return not ModelConfig.from_file(config).is_reranker


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _moved(value: Any, partial: Path, final: Path) -> Any:
    """JSON data with every path inside `partial` written as the path it has once `partial` is renamed `final`."""
    if isinstance(value, str):
        old = str(partial)
        return str(final) + value[len(old):] if value == old or value.startswith(old + os.sep) else value
    if isinstance(value, dict):
        return {k: _moved(v, partial, final) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, partial, final) for v in value]
    return value


def write_report(recipe: Recipe, records: list[StageRecord]) -> Path:
    """recipe_report.md (and recipe_report.png when matplotlib is present) in the work folder."""
    from ..files import write_text_atomic

    lines = [f"# Recipe {recipe.name}", "", f"Recipe file: `{recipe.path}`", f"Work folder: `{recipe.workdir}`", ""]
    if recipe.evaluate:
        ev = recipe.evaluate
        lines += [f"Held-out metric: nDCG@10 on `{ev.get('dataset')}` split `{ev.get('split', 'test')}`"
                  + (f", first {ev['max_queries']} queries" if ev.get("max_queries") else "")
                  + (f", corpus cut to {ev['max_docs']} documents" if ev.get("max_docs") else "") + ".", ""]
    lines += ["| stage | kind | this run | seconds | tokens | held-out nDCG@10 | outputs |",
              "|---|---|---|---|---|---|---|"]
    for r in records:
        outputs = ", ".join(f"{k}: `{recipe.workdir / r.name / v}`" if isinstance(v, str) else f"{k}: {len(v)} paths"
                            for k, v in r.outputs.items())
        metric = (r.metric or {}).get("ndcg_at_10")
        if metric is None and r.kind == "eval":
            metric = r.stats.get("rerank_ndcg_at_10", r.stats.get("ndcg_at_10"))
        tokens = r.stats.get("tokens", "")
        lines.append(f"| {r.name} | {r.kind} | {r.status} | {r.seconds:.1f} | {tokens} | "
                     f"{'' if metric is None else f'{metric:.4f}'} | {outputs} |")
    for r in records:
        if r.kind == "eval":
            lines += ["", f"Final evaluation (`{r.name}`): retrieval nDCG@10 {r.stats.get('ndcg_at_10')}"
                      + (f", reranked {r.stats['rerank_ndcg_at_10']}" if "rerank_ndcg_at_10" in r.stats else "")]
    md = write_text_atomic(recipe.workdir / "recipe_report.md", "\n".join(lines) + "\n")
    _plot(recipe, records)
    return md


def _plot(recipe: Recipe, records: list[StageRecord]) -> Path | None:
    points = [(r.name, r.metric["ndcg_at_10"]) for r in records if r.metric and r.metric.get("ndcg_at_10") is not None]
    points += [(r.name, r.stats["rerank_ndcg_at_10"]) for r in records if "rerank_ndcg_at_10" in r.stats]
    if not points:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional (eval extra)
        return None
    from ..files import atomic_file

    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(points)), 3.2))
    ax.bar([p[0] for p in points], [p[1] for p in points], color="#4477aa")
    for i, (_, v) in enumerate(points):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("held-out nDCG@10")
    ax.set_title(f"recipe {recipe.name}: after each stage")
    fig.tight_layout()
    out = recipe.workdir / "recipe_report.png"
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out

"""`qwen-embed recipe run|status` (recipe/cli.py), through the real command line in this process with a cheap
fake stage kind: the one summary line of a run, `--rerun` repeated, `status` as text and as JSON, and each
mistake (an unknown or abbreviated option, a missing action, an unknown stage, a missing recipe) refused in one
line with status 2. The recipe's own errors are tests/recipe/test_recipe.py's and test_spec.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_embed.cli import main
from qwen_embed.recipe.stages import KINDS, Kind, StageContext, StageResult


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A fake kind `fake` (output `out`); the names of the stages it ran, in order."""
    names: list[str] = []

    def run_fake(ctx: StageContext) -> StageResult:
        names.append(ctx.stage.name)
        (ctx.out / "out.txt").write_text("x")
        return StageResult({"out": "out.txt"})

    monkeypatch.setitem(KINDS, "fake", Kind(("out",), frozenset({"value", "input"}), run_fake))
    return names


def recipe(tmp_path: Path, *stages: dict[str, Any]) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "demo", "workdir": "w", "stages": list(stages)}), encoding="utf-8")
    return path


A = {"name": "a", "kind": "fake", "value": 1}
B = {"name": "b", "kind": "fake", "input": {"from": "a.out"}}
C = {"name": "c", "kind": "fake", "value": 3}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("\n") and err.count("\n") == 1, err
    return err.rstrip("\n")


# -- run ------------------------------------------------------------------------------------------------------
def test_run_ends_with_one_summary_line(tmp_path: Path, ran: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path = recipe(tmp_path, A, B)
    report = tmp_path / "w" / "recipe_report.md"
    assert main(["recipe", "run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[-1] == f"recipe demo: 2 stage(s) ran, 0 skipped; report: {report}"
    assert report.is_file() and ran == ["a", "b"]
    assert main(["recipe", "run", str(path)]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == f"recipe demo: 0 stage(s) ran, 2 skipped; report: {report}"
    assert ran == ["a", "b"]


def test_rerun_is_repeatable_and_takes_the_users_along(tmp_path: Path, ran: list[str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = recipe(tmp_path, A, B, C)
    assert main(["recipe", "run", str(path)]) == 0
    assert main(["recipe", "run", str(path), "--rerun", "c", "--rerun", "a"]) == 0
    assert ran == ["a", "b", "c", "a", "b", "c"]
    assert "3 stage(s) ran, 0 skipped" in capsys.readouterr().err.splitlines()[-1]
    assert main(["recipe", "run", str(path), "--rerun=b"]) == 0
    assert ran[6:] == ["b"] and "1 stage(s) ran, 2 skipped" in capsys.readouterr().err


def test_rerun_of_an_unknown_stage_is_one_line(tmp_path: Path, ran: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = recipe(tmp_path, A, B)
    assert main(["recipe", "run", str(path), "--rerun", "zz"]) == 2
    assert one_line_error(capsys) == "qwen-embed recipe: error: --rerun zz: the recipe has no such stage (a, b)."
    assert not (tmp_path / "w").exists() and ran == []


# -- status ---------------------------------------------------------------------------------------------------
def row(stage: str, kind: str, state: str) -> str:
    return "  " + stage.ljust(16) + " " + kind.ljust(13) + " " + state


def edit_record(folder: Path, **fields: Any) -> None:
    record = json.loads((folder / "stage.json").read_text(encoding="utf-8"))
    (folder / "stage.json").write_text(json.dumps({**record, **fields}), encoding="utf-8")


def test_status_text_names_each_state(tmp_path: Path, ran: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path = recipe(tmp_path, A, B, C)
    work = tmp_path / "w"
    assert main(["recipe", "status", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"recipe demo (work folder {work})", row("a", "fake", "todo"),
                                                    row("b", "fake", "todo"), row("c", "fake", "todo")]
    assert not work.exists()  # status only reads
    main(["recipe", "run", str(path)])
    edit_record(work / "a", seconds=12.34, metric={"ndcg_at_10": 0.5})
    edit_record(work / "b", seconds=3.0, metric={"ndcg_at_10": 0.0})  # an untrained model can score 0
    (work / "c").rename(work / "c.partial")
    path.write_text(path.read_text().replace("value: 1", "value: 2"))
    capsys.readouterr()
    assert main(["recipe", "status", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [row("a", "fake", "changed"), row("b", "fake", "changed"),
                                                        row("c", "fake", "partial")]
    path.write_text(path.read_text().replace("value: 2", "value: 1"))
    assert main(["recipe", "status", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:3] == [row("a", "fake", "done") + "  12.3 s, held-out nDCG@10 0.5000",
                                                         row("b", "fake", "done") + "  3.0 s, held-out nDCG@10 0.0000"]


def test_status_json(tmp_path: Path, ran: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path = recipe(tmp_path, A, B)
    main(["recipe", "run", str(path)])
    edit_record(tmp_path / "w" / "a", seconds=1.5)
    capsys.readouterr()
    assert main(["recipe", "status", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"stage": "a", "kind": "fake", "state": "done", "seconds": 1.5, "metric": None}
    assert rows[1]["stage"] == "b" and rows[1]["state"] == "done" and set(rows[1]) == set(rows[0])


def test_status_of_a_missing_recipe_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.yaml"
    assert main(["recipe", "status", str(missing)]) == 2
    assert one_line_error(capsys) == f"qwen-embed recipe: error: recipe {missing} does not exist or is not a file."


# -- the command line -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "wanted"), [
    (["recipe", "run", "r.yaml", "--re-run", "a"], "unrecognized arguments: --re-run a; did you mean --rerun"),
    (["recipe", "run", "r.yaml", "--rer", "a"], "unrecognized arguments: --rer a"),  # no abbreviations
    (["recipe", "status", "r.yaml", "--jsn"], "unrecognized argument: --jsn; did you mean --json (for --jsn)?"),
    (["recipe", "run", "r.yaml", "--json"], "unrecognized argument: --json"),  # a status option only
    (["recipe"], "the following arguments are required: ACTION"),
    (["recipe", "walk", "r.yaml"], "invalid choice: 'walk'"),
    (["recipe", "run"], "the following arguments are required: recipe"),
])
def test_command_line_mistakes_are_refused_in_one_line(tmp_path: Path, ran: list[str], argv: list[str], wanted: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    recipe(tmp_path, A)
    argv = [str(tmp_path / "r.yaml") if a == "r.yaml" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    line = one_line_error(capsys)
    assert line.startswith("qwen-embed recipe") and wanted in line and line.endswith("--help")
    assert not (tmp_path / "w").exists() and ran == []

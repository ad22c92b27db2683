"""The learning curve of a run (train/plot.py): train_log.jsonl -> loss and held-out metrics by step, as a PNG.

References: hand-written logs in the trainer's format (loop.py: `{"step", "loss", ...}` per log line,
`{"step", "eval": {metric: value}}` per evaluation), whose values must be the plotted series (read from the
figure matplotlib saves, through a spy on `Figure.savefig`); the PNG's size is figsize x dpi worked out by hand
(6 x 4 in, or 11 x 4 in with metrics, at 120 dpi) and read back with Pillow; the project's rules: a
user error is one line with the fix, no partial file is left, a log cut by a killed run is read as the trainer
reads it (loop.py's `_truncate_log` drops "a line cut by a crash mid-write"), and a line that is not JSON is
an InputError naming file:line (jsonl.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from qwen_embed.errors import InputError
from qwen_embed.train.plot import plot_learning_curve, read_log

TRAIN = [{"step": 10, "loss": 2.5, "task": "a", "tokens": 100}, {"step": 20, "loss": 1.75, "task": "a"},
         {"step": 30, "loss": 1.25, "task": "b"}]
EVALS = [{"step": 0, "eval": {"ndcg_at_10": 0.1, "ndcg@10": 0.1, "recall@10": 0.2, "mrr_at_10": 0.05}},
         {"step": 30, "eval": {"ndcg_at_10": 0.4, "ndcg@10": 0.4, "recall@10": 0.6, "mrr_at_10": 0.35}}]


def write_log(folder: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train_log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return path


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What each saved figure shows: title, and per axes its labels, limits and lines (label, x, y)."""
    from matplotlib.figure import Figure

    seen: list[dict[str, Any]] = []
    save = Figure.savefig

    def spy(fig: Figure, *args: Any, **kwargs: Any) -> Any:
        seen.append({"title": fig.get_suptitle(), "axes": [
            {"xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "ylim": ax.get_ylim(),
             "lines": [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()]}
            for ax in fig.axes]})
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def test_read_log_splits_training_and_evaluation_records(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    lines = [json.dumps(r) for r in (EVALS[0], TRAIN[0], TRAIN[1])] + ["", "   "] + [json.dumps(TRAIN[2]),
                                                                           json.dumps(EVALS[1])]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_log(log) == (TRAIN, EVALS)  # blank lines skipped, file order kept


def test_training_loss_only(tmp_path: Path, drawn: list[dict[str, Any]]) -> None:
    log = write_log(tmp_path / "my-run", TRAIN)
    out = plot_learning_curve(log, tmp_path / "curve.png")
    assert out == tmp_path / "curve.png" and png_size(out) == (6 * 120, 4 * 120)
    (fig,) = drawn
    assert fig["title"] == "my-run"
    (ax,) = fig["axes"]
    assert ax["xlabel"] == "step" and "loss" in ax["ylabel"]
    ((_, x, y),) = ax["lines"]
    assert (x, y) == ([10, 20, 30], [2.5, 1.75, 1.25])


def test_loss_and_metrics_each_alias_once(tmp_path: Path, drawn: list[dict[str, Any]]) -> None:
    """`ndcg@10` and `ndcg_at_10` are one metric (drawn once, as ndcg_at_10); `recall@10` has no twin."""
    log = write_log(tmp_path / "run", [EVALS[0], *TRAIN, EVALS[1]])
    out = plot_learning_curve(log, tmp_path / "curve.png", title="My title")
    assert png_size(out) == (11 * 120, 4 * 120)
    (fig,) = drawn
    assert fig["title"] == "My title"
    loss, metrics = fig["axes"]
    assert [(x, y) for _, x, y in loss["lines"]] == [([10, 20, 30], [2.5, 1.75, 1.25])]
    assert sorted(metrics["lines"]) == [("mrr_at_10", [0, 30], [0.05, 0.35]), ("ndcg_at_10", [0, 30], [0.1, 0.4]),
                                        ("recall@10", [0, 30], [0.2, 0.6])]
    assert metrics["xlabel"] == "step" and tuple(metrics["ylim"]) == (0.0, 1.0)


def test_a_non_finite_loss_is_drawn(tmp_path: Path, drawn: list[dict[str, Any]]) -> None:
    """json.dumps writes NaN / Infinity (the step that stopped a run); the curve is still drawn."""
    log = write_log(tmp_path / "run", [*TRAIN, {"step": 40, "loss": math.nan}, {"step": 50, "loss": math.inf}])
    plot_learning_curve(log, tmp_path / "curve.png")
    ((_, x, y),) = drawn[0]["axes"][0]["lines"]
    assert x == [10, 20, 30, 40, 50] and y[:3] == [2.5, 1.75, 1.25] and math.isnan(y[3]) and y[4] == math.inf


@pytest.mark.parametrize(("records", "says"), [
    (None, "does not exist or is not a file; a run writes OUTPUT_DIR/train_log.jsonl"),
    ([], "holds no training records yet"),
    (EVALS, "holds no training records yet"),
])
def test_nothing_to_draw_is_one_line_and_writes_nothing(tmp_path: Path, records: list[dict[str, Any]] | None,
                                                        says: str) -> None:
    log = tmp_path / "run" / "train_log.jsonl" if records is None else write_log(tmp_path / "run", records)
    with pytest.raises(InputError) as e:
        plot_learning_curve(log, tmp_path / "curve.png")
    msg = one_line(e)
    assert str(log) in msg and says in msg
    assert not (tmp_path / "curve.png").exists()


def test_an_output_folder_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    log = write_log(tmp_path / "run", TRAIN)
    with pytest.raises(InputError) as e:
        plot_learning_curve(log, tmp_path / "absent" / "curve.png")
    assert "does not exist; create it first" in one_line(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_mid_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    existing: bool) -> None:
    from matplotlib.figure import Figure

    log = write_log(tmp_path / "run", TRAIN)
    out = tmp_path / "curve.png"
    if existing:
        out.write_bytes(b"the previous curve")

    def torn(_fig: Figure, f: Any, **_: Any) -> None:
        f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", torn)
    with pytest.raises(OSError, match="No space left"):
        plot_learning_curve(log, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["curve.png", "run"] if existing else ["run"])
    assert not existing or out.read_bytes() == b"the previous curve"


def test_a_log_cut_mid_line_by_a_killed_run_is_drawn(tmp_path: Path, drawn: list[dict[str, Any]]) -> None:
    log = write_log(tmp_path / "run", TRAIN, tail='{"step": 40, "lo')
    plot_learning_curve(log, tmp_path / "curve.png")
    ((_, x, _),) = drawn[0]["axes"][0]["lines"]
    assert x == [10, 20, 30]


def test_a_broken_line_is_one_line_naming_it(tmp_path: Path) -> None:
    log = tmp_path / "run" / "train_log.jsonl"
    log.parent.mkdir()
    log.write_text(json.dumps(TRAIN[0]) + "\n{oops\n" + json.dumps(TRAIN[1]) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as e:
        read_log(log)
    assert f"{log}:2" in one_line(e)


def test_a_complete_last_line_without_its_newline_is_kept(tmp_path: Path) -> None:
    log = write_log(tmp_path / "run", TRAIN, tail=json.dumps({"step": 40, "loss": 1.0}))
    train, _ = read_log(log)
    assert [r["step"] for r in train] == [10, 20, 30, 40]


@pytest.mark.parametrize("line", ['[1, 2]', '{"loss": 1.0}', '{"step": "3", "loss": 1.0}', '{"step": 3}',
                                  '{"step": 3, "eval": 0.5}'])
def test_a_line_that_is_not_a_log_record_is_one_line_naming_it(tmp_path: Path, line: str) -> None:
    log = tmp_path / "run" / "train_log.jsonl"
    log.parent.mkdir()
    log.write_text(json.dumps(TRAIN[0]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(InputError) as e:
        read_log(log)
    assert one_line(e).startswith(f"{log}:2: not a record of a training log")


def test_a_folder_as_the_log_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        read_log(tmp_path)
    assert "does not exist or is not a file" in one_line(e)

"""`qwen-embed embed-corpus` and `qwen-embed index --vectors` (`ray/cli.py`): options -> job, refusals. No Ray.

References: `CorpusJob`'s own defaults and a job written out by hand for every option (the library call
the command must make, captured in place of `embed_corpus` / `ingest_vectors`); the house rule for user
mistakes (one line on standard error, status 2, the value, the limit and the fix, nothing written and no
model loaded). Nothing here starts a Ray cluster: every Ray-engine case is refused or captured before one
would start (tests/ray/test_stages.py runs the cluster cases).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qwen_embed.cli import main
from qwen_embed.ray.ingest import IngestReport
from qwen_embed.ray.job import CorpusJob, CorpusReport
from qwen_embed.settings import DEFAULT_EMBEDDING_MODEL


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text number {i}"}) + "\n" for i in range(3)))
    return path


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> list[CorpusJob]:
    """The jobs `embed-corpus` hands to `embed_corpus` (which is not run)."""
    seen: list[CorpusJob] = []

    def capture(job: CorpusJob) -> CorpusReport:
        seen.append(job)
        return CorpusReport(rows=3, written=3, parts=1, seconds=0.5, output=job.output)

    monkeypatch.setattr("qwen_embed.ray.job.embed_corpus", capture)
    return seen


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: refusals come before any model is loaded."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr("qwen_embed.embedder.Embedder.from_pretrained", refuse)
    monkeypatch.setattr("qwen_embed.checkpoint.Checkpoint.load", refuse)


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"qwen-embed {command}: error: "), err
    return err


def test_defaults_are_the_library_defaults(corpus: Path, tmp_path: Path, jobs: list[CorpusJob],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Every option left out gives `CorpusJob`'s own default (the command adds no defaults of its own)."""
    out = str(tmp_path / "out")
    assert main(["embed-corpus", str(corpus), "-o", out]) == 0
    assert jobs == [CorpusJob(input=str(corpus), output=out, model=DEFAULT_EMBEDDING_MODEL, progress=False)]
    report = CorpusReport(rows=3, written=3, parts=1, seconds=0.5, output=out)  # what the stand-in returned
    assert capsys.readouterr().err == f"qwen-embed embed-corpus: {report.summary()}\n"


def test_every_option_reaches_the_job(corpus: Path, tmp_path: Path, jobs: list[CorpusJob]) -> None:
    out = str(tmp_path / "out")
    argv = ["embed-corpus", str(corpus), "--output", out, "--engine", "ray", "--address", "head:6379",
            "--num-gpus", "2", "--actors", "3", "--cpus-per-actor", "4", "--model", "some/model", "--device", "cuda:1",
            "--dtype", "bfloat16", "--max-length", "512", "--batch-tokens", "2048", "--dim", "32",
            "--dtype-out", "float16", "--instruction", "find it", "--id-column", "doc", "--text-column", "body",
            "--keep-text", "--rows-per-file", "7", "--batch-rows", "9", "--tokenize", "stage", "--overwrite"]
    assert main(argv) == 0
    assert jobs == [CorpusJob(
        input=str(corpus), output=out, model="some/model", engine="ray", address="head:6379", num_gpus=2, actors=3,
        cpus_per_actor=4, dim=32, dtype_out="float16", instruction="find it", id_column="doc", text_column="body",
        keep_text=True, rows_per_file=7, batch_rows=9, tokenize="stage", overwrite=True, device="cuda:1",
        dtype="bfloat16", max_length=512, batch_tokens=2048, progress=False)]


def test_a_remote_output_is_not_checked_as_a_local_folder(corpus: Path, jobs: list[CorpusJob]) -> None:
    assert main(["embed-corpus", str(corpus), "-o", "s3://bucket/vectors/"]) == 0
    assert [j.output for j in jobs] == ["s3://bucket/vectors/"]


@pytest.mark.parametrize(("output", "needle"), [
    ("missing/out", "does not exist; create it first"),
    ("afile", "is a file"),
])
def test_a_bad_local_output_is_refused_before_the_job(corpus: Path, tmp_path: Path, jobs: list[CorpusJob],
                                                      capsys: pytest.CaptureFixture[str], output: str,
                                                      needle: str) -> None:
    (tmp_path / "afile").write_text("x")
    assert main(["embed-corpus", str(corpus), "-o", str(tmp_path / output)]) == 2
    assert needle in one_error_line(capsys, "embed-corpus")
    assert jobs == [] and not (tmp_path / "missing").exists()


@pytest.mark.parametrize(("argv", "needles"), [
    (["--num-gpu", "1"], ("unrecognized arguments: --num-gpu 1", "did you mean --num-gpus")),
    (["--keep-texts"], ("unrecognized argument: --keep-texts", "did you mean --keep-text")),
    (["--engine", "spark"], ("--engine: invalid choice: 'spark'", "'local'", "'ray'")),
    (["--num-gpus", "two"], ("--num-gpus: invalid int value: 'two'",)),
    (["--dtype-out", "int8"], ("--dtype-out: invalid choice: 'int8'",)),
    (["--tokenize", "both"], ("--tokenize: invalid choice: 'both'",)),
    (["--rows-per", "5"], ("unrecognized arguments: --rows-per 5", "did you mean --rows-per-file")),  # no abbreviations
])
def test_unknown_options_and_bad_choices_are_one_line(corpus: Path, tmp_path: Path, jobs: list[CorpusJob],
                                                     capsys: pytest.CaptureFixture[str], argv: list[str],
                                                     needles: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["embed-corpus", str(corpus), "-o", str(tmp_path / "out"), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("qwen-embed embed-corpus: error: "), err
    assert err.endswith("see qwen-embed embed-corpus --help") and all(n in err for n in needles), err
    assert jobs == [] and not (tmp_path / "out").exists()


def test_the_output_is_required(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["embed-corpus", str(corpus)])
    assert info.value.code == 2 and "the following arguments are required: -o/--output" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "needles"), [
    (["--actors", "0"], ("actors must be an integer >= 1, got 0",)),
    (["--cpus-per-actor", "0"], ("cpus_per_actor must be an integer >= 1, got 0",)),
    (["--num-gpus", "-1"], ("num_gpus must be an integer >= 0, got -1",)),
    (["--batch-rows", "0"], ("batch_rows must be a positive integer, got 0",)),
    (["--address", "head:6379"], ("--address is a Ray cluster address", "needs --engine ray")),
    (["--engine", "ray", "--device", "cpu"], ("--device cpu is for --engine local", "--num-gpus N")),
    (["--dim", "16"], ("dim=16 is out of range", "32..64")),
    (["--dim", "65"], ("dim=65 is out of range", "32..64")),
    (["--max-length", "1"], ("max_length=1 is out of range", "2..32768")),
])
def test_bad_values_give_value_limit_and_fix_before_any_work(corpus: Path, tmp_path: Path,
                                                              small_embedding_path: Path, no_model: None,
                                                              capsys: pytest.CaptureFixture[str], argv: list[str],
                                                              needles: tuple[str, ...]) -> None:
    assert main(["embed-corpus", str(corpus), "-o", str(tmp_path / "out"), "--model", str(small_embedding_path),
                 *argv]) == 2
    err = one_error_line(capsys, "embed-corpus")
    assert all(n in err for n in needles), err
    assert not (tmp_path / "out").exists()


def test_deterministic_reaches_the_job(corpus: Path, tmp_path: Path, jobs: list[CorpusJob]) -> None:
    """`--deterministic` (batch-invariant kernels), one of the shared model options, is the job's setting."""
    out = str(tmp_path / "out")
    assert main(["embed-corpus", str(corpus), "-o", out, "--deterministic"]) == 0
    assert jobs == [CorpusJob(input=str(corpus), output=out, model=DEFAULT_EMBEDDING_MODEL, deterministic=True,
                              progress=False)]


# -- qwen-embed index --vectors -------------------------------------------------------------------------------
@pytest.fixture
def ingests(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The calls `index --vectors` makes to `ingest_vectors` (which is not run)."""
    seen: list[dict[str, Any]] = []

    def capture(folder: str, db: str, **kwargs: Any) -> IngestReport:
        seen.append({"folder": folder, "db": db, **kwargs})
        return IngestReport(rows=5, written=4, unchanged=1, seconds=0.25, maintenance="built the vector index")

    monkeypatch.setattr("qwen_embed.ray.ingest.ingest_vectors", capture)
    return seen


def test_index_vectors_passes_folder_db_table_model_and_dim(tmp_path: Path, ingests: list[dict[str, Any]],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "db")
    assert main(["index", "--vectors", "vecs", "--db", db, "--table", "docs", "--model", "m/x", "--dim", "32"]) == 0
    assert ingests == [{"folder": "vecs", "db": db, "table": "docs", "model": "m/x", "dim": 32}]
    assert capsys.readouterr().err.splitlines() == [
        f"{db} table 'docs': 5 vectors: 4 written, 1 already stored, in 0.2 s",
        "qwen-embed index: built the vector index"]
    assert main(["index", "--vectors", "vecs", "--db", db]) == 0
    assert ingests[-1] == {"folder": "vecs", "db": db, "table": "documents", "model": None, "dim": None}


def test_index_refuses_sources_and_vectors_together(tmp_path: Path, ingests: list[dict[str, Any]],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("a document")
    assert main(["index", str(tmp_path / "a.txt"), "--vectors", "vecs", "--db", str(tmp_path / "db")]) == 2
    err = one_error_line(capsys, "index")
    assert "either SOURCE files to embed or --vectors FOLDER" in err and "not both" in err
    assert ingests == [] and not (tmp_path / "db").exists()


@pytest.mark.parametrize("argv", [
    ["--dry-run"], ["--delete-missing"], ["--precision", "int8"], ["--ranges", "r.json"], ["--instruction", "x"],
    ["--chunk-tokens", "64"], ["--overlap", "8"], ["--deterministic"], ["--extensions", "txt"],
    ["--text-field", "body"], ["--title-field", "t"], ["--follow-links"],
], ids=lambda argv: argv[0])
def test_index_vectors_refuses_options_it_would_ignore(tmp_path: Path, ingests: list[dict[str, Any]],
                                                       capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Options of `index SOURCE` that --vectors cannot honour (a dry run that would write, a precision or
    chunking the new table would not get, ...) are refused in one line naming them, before anything is
    written, rather than silently dropped."""
    assert main(["index", "--vectors", "vecs", "--db", str(tmp_path / "db"), *argv]) == 2
    err = one_error_line(capsys, "index")
    assert f"{argv[0]} does not go with --vectors" in err and "leave it out" in err, err
    assert ingests == [] and not (tmp_path / "db").exists()

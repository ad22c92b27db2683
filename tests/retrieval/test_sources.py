"""Source readers: files, folders, JSONL, BEIR; skipped files are reported and the run goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.retrieval.sources import markdown_title, read_sources


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_folder_of_text_markdown_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("plain text", encoding="utf-8")
    (tmp_path / "sub" / "b.md").write_text("intro\n# The Title\nbody", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("ignored", encoding="utf-8")
    (tmp_path / "notes.csv").write_text("ignored", encoding="utf-8")
    write_jsonl(tmp_path / "c.jsonl", [{"id": 7, "text": "seven", "year": 2020},
                                       {"_id": "x", "title": "only a title", "metadata": {"source": "beir"}}])
    rep = read_sources([tmp_path])
    docs = {d.id: d for d in rep.documents}
    assert set(docs) == {"a.txt", "sub/b.md", "7", "x"}
    assert docs["sub/b.md"].title == "The Title" and docs["sub/b.md"].metadata == {"path": "sub/b.md"}
    assert docs["7"].metadata == {"year": 2020}
    assert docs["x"].metadata == {"source": "beir"} and docs["x"].embedding_text() == "only a title"
    assert [(Path(p).name, why.split(" is ")[0]) for p, why in rep.skipped] == [("notes.csv", "file type .csv")]
    assert "--extensions" in rep.skipped[0][1] and rep.complete and "notes.csv" in rep.skipped_ids


def test_single_files_take_their_name_as_id(tmp_path: Path) -> None:
    f = tmp_path / "doc.md"
    f.write_text("# T\ntext", encoding="utf-8")
    assert [d.id for d in read_sources([f]).documents] == ["doc.md"]
    assert markdown_title("no heading\n## sub") == ""


def test_beir_folder_reads_the_corpus_only(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "T", "text": "x"}, {"_id": "d2", "text": "y"}])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "a query"}])
    assert [d.id for d in read_sources([tmp_path]).documents] == ["d1", "d2"]


def test_unreadable_and_non_utf8_files_are_skipped_and_reported(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "gone.txt").symlink_to(tmp_path / "missing-target")  # listed, but cannot be read (even by root)
    write_jsonl(tmp_path / "bad.jsonl", [])
    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe")
    rep = read_sources([tmp_path])
    assert [d.id for d in rep.documents] == ["good.txt"]
    reasons = dict(rep.skipped)
    assert "not UTF-8 text (byte 3)" in reasons[str(tmp_path / "latin1.txt")]
    assert "cannot be read" in reasons[str(tmp_path / "gone.txt")]
    assert rep.skipped_ids == {"latin1.txt", "gone.txt"}
    assert not rep.complete  # a skipped JSONL file hides its ids


def test_user_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"holds no \.txt, \.md or \.jsonl files"):
        read_sources([empty])
    with pytest.raises(InputError, match="does not exist"):
        read_sources([tmp_path / "nope"])
    with pytest.raises(InputError, match=r"is not a \.txt, \.md, \.jsonl file"):
        (tmp_path / "x.pdf").write_bytes(b"%PDF")
        read_sources([tmp_path / "x.pdf"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{oops\n', encoding="utf-8")
    with pytest.raises(InputError, match=":2: not valid JSON"):
        read_sources([bad])
    write_jsonl(bad, [{"text": "no id"}])
    with pytest.raises(InputError, match="line 1 needs an `id`"):
        read_sources([bad])
    write_jsonl(bad, [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(InputError, match="'a' occurs twice"):
        read_sources([bad])


def test_empty_documents_are_skipped(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "  "}])
    rep = read_sources([f])
    assert [d.id for d in rep.documents] == ["a"]
    assert rep.skipped == [("b", "empty document (no text and no title)")]


def test_fifo_devices_and_outside_links_are_skipped_not_read(tmp_path: Path) -> None:
    """Issue 23: a FIFO blocked `index` forever, a link to /dev/zero read 5 GB, and a link to a file outside
    the folder made it searchable. Each is now skipped with its reason (in bounded time)."""
    import os
    import time

    from qwen_embed.retrieval.sources import SourceSettings, read_sources

    root = tmp_path / "notes"
    root.mkdir()
    (root / "ok.txt").write_text("a real note")
    os.mkfifo(root / "pipe.txt")
    (root / "zero.txt").symlink_to("/dev/zero")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not index me")
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "inner.txt").symlink_to(root / "ok.txt")  # a link inside the folder is fine
    t = time.monotonic()
    report = read_sources([root])
    assert time.monotonic() - t < 10
    assert sorted(d.id for d in report.documents) == ["inner.txt", "ok.txt"]
    reasons = dict(report.skipped)
    assert "not a regular file" in reasons[str(root / "pipe.txt")]
    assert "outside" in reasons[str(root / "zero.txt")] or "not a regular file" in reasons[str(root / "zero.txt")]
    assert "--follow-links" in reasons[str(root / "leak.txt")]
    followed = read_sources([root], SourceSettings.parse(follow_links=True))
    assert "leak.txt" in {d.id for d in followed.documents}
    assert "not a regular file" in dict(followed.skipped)[str(root / "zero.txt")]


def test_a_file_over_the_size_limit_is_skipped_unread(tmp_path: Path) -> None:
    """Issue 23.6: files are read with a size limit (a sparse 300 MB file: no disk used, never read)."""
    from qwen_embed.retrieval.sources import MAX_FILE_BYTES, read_sources

    root = tmp_path / "notes"
    root.mkdir()
    (root / "ok.txt").write_text("a real note")
    with open(root / "huge.txt", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    report = read_sources([root])
    assert [d.id for d in report.documents] == ["ok.txt"]
    assert f"over the limit of {MAX_FILE_BYTES:,}" in dict(report.skipped)[str(root / "huge.txt")]

"""echo's one JSONL reader: each way of meeting a bad line, a line torn by a kill, and the JSON-list sniff."""

from __future__ import annotations

import pytest

from echo.durable import BadLine, read_jsonl, read_lines, read_object_lines, starts_json_list
from echo.errors import EchoError


@pytest.fixture
def messy(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{not json\n[1, 2]\n\xff\xfe\n{"b": 2}\n{"c": 3, "torn')
    return path


def test_raise_names_the_file_and_the_first_bad_line(messy):
    rows = read_lines(messy)
    assert next(rows) == (1, {"a": 1})
    with pytest.raises(EchoError, match=rf"^{messy} line 3: not JSON \(Expecting property name"):
        next(rows)
    with pytest.raises(EchoError, match="line 3: not JSON"):
        list(read_object_lines(messy))


def test_report_yields_every_bad_line_in_place(messy):
    got = list(read_lines(messy, bad="report"))
    assert [n for n, _ in got] == [1, 3, 4, 5, 6, 7]
    bad = {n: row for n, row in got if isinstance(row, BadLine)}
    assert [b.kind for b in bad.values()] == ["json", "object", "utf-8", "json"]
    assert bad[4].problem == "expected a JSON object, got list"
    assert bad[5].problem.startswith("not UTF-8 text")
    # with any JSON value allowed, the list is a row; a torn tail is dropped, not reported
    got = list(read_lines(messy, bad="report", objects=False, torn_tail=True))
    assert (4, [1, 2]) in got and [n for n, _ in got] == [1, 3, 4, 5, 6]


def test_skip_and_torn_tail(messy, tmp_path):
    assert [row for _, row in read_lines(messy, bad="skip")] == [{"a": 1}, {"b": 2}]
    whole = tmp_path / "whole.jsonl"
    whole.write_text('{"a": 1}\n{"b": 2}')  # the last line lacks its newline: cut short by a kill
    assert list(read_jsonl(whole)) == [{"a": 1}]
    assert [row for _, row in read_lines(whole)] == [{"a": 1}, {"b": 2}]  # an input file's last line counts
    assert list(read_jsonl(tmp_path / "absent.jsonl")) == []
    with pytest.raises(ValueError, match="bad must be"):
        next(read_lines(whole, bad="ignore"))


def test_json_list_or_lines(tmp_path):
    (tmp_path / "a.json").write_text("\n  [{}]")
    (tmp_path / "b.jsonl").write_text('{"x": [1]}\n')
    (tmp_path / "c.jsonl").write_text("")
    assert [starts_json_list(tmp_path / n) for n in ("a.json", "b.jsonl", "c.jsonl")] == [True, False, False]


def test_write_atomic_is_the_one_writer_of_whole_files(tmp_path):
    """Text and bytes, a missing parent created, and a failed rename leaves no temporary file behind."""
    from echo.durable import write_atomic

    write_atomic(tmp_path / "a" / "b.txt", "é\n")
    assert (tmp_path / "a" / "b.txt").read_bytes() == "é\n".encode("utf-8")
    write_atomic(tmp_path / "a" / "b.txt", b"\x00\x01")
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"\x00\x01"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "d", "x")  # a directory cannot be replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "d"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.txt"]

"""read_lines: byte offsets and line numbers across block boundaries, CRLF, blank lines,
invalid UTF-8, and the unterminated last line (kept for the next read unless final)."""

from __future__ import annotations

from headwater.sources.lines import read_lines


def collect(path, **kw):
    out, end = [], None
    for b in read_lines(path, **kw):
        out += b.lines.to_pylist()
        end = (b.end_offset, b.end_line)
    return out, end


def test_offsets_and_numbers_survive_tiny_blocks(tmp_path):
    data = b"first line\r\n\n  \nsecond \xe2\x82\xac line that is longer than a block\nbad \xff byte\nlast"
    path = tmp_path / "x.log"
    path.write_bytes(data)
    for block in (3, 7, 64, 1 << 20):
        rows, end = collect(path, block_bytes=block, final=False)
        assert [(r["_row"], r["line"]) for r in rows] == [(1, "first line"), (4, "second € line that is longer than a block"), (5, None)]
        assert [data[r["_offset"]:].split(b"\n")[0].rstrip(b"\r") for r in rows] == [b"first line", "second € line that is longer than a block".encode(), b"bad \xff byte"]
        assert end == (len(data) - len(b"last"), 6)  # "last" has no newline yet: not read
        rows, end = collect(path, block_bytes=block, final=True)
        assert rows[-1]["line"] == "last" and rows[-1]["_row"] == 6 and end == (len(data), 7)


def test_resume_from_a_stored_position(tmp_path):
    path = tmp_path / "x.log"
    path.write_bytes(b"a\nb\nc\n")
    (_, end) = collect(path, final=False)
    with open(path, "ab") as f:
        f.write(b"d\ne\n")
    rows, end2 = collect(path, start=end[0], first_line=end[1], final=False)
    assert [(r["_row"], r["line"], r["_offset"]) for r in rows] == [(4, "d", 6), (5, "e", 8)]
    assert end2 == (10, 6)
    assert collect(path, start=end2[0], first_line=end2[1], final=False) == ([], None)

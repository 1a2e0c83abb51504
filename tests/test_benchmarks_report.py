"""``benchmarks/report.py``: sections of one markdown file are replaced in place, also by concurrent writers."""

from __future__ import annotations

import multiprocessing

from benchmarks.report import write_section


def test_a_section_is_appended_then_replaced_in_place(tmp_path):
    path = tmp_path / "b.md"
    write_section(path, "a", "first")
    write_section(path, "b", "other")
    write_section(path, "a", "second")
    text = path.read_text()
    assert text.count("<!-- begin a -->") == 1 and "second" in text and "first" not in text
    assert text.index("<!-- begin a -->") < text.index("<!-- begin b -->")  # replaced where it was


def _write_many(path, name, n, barrier):
    barrier.wait()  # both writers start together, so their writes interleave
    for i in range(n):
        write_section(path, name, f"{name} {i}")


def test_concurrent_writers_keep_each_others_sections(tmp_path):
    path = tmp_path / "b.md"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_many, args=(path, name, 300, barrier)) for name in ("subject", "templates")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    text = path.read_text()
    assert "subject 299" in text and "templates 299" in text

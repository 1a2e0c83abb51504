"""``bundle/points.py``: point CSVs in RAS or LPS, extra columns carried through, one-line errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.points import PointTable, read_points, write_points


def _csv(tmp_path, text: str, name: str = "points.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_plain_columns_default_to_lps(tmp_path):
    table = read_points(_csv(tmp_path, "x,y,z\n1,2,3\n-4.5,0,6\n"), dims=3)
    assert table.space == "lps" and table.header == ["x", "y", "z"] and table.columns == [0, 1, 2]
    np.testing.assert_array_equal(table.ras, [[-1, -2, 3], [4.5, 0, 6]])
    assert table.rows == [["1", "2", "3"], ["-4.5", "0", "6"]]


def test_plain_columns_take_the_given_space(tmp_path):
    path = _csv(tmp_path, "x,y,z\n1,2,3\n")
    np.testing.assert_array_equal(read_points(path, 3, space=" RAS ").ras, [[1, 2, 3]])
    np.testing.assert_array_equal(read_points(path, 3, space="lps").ras, [[-1, -2, 3]])
    with pytest.raises(ValueError, match="points_space must be 'ras' or 'lps', got 'mni'"):
        read_points(path, 3, space="mni")


@pytest.mark.parametrize(
    "header,expected_space,expected_ras",
    [
        ("name,x_ras,y_ras,z_ras", "ras", [1.0, 2.0, 3.0]),
        ("name, X_LPS , Y_LPS , Z_LPS", "lps", [-1.0, -2.0, 3.0]),  # case and spaces around names do not matter
        ("name,x,y,z_ras", "lps", None),  # a partial space suffix is not a space: the plain columns are missing
    ],
)
def test_suffixed_headers_name_their_space(tmp_path, header, expected_space, expected_ras):
    path = _csv(tmp_path, f"{header}\np0,1,2,3\n")
    if expected_ras is None:
        with pytest.raises(ValueError, match=r"missing coordinate column\(s\) \['z'\]"):
            read_points(path, 3)
        return
    table = read_points(path, 3)
    assert table.space == expected_space and table.columns == [1, 2, 3]
    np.testing.assert_array_equal(table.ras, [expected_ras])


def test_a_header_space_contradicting_the_flag_is_refused(tmp_path):
    path = _csv(tmp_path, "x_lps,y_lps,z_lps\n1,2,3\n")
    assert read_points(path, 3, space="lps").space == "lps"
    with pytest.raises(ValueError, match=r"points.csv: columns name the LPS space but points_space is 'ras'$"):
        read_points(path, 3, space="ras")


def test_2d_reads_x_and_y_and_keeps_other_columns(tmp_path):
    table = read_points(_csv(tmp_path, "label,y,x,z\n7,2,1,99\n"), dims=2)
    assert table.columns == [2, 1]
    np.testing.assert_array_equal(table.ras, [[-1.0, -2.0]])


def test_round_trip_keeps_space_order_and_extra_columns(tmp_path):
    text = "id,x,y,z,t,note\n0,1.5,-2,3,0.25,first\n1,0,0,0,1,\"second, with comma\"\n"
    table = read_points(_csv(tmp_path, text), 3)
    out = write_points(tmp_path / "out" / "mapped.csv", table, table.ras + np.array([10.0, 20.0, 30.0]))
    assert out == tmp_path / "out" / "mapped.csv"
    lines = out.read_text(encoding="utf-8").splitlines()
    # LPS in, LPS out: +10 mm right / +20 mm anterior is -10 / -20 in LPS
    assert lines == [
        "id,x,y,z,t,note",
        "0,-8.500000,-22.000000,33.000000,0.25,first",
        '1,-10.000000,-20.000000,30.000000,1,"second, with comma"',
    ]
    again = read_points(out, 3)
    np.testing.assert_allclose(again.ras, table.ras + [10, 20, 30])
    assert [r[-1] for r in again.rows] == ["first", "second, with comma"]
    assert [p.name for p in out.parent.iterdir()] == ["mapped.csv"]  # written atomically: no temporary file left


def test_ras_tables_are_written_in_ras(tmp_path):
    table = PointTable(np.zeros((1, 2)), "ras", ["x_ras", "y_ras", "name"], [0, 1], [["0", "0", "a"]])
    path = write_points(tmp_path / "p.csv", table, np.array([[1.25, -3.0]]))
    assert path.read_text().splitlines() == ["x_ras,y_ras,name", "1.250000,-3.000000,a"]


def test_blank_lines_are_skipped(tmp_path):
    table = read_points(_csv(tmp_path, "\nx,y\n\n1,2\n , \n3,4\n"), 2, space="ras")
    np.testing.assert_array_equal(table.ras, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    "text,message",
    [
        ("", r"empty points file \(expected a header such as x,y,z\)"),
        ("x,y,z\n", "no points below the header"),
        ("a,b,c\n1,2,3\n", r"missing coordinate column\(s\) \['x', 'y', 'z'\]; the header needs x,y,z \(or x_ras,y_ras,z_ras / _lps\)"),
        ("x,y,z,name\n1,2,3,a\n4,5,6\n", "line 3 has 3 values, the header has 4 columns"),
        ("x,y,z\n1,2,3\n4,five,6\n", r"line 3, column 'y': not a number \('five'\)"),
        ("x,y,z\n1,2,nan\n", r"line 2, column 'z': not a finite number \('nan'\)"),
        ("x,y,z\ninf,2,3\n", r"line 2, column 'x': not a finite number \('inf'\)"),
        ("\nx,y,z\n\n1,2,3\n , , \n4,five,6\n", r"line 6, column 'y': not a number \('five'\)"),
    ],
    ids=["empty", "header_only", "no_columns", "short_row", "text", "nan", "inf", "after_blank_lines"],
)
def test_bad_csvs_raise_one_line_naming_the_file(tmp_path, text, message):
    path = _csv(tmp_path, text, "bad.csv")
    with pytest.raises(ValueError, match=message) as exc:
        read_points(path, 3)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.csv: points file not found"):
        read_points(tmp_path / "none.csv", 3)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"x,y,z\n\xff\xfe,1,2\n")
    with pytest.raises(ValueError, match=r"binary.csv: unreadable points file \("):
        read_points(binary, 3)

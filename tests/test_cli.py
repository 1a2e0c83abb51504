"""``bundle/cli.py``: config composition, switch parsing, one-line user errors and argument routing (no config is run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle import cli
from bundle.cli import BUNDLE_ROOT, STANDALONE_CONFIGS, as_bool, config_files, exit_on_user_error


def test_configs_are_composed_over_common_json():
    files = config_files("inference.json")
    assert files == [str(BUNDLE_ROOT / "configs" / "common.json"), str(BUNDLE_ROOT / "configs" / "inference.json")]
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in files)
    assert config_files("train.json")[0] == files[0]


def test_standalone_configs_are_used_alone():
    assert STANDALONE_CONFIGS == ("apply.json",)
    assert config_files("apply.json") == [str(BUNDLE_ROOT / "configs" / "apply.json")]
    assert "network_def" not in json.loads(Path(config_files("apply.json")[0]).read_text())  # apply needs no network


@pytest.mark.parametrize(
    "value,expected",
    [
        (True, True), (False, False), (1, True), (0, False),
        ("true", True), ("FALSE", False), (" Yes ", True), ("no", False), ("On", True), ("off", False), ("1", True), ("0", False),
    ],
)
def test_as_bool_accepts_switch_spellings(value, expected):
    assert as_bool(value) is expected


@pytest.mark.parametrize("value", ["maybe", "", "2", 2, -1, 0.0, 1.0, None, [True]])
def test_as_bool_refuses_everything_else_naming_the_switch(value):
    with pytest.raises(ValueError, match=f"^refine must be true or false, got {value!r}$".replace("[", r"\[").replace("]", r"\]")):
        as_bool(value, "refine")


def test_as_bool_default_name():
    with pytest.raises(ValueError, match="^value must be true or false, got 'x'$"):
        as_bool("x")


def test_exit_on_user_error_turns_bad_input_into_one_line():
    assert exit_on_user_error(lambda a, b=0: a + b, 1, b=2) == 3
    for exc in (ValueError("bad.nii: NaN voxels"), FileNotFoundError("x.nii: not found"), FileExistsError("out: exists")):

        def fail(exc=exc):
            raise exc

        with pytest.raises(SystemExit) as info:
            exit_on_user_error(fail)
        assert info.value.code == f"error: {exc}"
    with pytest.raises(KeyError):  # a bug is not a user error: the traceback stays
        exit_on_user_error(lambda: {}["missing"])


def test_main_routes_arguments(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "register", lambda *a, **k: calls.append(("register", a, k)) or {})
    monkeypatch.setattr(cli, "apply", lambda *a: calls.append(("apply", a)) or {"points": 3})
    monkeypatch.setattr(cli, "demo", lambda *a: calls.append(("demo", a)) or {})
    assert cli.main(["register", "--fixed", "f.nii", "--moving", "m.nii", "--output_dir", "out", "--overwrite"]) == 0
    assert cli.main(["register", "--fixed", "f.nii", "--moving", "m.nii", "--output_dir", "out", "--stage", "affine"]) == 0
    assert cli.main(["apply", "--transform_dir", "out", "--points", "p.csv", "--output", "o.csv", "--inverse", "--points_space", "ras"]) == 0
    assert cli.main(["demo"]) == 0
    assert calls == [
        ("register", ("f.nii", "m.nii", "out", None, None, True), {"stage": "full"}),
        ("register", ("f.nii", "m.nii", "out", None, None, False), {"stage": "affine"}),
        ("apply", ("out", "o.csv", None, "p.csv", True, "linear", "ras", False)),
        ("demo", ("outputs/demo", "sample_data/demo")),
    ]
    assert capsys.readouterr().out.strip() == "{'points': 3}"


def test_main_reports_user_errors_with_exit_code_2(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise FileNotFoundError("f.nii: image file not found")

    monkeypatch.setattr(cli, "register", fail)
    assert cli.main(["register", "--fixed", "f.nii", "--moving", "m.nii", "--output_dir", "out"]) == 2
    assert capsys.readouterr().err == "error: f.nii: image file not found\n"


@pytest.mark.parametrize("argv", [[], ["register", "--fixed", "f.nii"], ["apply", "--transform_dir", "t", "--output", "o", "--interp", "cubic"]])
def test_main_refuses_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage: python -m bundle" in capsys.readouterr().err

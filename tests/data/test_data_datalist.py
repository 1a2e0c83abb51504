"""``bundle.data.datalist``: paths resolved against the datalist's folder, problems named in one line."""

from __future__ import annotations

import json

import pytest

from bundle.data.datalist import read_datalist


def test_paths_resolve_against_the_datalist_folder(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "b.nii.gz").write_bytes(b"")
    (tmp_path / "list.json").write_text(json.dumps({"test": [{"fixed": "a.nii.gz", "moving": "b.nii.gz", "contrast": "t2"}]}))
    items = read_datalist(tmp_path / "list.json", "test")
    assert items == [{"fixed": str(tmp_path / "a.nii.gz"), "moving": str(tmp_path / "b.nii.gz"), "contrast": "t2"}]


def test_a_missing_file_is_named_with_its_item(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "list.json").write_text(json.dumps({"test": [{"fixed": "a.nii.gz", "moving": "gone.nii.gz"}]}))
    with pytest.raises(FileNotFoundError, match=r"gone.nii.gz: file not found \('moving' of item 0 of 'test'"):
        read_datalist(tmp_path / "list.json", "test")

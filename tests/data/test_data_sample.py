"""``bundle/data/sample.py``: the sample data set is generated once and regenerated only when its arguments change.

The generator itself (``bundle.data.pairs.write_sample_data``, tested in ``test_data_pairs.py`` and
``test_data_writer.py``) is replaced by a stand-in that writes the datalist header it would write,
so these tests take milliseconds.
"""

from __future__ import annotations

import json

import pytest

from bundle.data import sample


@pytest.fixture
def calls(monkeypatch):
    made = []

    def fake_write_sample_data(output_dir, n_train=16, n_val=4, n_test=20, spatial_dims=3, spacing_mm=2.0, seed=0, **kwargs):
        made.append({"n_train": n_train, "n_val": n_val, "n_test": n_test, "spatial_dims": spatial_dims, "spacing_mm": spacing_mm, "seed": seed, **kwargs})
        data = {"spatial_dims": spatial_dims, "spacing_mm": spacing_mm, "seed": seed}
        for split, n in (("training", n_train), ("validation", n_val), ("test", n_test)):
            data[split] = [{"fixed": f"{split}/{i:04d}/fixed.nii.gz"} for i in range(n)]
        path = output_dir / "datalist.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return path

    monkeypatch.setattr(sample, "write_sample_data", fake_write_sample_data)
    return made


ARGS = {"spatial_dims": 2, "spacing_mm": 4.0, "n_train": 2, "n_val": 1, "n_test": 3, "seed": 5}


def test_first_call_generates_and_returns_the_datalist_path(tmp_path, calls):
    path = sample.ensure_sample_datalist(tmp_path / "s", **ARGS)
    assert path == str(tmp_path / "s" / "datalist.json") and isinstance(path, str)
    assert calls == [ARGS]


def test_same_arguments_reuse_the_data_set(tmp_path, calls):
    sample.ensure_sample_datalist(tmp_path, **ARGS)
    assert sample.ensure_sample_datalist(tmp_path, **ARGS) == str(tmp_path / "datalist.json")
    assert len(calls) == 1


@pytest.mark.parametrize("change", [{"spatial_dims": 3}, {"spacing_mm": 2.0}, {"seed": 6}, {"n_train": 3}, {"n_val": 0}, {"n_test": 1}])
def test_other_arguments_regenerate(tmp_path, calls, change):
    sample.ensure_sample_datalist(tmp_path, **ARGS)
    sample.ensure_sample_datalist(tmp_path, **{**ARGS, **change})
    assert len(calls) == 2 and calls[1] == {**ARGS, **change}


def test_an_omitted_argument_means_its_default(tmp_path, calls):
    sample.ensure_sample_datalist(tmp_path, **ARGS)
    sample.ensure_sample_datalist(tmp_path, **{k: v for k, v in ARGS.items() if k != "seed"})
    assert len(calls) == 2

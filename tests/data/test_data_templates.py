"""Templates read from installed packages."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from bundle.data import templates

# The SPM templates come from spm-runtime, installed apart from the extras (--no-deps).
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("spm_runtime") is None,
    reason="needs spm-runtime: pip install --no-deps spm-runtime matlab-runtime",
)

SPM_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def test_spm_templates_share_one_grid():
    spm = templates.load_spm_templates()
    np.testing.assert_allclose(spm.affine, SPM_AFFINE)
    for name in ("t1", "t2", "pd", "grey", "white", "csf"):
        array = getattr(spm, name)
        assert array.shape == (91, 109, 91) and array.dtype == np.float32, name
        assert array.min() >= 0.0 and 0.9 < array.max() <= 1.0, name
        assert not array.flags.writeable, name
    assert set(spm.tissue_maps) == {"csf", "grey", "white"}
    total = float((spm.grey + spm.white + spm.csf).max())
    assert total <= 1.01  # probabilities, up to uint8 quantisation
    assert templates.load_spm_templates() is spm  # cached


def test_brain_mask_is_the_parenchyma():
    spm = templates.load_spm_templates()
    brain = spm.brain_mask
    assert brain.shape == spm.t1.shape and brain.dtype == bool
    # about 1.2-1.5 litres of 8 mm^3 voxels; excludes CSF-dominated voxels
    assert 1.0e6 < brain.sum() * 8.0 < 1.8e6, brain.sum()
    assert not brain[spm.csf > 0.9].any()


def test_contrasts_differ_where_tissues_differ():
    spm = templates.load_spm_templates()
    wm, csf = spm.white > 0.9, spm.csf > 0.9
    assert spm.t1[wm].mean() > spm.t1[csf].mean()  # T1w: white matter bright
    assert spm.t2[csf].mean() > spm.t2[wm].mean()  # T2w: CSF bright


def test_single_subject_on_template_grid():
    array, affine = templates.load_spm_single_subject()
    assert array.shape == (91, 109, 91) and array.dtype == np.float32
    np.testing.assert_allclose(affine, SPM_AFFINE)
    assert np.corrcoef(array.ravel(), templates.load_spm_templates().t1.ravel())[0, 1] > 0.8


def test_mni152():
    pytest.importorskip("nilearn")
    mni = templates.load_mni152(resolution=1)
    assert mni.t1.shape == mni.grey.shape == mni.white.shape == (197, 233, 189)
    np.testing.assert_allclose(np.diag(mni.affine)[:3], [1.0, 1.0, 1.0])
    for array in (mni.t1, mni.grey, mni.white):
        assert array.dtype == np.float32 and array.min() >= 0.0 and array.max() <= 1.0


def test_missing_spm_runtime_explains_install(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "spm_runtime" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    templates.spm_archive_path.cache_clear()
    hint = r"\[samples\].*pip install --no-deps spm-runtime matlab-runtime"
    try:
        with pytest.raises(templates.SampleDataUnavailableError, match=hint):
            templates.spm_archive_path()
    finally:
        monkeypatch.undo()
        templates.spm_archive_path.cache_clear()

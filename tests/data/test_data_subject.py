"""The unseen evaluation subject: segmentation, rendered contrasts, pairs, and no training path reads it."""

import numpy as np

from bundle.data import templates
from bundle.data.subject import subject_volumes, write_subject_data


def _means(image, labels):
    return [float(image[labels == v].mean()) for v in (1, 2, 3)]


def test_subject_segmentation_and_contrasts():
    volumes, affine = subject_volumes(4.0)
    labels = volumes["labels"]
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    csf, grey, white = _means(volumes["t1"], labels)
    assert csf < grey < white  # real T1: the mixture classes are ordered by intensity
    t2 = _means(volumes["t2"], labels)
    assert t2[0] > t2[1] > t2[2]  # rendered T2: CSF brightest, white matter darkest
    assert 0.05 < np.mean(labels > 0) < 0.5
    assert affine[0, 0] > 0  # stored RAS, like the sample pairs


def test_subject_pairs_have_known_fields(tmp_path):
    path = write_subject_data(tmp_path, pairs_per_contrast=1, spacing_mm=4.0)
    import json

    import nibabel as nib

    items = json.load(open(path))["test"]
    assert [i["contrast"] for i in items] == ["t2", "pd"]
    fixed = nib.load(tmp_path / items[0]["fixed"]).get_fdata()
    assert np.allclose(fixed, subject_volumes(4.0)[0]["t1"], atol=1e-6)  # the real scan is the fixed image
    assert len({i["seed"] for i in items}) == 2


def test_training_data_never_read_the_subject(monkeypatch):
    from bundle.data import pairs, synth

    read = []
    original = templates._read_spm_member.__wrapped__
    for cached in (templates._read_spm_member, templates.load_spm_templates, templates.source_volumes, synth.source_anatomies):
        cached.cache_clear()  # force every source to be read again, through the recorder below
    monkeypatch.setattr(templates, "_read_spm_member", lambda member: read.append(member) or original(member))
    synth.SynthPairGenerator(spatial_dims=2, spacing_mm=4.0)(0)
    pairs.generate_pair(1, "t2", 2, 4.0)
    assert read and not any("single_subj" in m for m in read)

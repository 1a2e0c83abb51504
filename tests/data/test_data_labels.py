"""``bundle/data/labels.py``: hard labels from tissue probabilities, known maps in, known labels out."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.data.labels import LABELS, tissue_labels


def test_label_values_and_names():
    assert LABELS == {0: "background", 1: "csf", 2: "grey", 3: "white"}


def test_most_probable_tissue_wins_where_the_brain_is():
    csf = np.array([[0.7, 0.1, 0.2, 0.0], [0.1, 0.0, 0.3, 0.2]])
    grey = np.array([[0.2, 0.6, 0.2, 0.0], [0.1, 0.0, 0.1, 0.2]])
    white = np.array([[0.1, 0.3, 0.5, 0.0], [0.1, 0.4, 0.1, 0.05]])
    labels = tissue_labels({"csf": csf, "grey": grey, "white": white})
    assert labels.dtype == np.uint8 and labels.shape == (2, 4)
    # sums: 1.0, 1.0, 0.9, 0.0 / 0.3, 0.4, 0.5, 0.45 -> below 0.5 is background
    np.testing.assert_array_equal(labels, [[1, 2, 3, 0], [0, 0, 1, 0]])


def test_threshold_is_inclusive_and_ties_go_to_the_first_tissue():
    half = {"csf": np.array([0.25, 0.2]), "grey": np.array([0.25, 0.2]), "white": np.array([0.0, 0.0])}
    np.testing.assert_array_equal(tissue_labels(half), [1, 0])  # sum 0.5 is brain (csf wins the tie), 0.4 is not
    np.testing.assert_array_equal(tissue_labels(half, threshold=0.3), [1, 1])
    np.testing.assert_array_equal(tissue_labels(half, threshold=0.0), [1, 1])


def test_3d_maps_and_extra_maps_are_ignored():
    rng = np.random.default_rng(0)
    maps = {k: rng.random((4, 5, 6)) for k in ("csf", "grey", "white", "bone")}
    labels = tissue_labels(maps, threshold=0.0)
    stacked = np.stack([maps["csf"], maps["grey"], maps["white"]])
    np.testing.assert_array_equal(labels, stacked.argmax(0) + 1)


def test_a_missing_tissue_is_a_key_error():
    with pytest.raises(KeyError, match="white"):
        tissue_labels({"csf": np.zeros(3), "grey": np.zeros(3)})

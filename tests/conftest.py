"""Shared fixtures: small generated sample data sets (2D and 3D) and a bundle runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)


def affine_ddf(mat, shape) -> torch.Tensor:
    """Batch-of-one DDF of an affine map in voxels: ``(A - I) x`` plus the shift ``(1, 2[, 3])``, float64."""
    import numpy as np

    dims = len(shape)
    x = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
    shift = torch.arange(1, dims + 1, dtype=torch.float64).view(dims, *([1] * dims))
    return (torch.einsum("ij,j...->i...", torch.as_tensor(np.asarray(mat) - np.eye(dims)), x) + shift)[None]


def value_and_grad(loss, *inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``loss(inputs[0], *inputs[1:])`` and its gradient with respect to ``inputs[0]`` (a detached copy)."""
    leaf = inputs[0].detach().clone().requires_grad_(True)
    value = loss(leaf, *inputs[1:])
    value.backward()
    return value.detach(), leaf.grad


def composed(config: str) -> str:
    """``--config_file`` value of a config composed over ``configs/common.json``, as the README gives it."""
    return f"['configs/common.json','configs/{config}']"


def config_files(config: str) -> list[str]:
    """The files of a composed config, for ``ConfigParser.read_config``."""
    from bundle.cli import config_files as files

    return files(config)


def run_bundle(*args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` from the bundle root, as a user would."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"monai.bundle {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def sample_2d(tmp_path_factory) -> Path:
    """A 2D sample data set at 2 mm (96 x 112 after padding): 8 training, 2 validation, 4 test pairs."""
    from bundle.data.sample import ensure_sample_datalist

    folder = tmp_path_factory.mktemp("sample2d")
    return Path(ensure_sample_datalist(folder, spatial_dims=2, spacing_mm=2.0, n_train=8, n_val=2, n_test=4))


@pytest.fixture(scope="session")
def sample_3d(tmp_path_factory) -> Path:
    """A small 3D data set at 6 mm (about 16 x 19 x 16 voxels) for fast interface tests."""
    from bundle.data.sample import ensure_sample_datalist

    folder = tmp_path_factory.mktemp("sample3d")
    return Path(ensure_sample_datalist(folder, spatial_dims=3, spacing_mm=4.0, n_train=2, n_val=1, n_test=2))


@pytest.fixture(scope="module")
def fitted():
    """The tiny 2D network of ``tests/explain/explain_helpers.py`` fitted to its pairs (cached), and the pairs."""
    from explain_helpers import fitted_network, fitted_pairs  # tests/explain is on sys.path once its modules load

    return fitted_network(), fitted_pairs()

"""Synthetic pairs and a tiny 2D network fitted to them (cached per test session).

The anatomy is a smooth "head": Gaussian blobs inside a disk, seen in a moving contrast and,
with inverted tissue contrast, in the fixed contrast. The moving image of a pair is the
anatomy displaced by a known field ``h`` (a translation, or a local Gaussian bump in the box
:data:`BOX` of either sign, or nothing); the correct moving-onto-fixed displacement is the
inverse of ``h``.

Learning registration from scratch takes far more steps than a unit test can afford on a
CPU, so the network is fitted by instance optimisation: 150 Adam steps (lr 1e-3; 3e-3
diverges for the deformable head), supervised with the known fields, on the fixed set of
pairs :func:`fitted_pairs`. It then registers these pairs (translations and the local
bump) and its outputs depend on their content; it does not generalise to new anatomy.
"""

from __future__ import annotations

import functools

import torch
from monai.networks.blocks import Warp

from bundle.explain.sanity import bump_displacement
from bundle.networks import RegistrationBundleNet, affine_to_ddf

SIZE = (64, 64)
#: the box of the local deformation (voxels, stop exclusive), and the bump it holds
BOX = ((28, 52), (14, 38))
BUMP_SIGMA = 4.0  # a sixth of the box side, as bundle.explain.sanity.local_deformation_case uses
BUMP_AMPLITUDE = 0.8 * BUMP_SIGMA
DEFORMABLE_WEIGHT = 10.0
LR = 1e-3
_WARP = Warp(mode="bilinear", padding_mode="border")


def anatomy(seed: int = 7, size=SIZE, blobs: int = 7, sigma=(3.0, 8.0), centres=()) -> tuple[torch.Tensor, torch.Tensor]:
    """``(moving-contrast, fixed-contrast)`` images ``(1, 1, *size)`` of one random anatomy.

    Args:
        seed: random seed.
        size: grid shape.
        blobs: number of random Gaussian blobs inside the disk.
        sigma: range of the blob widths (voxels).
        centres: extra blobs at these centres (width the middle of ``sigma``).
    """
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij")
    centre = [(s - 1) / 2 for s in size]
    r = torch.sqrt(sum(((a - c) / (0.38 * s)) ** 2 for a, c, s in zip(axes, centre, size)))
    disk = torch.sigmoid((1 - r) * 12)
    img = torch.zeros(size)
    spots = [[cc + (torch.rand(1, generator=g).item() - 0.5) * 0.55 * s for cc, s in zip(centre, size)] for _ in range(blobs)]
    widths = [sigma[0] + (sigma[1] - sigma[0]) * torch.rand(1, generator=g).item() for _ in range(blobs)]
    spots += [list(c) for c in centres]
    widths += [(sigma[0] + sigma[1]) / 2] * len(centres)
    for c, sig in zip(spots, widths):
        amp = 0.3 + 0.7 * torch.rand(1, generator=g).item()
        img += amp * torch.exp(-sum((a - ci) ** 2 for a, ci in zip(axes, c)) / (2 * sig**2))
    img = 0.2 + 0.8 * (img - img.min()) / (img.max() - img.min())
    return (disk * img)[None, None], (disk * (1.2 - img))[None, None]


def sparse_anatomy() -> tuple[torch.Tensor, torch.Tensor]:
    """The anatomy of the fitted pairs: three small random blobs and one centred in :data:`BOX`."""
    centre = tuple((a + b - 1) / 2.0 for a, b in BOX)
    return anatomy(7, SIZE, blobs=3, sigma=(2.0, 4.0), centres=[centre])


ANATOMY = sparse_anatomy


def bump(sign: float = 1.0) -> torch.Tensor:
    """The local deformation of :data:`BOX` (``(1, 2, *SIZE)``), as ``local_deformation_case`` builds it."""
    centre = [(a + b - 1) / 2.0 for a, b in BOX]
    return sign * bump_displacement(SIZE, centre, BUMP_SIGMA, BUMP_AMPLITUDE)


def translation(tx: float, ty: float) -> torch.Tensor:
    """A constant displacement field ``(1, 2, *SIZE)``."""
    theta = torch.tensor([[[1.0, 0.0, tx], [0.0, 1.0, ty]]])
    return affine_to_ddf(theta, SIZE)


def invert(h: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Inverse displacement by fixed-point iteration ``v = -h(x + v)``."""
    v = -h
    for _ in range(iterations):
        v = -_WARP(h, v)
    return v


#: (translation, bump sign) of the fitted pairs
VARIANTS = ((3.0, -2.0, 0.0), (0.0, 0.0, 1.0), (-2.0, 2.5, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, -1.0), (-1.5, -3.0, 0.0))


def fitted_pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(moving, fixed, gt affine ddf, gt ddf)`` of the pairs the network is fitted to (batch 6).

    ``moving(x) = anatomy(x + h(x))`` with ``h`` = translation + bump; pair 1 is the
    localisation case of ``local_deformation_case(anatomy, BOX)`` exactly.
    """
    mov_a, fix_a = ANATOMY()
    movs, g_affs, gs = [], [], []
    for tx, ty, s in VARIANTS:
        h = translation(tx, ty) + bump(s)
        movs.append(_WARP(mov_a, h))
        g_affs.append(translation(-tx, -ty))
        gs.append(invert(h))
    n = len(VARIANTS)
    return torch.cat(movs), fix_a.expand(n, -1, -1, -1).clone(), torch.cat(g_affs), torch.cat(gs)


def tiny_network(seed: int = 0) -> RegistrationBundleNet:
    torch.manual_seed(seed)
    return RegistrationBundleNet(2, encoder_channels=(8, 16, 16), affine_channels=16, deformable_level=1, integration_steps=5)


@functools.lru_cache(maxsize=2)
def fitted_network(steps: int = 150, seed: int = 0) -> RegistrationBundleNet:
    """The tiny network fitted to :func:`fitted_pairs` (computed once per session)."""
    net = tiny_network(seed)
    mov, fix, g_aff, g = fitted_pairs()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    for _ in range(steps):
        out = net.register(mov, fix, bidirectional=False, synthesis=False).forward
        # the affine fields are translations, so ddf = ddf_deformable + ddf_affine exactly;
        # the local term is up-weighted because the bump covers a small part of the grid
        loss = (out.ddf_affine - g_aff).pow(2).mean() + DEFORMABLE_WEIGHT * (out.ddf_deformable - (g - g_aff)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def random_network(dims: int, seed: int = 0, **kwargs) -> RegistrationBundleNet:
    """An untrained network with perturbed weights (so the affine head is not exactly the identity)."""
    torch.manual_seed(seed)
    net = RegistrationBundleNet(dims, **kwargs)
    for p in net.parameters():
        p.data += 0.01 * torch.randn_like(p)
    return net.eval()

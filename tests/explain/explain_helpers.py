"""Synthetic pairs and a tiny 2D network trained on them (cached per test session).

A pair is a smooth "head": random Gaussian blobs inside a disk (the moving contrast) and the
same anatomy with inverted tissue contrast (the fixed contrast), the fixed image being the
anatomy displaced by a known field ``g`` (a random affine map plus, half of the time, a
local Gaussian bump), so that the correct moving-onto-fixed displacement is exactly ``g``.
The network is trained with supervision on ``g`` (affine stage on its affine part, the
composed field on all of it): cheap, and enough for a model whose outputs depend on the
image content, which is what the faithfulness checks need.
"""

from __future__ import annotations

import functools
import math

import torch
from monai.networks.blocks import Warp

from bundle.networks import RegistrationBundleNet, affine_to_ddf
from bundle.explain.sanity import bump_displacement
from bundle.explain.targets import compose_affine

SIZE = (64, 64)
_WARP = Warp(mode="bilinear", padding_mode="zeros")


def anatomy(batch: int, size=SIZE, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(moving-contrast, fixed-contrast)`` images ``(B, 1, *size)`` of the same random anatomy."""
    g = generator
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij")
    centre = [(s - 1) / 2 for s in size]
    r = torch.sqrt(sum(((a - c) / (0.38 * s)) ** 2 for a, c, s in zip(axes, centre, size)))
    disk = torch.sigmoid((1 - r) * 12)
    out = []
    for _ in range(batch):
        img = torch.zeros(size)
        for _ in range(7):
            c = [cc + (torch.rand(1, generator=g).item() - 0.5) * 0.55 * s for cc, s in zip(centre, size)]
            sig = 3 + 5 * torch.rand(1, generator=g).item()
            amp = 0.3 + 0.7 * torch.rand(1, generator=g).item()
            img += amp * torch.exp(-sum((a - ci) ** 2 for a, ci in zip(axes, c)) / (2 * sig**2))
        img = 0.2 + 0.8 * (img - img.min()) / (img.max() - img.min())
        out.append(img)
    c_in = torch.stack(out)[:, None]
    return disk * c_in, disk * (1.2 - c_in)


def random_field(batch: int, size=SIZE, generator: torch.Generator | None = None, bump_prob: float = 0.5):
    """Random ground-truth fields: ``(g_affine, g)`` ``(B, 2, *size)`` and ``theta`` ``(B, 2, 3)``."""
    gen = generator
    u = lambda *s: 2 * torch.rand(*s, generator=gen) - 1  # noqa: E731
    theta = compose_affine(4.0 * u(batch, 2), math.radians(8) * u(batch), 1 + 0.05 * u(batch, 2), 0.03 * u(batch, 1))
    g_aff = affine_to_ddf(theta, size)
    g = g_aff.clone()
    for i in range(batch):
        if torch.rand(1, generator=gen).item() < bump_prob:
            centre = [s / 2 + u(1).item() * 0.2 * s for s in size]
            sigma = 3 + 2 * torch.rand(1, generator=gen).item()
            g[i : i + 1] += bump_displacement(size, centre, sigma, 0.8 * sigma, u(2))
    return g_aff, g, theta


def make_pair(batch: int, size=SIZE, generator: torch.Generator | None = None, bump_prob: float = 0.5):
    """``(moving, fixed, g_affine, g)``: ``fixed(x) = anatomy_fixed_contrast(x + g(x))``."""
    mov, fix_c = anatomy(batch, size, generator)
    g_aff, g, _ = random_field(batch, size, generator, bump_prob)
    return mov, _WARP(fix_c, g), g_aff, g


def tiny_network(seed: int = 0) -> RegistrationBundleNet:
    torch.manual_seed(seed)
    return RegistrationBundleNet(2, encoder_channels=(8, 16, 16), affine_channels=16, deformable_level=1, integration_steps=5)


@functools.lru_cache(maxsize=1)
def trained_network(steps: int = 300, batch: int = 8) -> RegistrationBundleNet:
    """A tiny 2D network trained for ``steps`` steps on fresh synthetic pairs (same result every call)."""
    torch.set_num_threads(1)
    net = tiny_network()
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        mov, fix, g_aff, g = make_pair(batch, generator=gen)
        out = net.register(mov, fix, bidirectional=False, synthesis=False).forward
        loss = (out.ddf_affine - g_aff).pow(2).mean() + (out.ddf - g).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def held_out_pair(seed: int = 123, bump_prob: float = 0.0):
    """One held-out pair ``(moving, fixed, g_affine, g)`` (batch 1)."""
    return make_pair(1, generator=torch.Generator().manual_seed(seed), bump_prob=bump_prob)

"""The label-map synthesis generator makes what it claims: shared anatomy, different contrasts, new anatomy per seed."""

import numpy as np
import pytest
import torch

from bundle.data.deform import MotionRange
from bundle.data.synth import SynthPairDataset, SynthPairGenerator, source_anatomies

STILL = dict(motion=MotionRange.none())


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    scores = [2 * float(((a == v) & (b == v)).sum()) / float((a == v).sum() + (b == v).sum()) for v in (1, 2, 3)]
    return float(np.mean(scores))


def _tissue_order(image: torch.Tensor, label: torch.Tensor) -> tuple[int, ...]:
    means = [float(image[label == v].mean()) for v in (1, 2, 3)]
    return tuple(np.argsort(means))


def test_two_images_share_the_label_map_and_differ_in_contrast():
    gen = SynthPairGenerator(spatial_dims=2, spacing_mm=2.0, **STILL)
    orders_differ, t1_like = 0, 0
    for seed in range(12):
        pair = gen(seed)
        assert torch.equal(pair["fixed_label"], pair["moving_label"])  # no motion: one anatomy, one label map
        label = pair["fixed_label"]
        assert set(torch.unique(label).tolist()) == {0, 1, 2, 3}
        fixed_order, moving_order = _tissue_order(pair["fixed"], label), _tissue_order(pair["moving"], label)
        orders_differ += fixed_order != moving_order
        t1_like += fixed_order == (0, 1, 2)  # CSF < grey < white: T1-weighted
        assert not torch.allclose(pair["fixed"], pair["moving"], atol=0.05)
    assert orders_differ >= 4  # the order of tissue intensities changes between the two images in many pairs
    assert t1_like >= 6  # the fixed image is T1-weighted with probability 0.7 (random intensities otherwise)


def test_pairs_are_reproducible_and_differ_from_seed_to_seed():
    gen = SynthPairGenerator(spatial_dims=2, spacing_mm=2.0)
    a, b, c = gen(5), gen(5), gen(6)
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.allclose(a["fixed"], c["fixed"])
    assert _dice(a["fixed_label"], c["fixed_label"]) < 0.95


def test_anatomy_changes_shape_not_only_pose():
    gen = SynthPairGenerator(spatial_dims=3, spacing_mm=4.0, **STILL)
    scores = []
    for seed in range(3):
        label = gen(seed)["fixed_label"][0]
        for source in source_anatomies(4.0):
            maps = torch.from_numpy(source)
            ref = (maps[:3].argmax(0) + 1) * (maps[:3].sum(0) >= 0.5)
            pad = [(t - s) // 2 for s, t in zip(ref.shape, label.shape)]
            padded = torch.zeros_like(label, dtype=ref.dtype)
            padded[tuple(slice(p, p + s) for p, s in zip(pad, ref.shape))] = ref
            scores.append(_dice(label, padded))
    # each synthetic anatomy is close to one of the sources, but never equal to it
    assert 0.4 < max(scores) < 0.95


def test_motion_moves_the_moving_image_and_its_labels_together():
    pair = SynthPairGenerator(spatial_dims=3, spacing_mm=4.0)(3)
    assert pair["fixed"].shape == pair["moving"].shape == (1, 48, 64, 48)  # padded to multiples of 16
    assert _dice(pair["fixed_label"], pair["moving_label"]) < 0.9
    inside = pair["moving_label"] > 0
    assert float(pair["moving"][inside].mean()) > float(pair["moving"][~inside].mean())  # image follows its labels


def test_dataset_draws_new_pairs_each_epoch_reproducibly():
    first, second = SynthPairDataset(length=2, seed=1, spatial_dims=2), SynthPairDataset(length=2, seed=1, spatial_dims=2)
    epoch1 = [first[i]["fixed"] for i in range(2)]
    epoch2 = [first[i]["fixed"] for i in range(2)]
    assert not torch.equal(epoch1[0], epoch2[0])
    assert torch.equal(epoch1[0], second[0]["fixed"]) and torch.equal(epoch2[0], second[0]["fixed"])
    with pytest.raises(ValueError, match="spatial_dims"):
        SynthPairGenerator(spatial_dims=4)


def _epochs(seed: int, workers: int, epochs: int = 2) -> list[list[torch.Tensor]]:
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(SynthPairDataset(length=2, seed=1, spatial_dims=2, spacing_mm=4.0), batch_size=1, num_workers=workers)
    return [[batch["fixed"] for batch in loader] for _ in range(epochs)]


def test_dataloader_workers_draw_new_pairs_each_epoch_reproducibly():
    """Worker processes restart every epoch with fresh request counts; their seeds keep the pairs new."""
    first, again = _epochs(0, workers=2), _epochs(0, workers=2)
    assert not torch.equal(first[0][0], first[1][0]) and not torch.equal(first[0][1], first[1][1])
    assert all(torch.equal(a, b) for e1, e2 in zip(first, again) for a, b in zip(e1, e2))  # same torch seed: same data


@pytest.mark.parametrize("dims", [2, 3])
def test_gt_ddf_undoes_the_motion(dims):
    """``Warp()(moving_label, gt_ddf)`` gives the fixed labels back, as for the evaluation pairs."""
    from monai.networks.blocks import Warp

    gen = SynthPairGenerator(spatial_dims=dims, spacing_mm=4.0, size_divisor=8)
    for seed in range(2):
        pair = gen(seed)
        assert pair["gt_ddf"].shape == (dims, *pair["fixed"].shape[1:])
        brain = pair["fixed_label"] > 0
        undone = Warp(mode="nearest", padding_mode="zeros")(pair["moving_label"][None], pair["gt_ddf"][None])[0]
        moved = float((pair["moving_label"][brain] == pair["fixed_label"][brain]).float().mean())
        agree = float((undone[brain] == pair["fixed_label"][brain]).float().mean())
        assert moved < 0.8 < 0.95 < agree, (moved, agree)
        assert float(pair["gt_ddf"].norm(dim=0)[brain[0]].mean()) > 1.0  # the motion is more than a voxel


def test_still_pairs_have_a_zero_gt_ddf():
    pair = SynthPairGenerator(spatial_dims=2, spacing_mm=4.0, **STILL)(1)
    assert float(pair["gt_ddf"].abs().max()) < 1e-5


def test_skull_stripping_blackens_the_head_of_each_image_independently():
    """With probability 1 no head tissue is shown; with 0.5 both kinds of image occur, and mixed pairs too."""
    anatomy_head = torch.from_numpy(source_anatomies(4.0)[0][3])
    strip = SynthPairGenerator(spatial_dims=3, spacing_mm=4.0, size_divisor=8, p_skull_strip=1.0, **STILL)
    pair = strip(0)
    head = (pair["fixed_label"] == 0) & (pair["fixed"] > 0.3)
    assert float(anatomy_head.max()) > 0.9  # the SPM source has head tissue to hide
    assert float(head.float().mean()) < 0.01
    half = SynthPairGenerator(spatial_dims=3, spacing_mm=4.0, size_divisor=8, p_skull_strip=0.5, **STILL)
    kinds = set()
    for seed in range(16):
        p = half(seed)
        bright_head = [float(((p["fixed_label"] == 0) & (img > 0.2)).float().mean()) > 0.02 for img in (p["fixed"], p["moving"])]
        kinds.add(tuple(bright_head))
    assert (True, False) in kinds or (False, True) in kinds  # one stripped, one whole-head image


def test_skull_strip_probability_zero_keeps_earlier_pairs_bitwise():
    a, b = SynthPairGenerator(spatial_dims=2, spacing_mm=4.0)(3), SynthPairGenerator(spatial_dims=2, spacing_mm=4.0, p_skull_strip=0.0)(3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _padded(volume: np.ndarray, divisor: int = 8) -> torch.Tensor:
    pads = [((-s) % divisor) // 2 for s in volume.shape]
    out = torch.zeros(*[s + (-s) % divisor for s in volume.shape])
    out[tuple(slice(p, p + s) for p, s in zip(pads, volume.shape))] = torch.from_numpy(np.array(volume))
    return out


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    mask = b > 0.05
    return float(spearmanr(a[mask].numpy(), b[mask].numpy())[0])


def test_real_image_pairs_show_the_sources_real_images():
    """With p_real_image 1 (no anatomy change, motion or degradation) the fixed image is always a real T1 of
    a source (up to the monotonic gamma); the moving one is a real image of the source or a rendered contrast."""
    from bundle.data.synth import source_images

    gen = SynthPairGenerator(
        spatial_dims=3, spacing_mm=4.0, size_divisor=8, anatomy_velocity_mm=0.0, max_blur_vox=0.0, max_bias=0.0, max_noise=0.0,
        p_real_image=1.0, **STILL,
    )
    reals = [(name, _padded(image)) for source in source_images(4.0) for name, image in source.items()]
    assert sorted(name for name, _ in reals) == ["pd", "t1", "t1", "t2"]  # SPM's three contrasts, MNI152's T1
    moving_kinds = set()
    for seed in range(10):
        pair = gen(seed)
        fixed_best = max((_rank_correlation(pair["fixed"][0], img), name) for name, img in reals)
        assert fixed_best[1] == "t1" and fixed_best[0] > 0.99
        moving_best = max(_rank_correlation(pair["moving"][0], img) for _, img in reals)
        moving_kinds.add("real" if moving_best > 0.99 else "rendered")
    assert moving_kinds == {"real", "rendered"}


def test_real_image_probability_zero_keeps_earlier_pairs_bitwise_and_is_checked():
    a, b = SynthPairGenerator(spatial_dims=2, spacing_mm=4.0)(5), SynthPairGenerator(spatial_dims=2, spacing_mm=4.0, p_real_image=0.0)(5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="p_real_image"):
        SynthPairGenerator(p_real_image=1.5)


def test_field_of_view_cuts_images_or_replicates_the_moving_images_edges():
    """With p_field_of_view 1 (no motion) an image loses slabs at some faces (black), or the moving image's
    cut faces are extended outwards (replicated slices); 0 keeps earlier pairs bitwise."""
    kw = dict(spatial_dims=3, spacing_mm=4.0, size_divisor=8, max_blur_vox=0.0, max_bias=0.0, max_noise=0.0, **STILL)
    plain, cut = SynthPairGenerator(**kw), SynthPairGenerator(p_field_of_view=1.0, max_field_of_view_cut=0.3, **kw)
    black, replicated = 0, 0
    for seed in range(8):
        a, b = plain(seed), cut(seed)
        lost = (a["fixed"] > 0.05) & (b["fixed"] == 0)
        black += bool(lost.any())
        assert torch.equal(b["fixed"][~lost & (b["fixed"] > 0)], a["fixed"][~lost & (b["fixed"] > 0)])  # kept voxels unchanged
        m = b["moving"][0]
        for axis in range(3):
            for first, second in ((m.select(axis, 0), m.select(axis, 1)), (m.select(axis, -1), m.select(axis, -2))):
                replicated += bool(torch.allclose(first, second, atol=1e-4) and float(first.max()) > 0.05)
    assert black >= 4
    assert replicated >= 1
    assert all(torch.equal(x, y) for x, y in zip(plain(3).values(), SynthPairGenerator(p_field_of_view=0.0, **kw)(3).values()))
    with pytest.raises(ValueError, match="p_field_of_view"):
        SynthPairGenerator(p_field_of_view=-0.1)
    with pytest.raises(ValueError, match="max_field_of_view_cut"):
        SynthPairGenerator(p_field_of_view=0.5, max_field_of_view_cut=0.5)


def test_still_pairs_are_aligned_and_not_resampled():
    kw = dict(spatial_dims=3, spacing_mm=4.0, size_divisor=8)
    still, moved = SynthPairGenerator(p_still=1.0, **kw)(2), SynthPairGenerator(**kw)(2)
    assert float(still["gt_ddf"].abs().max()) == 0.0 and torch.equal(still["fixed_label"], still["moving_label"])
    assert float(moved["gt_ddf"].abs().mean()) > 1.0  # the same seed moves the image otherwise
    assert torch.equal(still["fixed"], moved["fixed"])  # the draws before the motion are the same
    assert all(torch.equal(a, b) for a, b in zip(moved.values(), SynthPairGenerator(p_still=0.0, **kw)(2).values()))
    with pytest.raises(ValueError, match="p_still"):
        SynthPairGenerator(p_still=2.0)


def test_posterior_render_follows_the_real_t1s_own_segmentation():
    """With p_posterior_render 1 a rendered moving image of a real-image pair is a partial-volume image of
    the real T1's own segmentation (source_posteriors): a per-tissue fit on those maps explains it (up to
    the random gamma), a fit on the population priors does not; 0 keeps earlier pairs bitwise."""
    from bundle.data.synth import source_posteriors

    kw = dict(spatial_dims=3, spacing_mm=4.0, size_divisor=8, anatomy_velocity_mm=0.0, max_blur_vox=0.0, max_bias=0.0, max_noise=0.0, **STILL)
    priors, posteriors = SynthPairGenerator(p_real_image=1.0, **kw), SynthPairGenerator(p_real_image=1.0, p_posterior_render=1.0, **kw)
    for stack, anatomy in zip(source_posteriors(4.0), source_anatomies(4.0)):
        assert stack.shape == anatomy.shape and np.all(stack >= 0) and np.all(stack.sum(axis=0) <= 1.0 + 1e-4)
        assert 0.7 < stack[:3].sum() / anatomy[:3].sum() < 1.3  # the mixture segments about the prior's brain volume

    def explained(image, stacks):  # best R^2 of a per-tissue linear fit over the sources
        y = image.numpy().ravel()
        scores = []
        for stack in stacks:
            x = np.stack([_padded(c).numpy().ravel() for c in stack] + [np.ones_like(y)], axis=1)
            residual = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
            scores.append(1.0 - residual.var() / y.var())
        return max(scores)

    rendered = 0
    for seed in range(16):
        a, b = priors(seed), posteriors(seed)
        assert torch.equal(a["fixed"], b["fixed"])  # same draws up to the moving image's tissue maps
        if torch.equal(a["moving"], b["moving"]):  # a real moving image: nothing rendered
            continue
        rendered += 1
        r2_posteriors, r2_priors = explained(b["moving"][0], source_posteriors(4.0)), explained(b["moving"][0], source_anatomies(4.0))
        assert r2_posteriors > 0.98 and r2_priors < r2_posteriors - 0.03
        assert explained(a["moving"][0], source_anatomies(4.0)) > 0.98  # without the option: rendered from the priors
    assert rendered >= 3
    plain, zero = SynthPairGenerator(p_real_image=0.5, **kw), SynthPairGenerator(p_real_image=0.5, p_posterior_render=0.0, **kw)
    assert all(torch.equal(x, y) for x, y in zip(plain(4).values(), zero(4).values()))
    with pytest.raises(ValueError, match="p_posterior_render"):
        SynthPairGenerator(p_posterior_render=1.5)

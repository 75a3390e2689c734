"""Preprocessing from the card: canonical orientation, spacing, intensities, and the exact way back."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from agn_cli.ct.preprocess import (
    DEFAULT_CT_NORMALISATION,
    normalise_ct,
    prepare_ct,
    resample_to_geometry,
    resample_to_spacing,
    resampled_geometry,
    to_canonical,
)
from agn_cli.ct.volume import Geometry, array_xyz, image_from_xyz, read_volume
from agn_cli.errors import AgnError
from agn_cli.runtime.checkpoint import ModelCard
from tests.conftest import require

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # RAS-stored NIfTI, as read by ITK
c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
OBLIQUE = (0.0, c, s, -1.0, 0.0, 0.0, 0.0, -s, c)  # axes permuted + 20 degree tilt


def card(spacing=(2.0, 2.0, 2.0), patch=(32, 32, 32)) -> ModelCard:
    return ModelCard(
        "attention-unet3d", {"num_classes": 2}, "segmentation", {0: "background", 1: "ball"},
        spacing=list(spacing), normalisation=dict(DEFAULT_CT_NORMALISATION), patch_size=list(patch),
    )


def phantom(direction, size=(60, 50, 24), spacing=(0.8, 0.9, 2.5), centre_mm=(8.0, -6.0, 4.0), radius=9.0):
    """CT-like volume (air -1000, 'organ' ball +200 HU) and its ball mask, placed by world coordinates."""
    geometry = Geometry(size, spacing, (-20.0, 15.0, -30.0), direction)
    ref = geometry.reference()
    index = np.indices(size).reshape(3, -1).T
    d = np.asarray(direction).reshape(3, 3)
    world = np.asarray(geometry.origin) + (index * np.asarray(spacing)) @ d.T
    centre = np.asarray(ref.TransformContinuousIndexToPhysicalPoint([n / 2 for n in size])) + np.asarray(centre_mm)
    ball = (np.linalg.norm(world - centre, axis=1) <= radius).reshape(size)
    ct = np.where(ball, 200, -1000).astype(np.int16)
    return image_from_xyz(ct, geometry), ball


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_canonical_and_back_leaves_real_label_map_unchanged(shared_dir):
    seg = read_volume(require(shared_dir / "data/ct/totalseg-example/example_seg.nii.gz"))
    canonical = to_canonical(seg)
    assert np.allclose(np.asarray(canonical.GetDirection()).reshape(3, 3), np.eye(3))  # LPS, axis-aligned scan
    back = resample_to_geometry(canonical, Geometry.of(seg), is_label=True)
    assert Geometry.of(back) == Geometry.of(seg)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(seg))


@pytest.mark.parametrize("direction", [FLIPPED, OBLIQUE])
def test_canonical_preserves_world_positions(direction):
    image, _ = phantom(direction)
    canonical = to_canonical(image)
    d = np.asarray(canonical.GetDirection()).reshape(3, 3)
    assert np.all(np.diag(d) > 0.9)  # closest to identity: x->L, y->P, z->S
    # the same voxel value sits at the same world point
    point = image.TransformIndexToPhysicalPoint((17, 21, 9))
    idx = canonical.TransformPhysicalPointToIndex(point)
    assert canonical.GetPixel(idx) == image.GetPixel((17, 21, 9))
    back = resample_to_geometry(canonical, Geometry.of(image), is_label=True)
    assert np.array_equal(array_xyz(back), array_xyz(image))


def test_resampled_geometry_keeps_field_of_view():
    g = Geometry((100, 80, 30), (0.8, 0.8, 2.5), (1.0, 2.0, 3.0), FLIPPED)
    r = resampled_geometry(g, (2.0, 2.0, 2.0))
    assert r.size == (40, 32, 38) and r.spacing == (2.0, 2.0, 2.0) and r.direction == g.direction
    # outer edge of voxel 0 unchanged: origin - d * spacing / 2 is the same point
    d = np.asarray(FLIPPED).reshape(3, 3)
    edge_old = np.asarray(g.origin) - d @ (np.asarray(g.spacing) / 2)
    edge_new = np.asarray(r.origin) - d @ (np.asarray(r.spacing) / 2)
    assert np.allclose(edge_old, edge_new)
    with pytest.raises(AgnError):
        resampled_geometry(g, (2.0, 0.0, 2.0))


def test_resample_labels_nearest_keeps_label_values():
    image, ball = phantom(FLIPPED)
    labels = image_from_xyz(ball.astype(np.uint8) * 7, image)
    down = resample_to_spacing(labels, (2.0, 2.0, 2.0), is_label=True)
    assert set(np.unique(array_xyz(down))) <= {0, 7}
    assert down.GetPixelID() == sitk.sitkUInt8
    ct = resample_to_spacing(image, (2.0, 2.0, 2.0), is_label=False)
    assert ct.GetPixelID() == sitk.sitkFloat32
    assert array_xyz(ct).min() >= -1000 and array_xyz(ct).max() <= 200


def test_normalise_ct_clips_then_zscores():
    arr = np.array([-3000, -160, 40, 240, 3000], dtype=np.int16)
    out = normalise_ct(arr, {"type": "ct", "clip": [-160, 240], "mean": 40.0, "std": 200.0})
    assert out.dtype == np.float32
    assert np.allclose(out, [-1.0, -1.0, 0.0, 1.0, 1.0])
    assert np.allclose(normalise_ct(arr, {"type": "none"}), arr)
    z = normalise_ct(arr, {"type": "zscore"})
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    with pytest.raises(AgnError):
        normalise_ct(arr, {"type": "ct", "clip": [10, -10]})
    with pytest.raises(AgnError):
        normalise_ct(arr, {"type": "mri"})


@pytest.mark.parametrize("direction", [FLIPPED, OBLIQUE])
def test_prepare_and_map_back_puts_the_ball_where_it_was(direction):
    """A 'segmentation' made at model resolution (threshold) lands on the input's ball: no flips, no shifts."""
    image, ball = phantom(direction)
    prepared = prepare_ct(image, card())
    assert prepared.array.dtype == np.float32
    assert all(n >= p for n, p in zip(prepared.array.shape, (32, 32, 32)))  # padded to the patch
    model = prepared.crop(prepared.array)
    assert model.shape == prepared.model_geometry.size
    assert prepared.model_geometry.spacing == (2.0, 2.0, 2.0)
    labels = prepared.labels_to_input((model > 0).astype(np.uint8))
    assert Geometry.of(labels) == Geometry.of(image)  # exactly the input grid
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert dice(array_xyz(labels) > 0, ball) > 0.85
    heat = prepared.float_to_input(model.astype(np.float32))
    assert Geometry.of(heat) == Geometry.of(image)


def test_padding_uses_air():
    image, _ = phantom(FLIPPED, size=(20, 20, 6))
    prepared = prepare_ct(image, card(patch=(48, 48, 48)))
    assert prepared.array.shape == (48, 48, 48)
    air = (-160 - DEFAULT_CT_NORMALISATION["mean"]) / DEFAULT_CT_NORMALISATION["std"]
    assert np.allclose(prepared.array[-1, -1, -1], air)
    assert prepared.crop(prepared.array).shape == prepared.model_geometry.size

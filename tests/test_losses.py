"""Soft Dice / CE / deep-supervision loss properties, augmentation determinism, schedules."""

from __future__ import annotations

import numpy as np
import torch

from agn_cli.train.augment import AugmentConfig, augment_sample, gamma_transform, gaussian_blur, simulate_low_resolution
from agn_cli.train.losses import DiceCELoss, deep_supervision_loss, soft_dice_loss
from agn_cli.train.schedule import lr_multiplier


def _target(seed=0, shape=(2, 8, 8, 8), classes=3):
    return torch.randint(0, classes, shape, generator=torch.Generator().manual_seed(seed))


def test_dice_zero_for_perfect_prediction_and_never_negative():
    y = _target()
    perfect = 100.0 * torch.nn.functional.one_hot(y, 3).movedim(-1, 1).float()
    assert soft_dice_loss(perfect, y).item() < 1e-6
    assert soft_dice_loss(perfect, y, include_background=True).item() < 1e-6
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        logits = torch.randn(2, 3, 8, 8, 8, generator=gen) * 10
        loss = soft_dice_loss(logits, y)
        assert 0.0 <= loss.item() <= 1.0
    wrong = 100.0 * torch.nn.functional.one_hot((y + 1) % 3, 3).movedim(-1, 1).float()
    assert soft_dice_loss(wrong, y).item() > 0.99


def test_absent_class_predicted_absent_costs_nothing():
    y = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    y[0, :2] = 1  # class 2 absent
    logits = 100.0 * torch.nn.functional.one_hot(y, 3).movedim(-1, 1).float()
    assert soft_dice_loss(logits, y).item() < 1e-6


def test_background_excluded_by_default():
    y = _target(2)
    logits = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    probs = torch.softmax(logits, 1)
    gt = torch.nn.functional.one_hot(y, 3).movedim(-1, 1).float()
    dims = (2, 3, 4)
    dice = (2 * (probs * gt).sum(dims) + 1e-5) / (probs.sum(dims) + gt.sum(dims) + 1e-5)
    torch.testing.assert_close(soft_dice_loss(logits, y), 1 - dice[:, 1:].mean())
    torch.testing.assert_close(soft_dice_loss(logits, y, include_background=True), 1 - dice.mean())


def test_deep_supervision_aux_adds_weighted_side_losses():
    y = _target(4)
    gen = torch.Generator().manual_seed(5)
    fused = torch.randn(2, 3, 8, 8, 8, generator=gen)
    sides = [torch.randn(2, 3, 8, 8, 8, generator=gen) for _ in range(4)]
    crit = DiceCELoss()
    expected = crit(fused, y) + sum(crit(s, y) / 2 ** (i + 1) for i, s in enumerate(sides))
    torch.testing.assert_close(deep_supervision_loss(crit, fused, sides, y, "aux"), expected)
    torch.testing.assert_close(deep_supervision_loss(crit, fused, sides, y, "fused"), crit(fused, y))
    # gradients reach every side head in aux mode
    sides_g = [s.clone().requires_grad_() for s in sides]
    deep_supervision_loss(crit, fused, sides_g, y, "aux").backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in sides_g)


def test_augmentation_is_seeded_applied_and_label_consistent():
    image = torch.arange(16 * 16 * 16, dtype=torch.float32).reshape(1, 16, 16, 16)
    label = (image[0] > 2000).long()
    cfg = AugmentConfig(p_affine=1.0, rotation=20, scale=0.1, translation=0.1, flip_axes=(0,), p_flip=1.0, p_intensity=1.0)
    a = augment_sample(image, label, np.random.default_rng(7), cfg)
    b = augment_sample(image, label, np.random.default_rng(7), cfg)
    c = augment_sample(image, label, np.random.default_rng(8), cfg)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], image) and not torch.allclose(a[0], c[0])
    assert set(a[1].unique().tolist()) <= {0, 1}  # nearest-neighbour labels stay labels
    off = augment_sample(image, label, np.random.default_rng(7), AugmentConfig.off())
    torch.testing.assert_close(off[0], image)
    # a pure flip maps the label exactly
    flip = AugmentConfig(p_affine=0, p_intensity=0, flip_axes=(2,), p_flip=1.0)
    img_f, lab_f = augment_sample(image, label, np.random.default_rng(0), flip)
    assert torch.equal(lab_f, torch.flip(label, [2])) and torch.equal(img_f, torch.flip(image, [3]))


def test_appearance_transforms():
    delta = torch.zeros(1, 15, 15, 15)
    delta[0, 7, 7, 7] = 1.0
    blurred = gaussian_blur(delta, 1.0)
    # mass kept, symmetric, and the centre is the 3D Gaussian's peak (2 pi)^(-3/2) for sigma 1
    assert abs(float(blurred.sum()) - 1) < 1e-5 and torch.allclose(blurred, blurred.flip(1).flip(2).flip(3))
    assert abs(float(blurred[0, 7, 7, 7]) - (2 * np.pi) ** -1.5) < 1e-4
    flat = torch.zeros(1, 9, 11)
    flat[0, 4, 5] = 1.0
    assert abs(float(gaussian_blur(flat, 0.7)[0, 4, 5]) - float(gaussian_blur(delta, 0.7)[0, 7, 7].sum())) < 1e-5  # 2D
    checker = (torch.arange(16)[:, None, None] + torch.arange(16)[None, :, None] + torch.arange(8)[None, None, :]) % 2
    checker = checker.float()[None]
    low = simulate_low_resolution(checker, 0.5)
    assert low.shape == checker.shape and float(low.std()) < 0.5 * float(checker.std())  # fine detail is gone
    torch.testing.assert_close(simulate_low_resolution(checker, 1.0), checker)
    ramp = torch.linspace(-2, 3, 1000).reshape(1, 10, 10, 10)
    torch.testing.assert_close(gamma_transform(ramp, 1.0), ramp)
    darker = gamma_transform(ramp, 1.5)
    assert float(darker.min()) == -2 and abs(float(darker.max()) - 3) < 1e-5 and float(darker.mean()) < float(ramp.mean())
    # through augment_sample: seeded, image only (the label is untouched), and no draws at all when switched off
    image = torch.randn(1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    label = (image[0] > 0).long()
    cfg = AugmentConfig(p_affine=0, p_intensity=0, p_blur=1.0, p_lowres=1.0, p_gamma=1.0)
    a = augment_sample(image, label, np.random.default_rng(3), cfg)
    b = augment_sample(image, label, np.random.default_rng(3), cfg)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], label) and float(a[0].std()) < 0.8 * float(image.std())
    def next_after(config: AugmentConfig) -> float:
        rng = np.random.default_rng(5)
        augment_sample(image, label, rng, config)
        return rng.random()

    replay = np.random.default_rng(5)  # the draws agn made before the appearance transforms existed
    replay.random(), replay.uniform(size=3), replay.uniform(), replay.uniform(size=3)  # affine
    replay.random(), replay.uniform(), replay.uniform(), replay.uniform(), replay.integers(0, 2**31 - 1)  # intensity
    assert next_after(AugmentConfig()) == replay.random()  # earlier runs keep their random stream
    assert next_after(AugmentConfig(p_blur=0.2)) != next_after(AugmentConfig())
    assert AugmentConfig.from_dict(cfg.to_dict() | {"from_a_newer_agn": 1}) == cfg


def test_schedules():
    poly = lr_multiplier("poly", 10)
    assert poly(0) == 1.0 and 0 < poly(5) < 1 and poly(10) == 0.0
    paper = lr_multiplier("step", 300, step_size=100, gamma=0.1, warmup_epochs=5, warmup_factor=0.1)
    assert [paper(e) for e in (0, 4, 5, 99, 100, 200)] == [0.1, 0.1, 1.0, 1.0, 0.1, 0.1**2]

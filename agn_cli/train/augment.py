"""Seeded data augmentation for 2D frames and 3D patches: random affine, flips, intensity jitter, and the
appearance transforms nnU-Net trains with (Isensee et al., Nature Methods 2021: Gaussian blur, simulated low
resolution, gamma), which make a network less sure of one scanner's or one simulator's look.

Every random number comes from the numpy Generator passed in, so a sample's augmentation is a pure function of
its seed: reruns, resumed runs and any number of data-loader workers or ranks see identical inputs. The affine is
built in voxel units about the patch centre and converted to `affine_grid`'s normalised coordinates, so rotations
stay rigid on non-cubic patches. Images are resampled linearly, labels by nearest neighbour.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """What to randomise; zeros switch a transform off. Angles in degrees, translation as a fraction of the size."""

    p_affine: float = 0.5
    rotation: float = 15.0
    scale: float = 0.1
    translation: float = 0.05
    flip_axes: tuple[int, ...] = field(default_factory=tuple)  # spatial axes flipped with probability p_flip
    p_flip: float = 0.5
    p_intensity: float = 0.5
    intensity_scale: float = 0.1  # multiply by U(1 - a, 1 + a)
    intensity_shift: float = 0.1  # add U(-b, b) (inputs are z-scored, so in units of std)
    noise_std: float = 0.05  # Gaussian noise, std U(0, noise_std)
    # appearance (off by default; nnU-Net's probabilities and ranges in brackets)
    p_blur: float = 0.0  # Gaussian blur, sigma U(blur_sigma) voxels [0.2, 0.5-1]
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_lowres: float = 0.0  # nearest-neighbour downsampling by U(lowres_zoom), linear upsampling back [0.25, 0.5-1]
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = 0.0  # x -> x**gamma on the patch rescaled to [0, 1], then rescaled back [0.3, 0.7-1.5]
    gamma: tuple[float, float] = (0.7, 1.5)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["flip_axes"] = list(self.flip_axes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "AugmentConfig":
        """Inverse of to_dict (JSON turns tuples into lists); unknown keys from other agn versions are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known})

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(p_affine=0.0, p_flip=0.0, p_intensity=0.0)


def _rotation_matrix(angles: np.ndarray, dim: int) -> np.ndarray:
    if dim == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    mats = []
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        m = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


def random_affine_theta(shape: tuple[int, ...], rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A (dim, dim+1) matrix for `affine_grid` mapping output to input coordinates (align_corners=True)."""
    dim = len(shape)
    n_angles = 1 if dim == 2 else 3
    angles = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation, n_angles))
    scale = rng.uniform(1.0 - cfg.scale, 1.0 + cfg.scale)
    sizes = np.array(shape, dtype=np.float64)
    shift = rng.uniform(-cfg.translation, cfg.translation, dim) * sizes  # voxels
    a = _rotation_matrix(angles, dim) / scale  # output -> input, in voxel units about the centre
    d = np.diag(2.0 / np.maximum(sizes - 1.0, 1.0))
    a_norm = d @ a @ np.linalg.inv(d)
    t_norm = d @ shift
    perm = np.arange(dim)[::-1]  # affine_grid's coordinates run last tensor axis first
    theta = np.zeros((dim, dim + 1))
    theta[:, :dim] = a_norm[np.ix_(perm, perm)]
    theta[:, dim] = t_norm[perm]
    return theta


def apply_affine(
    image: torch.Tensor, label: torch.Tensor | None, theta: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample image (C, *S) linearly and label (*S) by nearest neighbour with the same transform."""
    spatial = image.shape[1:]
    t = torch.as_tensor(theta, dtype=torch.float32).unsqueeze(0)
    grid = F.affine_grid(t, [1, image.shape[0], *spatial], align_corners=True)
    out = F.grid_sample(image.unsqueeze(0).float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    if label is None:
        return out, None
    lab = F.grid_sample(
        label[None, None].float(), grid, mode="nearest", padding_mode="border", align_corners=True
    )[0, 0]
    return out, lab.to(label.dtype)


def _maybe(rng: np.random.Generator, p: float, bounds: tuple[float, float]) -> float | None:
    """A value from U(bounds) with probability p, else None; no draws at all when p is 0."""
    if p <= 0:
        return None
    fire = rng.random() < p
    value = float(rng.uniform(bounds[0], bounds[1]))
    return value if fire else None


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, *S) with `sigma` voxels on every spatial axis (edges replicated)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(image.dtype)
    dim = image.dim() - 1
    out = image.unsqueeze(0)
    conv = F.conv3d if dim == 3 else F.conv2d
    channels = image.shape[0]
    for axis in range(dim):
        shape = [1] * dim
        shape[axis] = kernel.numel()
        weight = kernel.reshape(1, 1, *shape).repeat(channels, 1, *([1] * dim))
        pad = [0, 0] * dim
        pad[2 * (dim - 1 - axis)] = pad[2 * (dim - 1 - axis) + 1] = radius  # F.pad lists the last axis first
        out = conv(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out[0]


def simulate_low_resolution(image: torch.Tensor, zoom: float) -> torch.Tensor:
    """Downsample (C, *S) by `zoom` with nearest neighbour and upsample back linearly: thick-slice, soft-kernel look."""
    spatial = image.shape[1:]
    small = [max(1, int(round(n * zoom))) for n in spatial]
    mode = "trilinear" if len(spatial) == 3 else "bilinear"
    low = F.interpolate(image.unsqueeze(0), size=small, mode="nearest")
    return F.interpolate(low, size=list(spatial), mode=mode, align_corners=False)[0]


def gamma_transform(image: torch.Tensor, gamma: float) -> torch.Tensor:
    """x -> x**gamma per channel on the patch's own [min, max], mapped back to that range (mean contrast shifts)."""
    flat = image.reshape(image.shape[0], -1)
    lo = flat.min(dim=1).values.reshape(-1, *([1] * (image.dim() - 1)))
    hi = flat.max(dim=1).values.reshape(-1, *([1] * (image.dim() - 1)))
    span = (hi - lo).clamp_min(1e-6)
    return ((image - lo) / span).clamp(0, 1) ** gamma * span + lo


def augment_sample(
    image: torch.Tensor, label: torch.Tensor | None, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply the configured random transforms to one sample: image (C, *S), label (*S) or None."""
    spatial = tuple(image.shape[1:])
    # draw every decision up front so the stream's length does not depend on which transforms fire
    do_affine = rng.random() < cfg.p_affine
    theta = random_affine_theta(spatial, rng, cfg)
    flips = [ax for ax in cfg.flip_axes if rng.random() < cfg.p_flip]
    do_intensity = rng.random() < cfg.p_intensity
    gain = rng.uniform(1.0 - cfg.intensity_scale, 1.0 + cfg.intensity_scale)
    shift = rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)
    noise_std = rng.uniform(0.0, cfg.noise_std)
    noise_seed = int(rng.integers(0, 2**31 - 1))
    # appearance draws only when switched on, so configurations without them keep their earlier random stream
    blur = _maybe(rng, cfg.p_blur, cfg.blur_sigma)
    zoom = _maybe(rng, cfg.p_lowres, cfg.lowres_zoom)
    gamma = _maybe(rng, cfg.p_gamma, cfg.gamma)

    if do_affine and (cfg.rotation or cfg.scale or cfg.translation):
        image, label = apply_affine(image, label, theta)
    if flips:
        dims = [ax + 1 for ax in flips]
        image = torch.flip(image, dims)
        if label is not None:
            label = torch.flip(label, [ax for ax in flips])
    if blur is not None:
        image = gaussian_blur(image, blur)
    if zoom is not None:
        image = simulate_low_resolution(image, zoom)
    if gamma is not None:
        image = gamma_transform(image, gamma)
    if do_intensity:
        image = image * gain + shift
        if noise_std > 0:
            gen = torch.Generator().manual_seed(noise_seed)
            image = image + noise_std * torch.randn(image.shape, generator=gen, dtype=image.dtype)
    return image.contiguous(), None if label is None else label.contiguous()

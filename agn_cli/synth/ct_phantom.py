"""Synthetic abdominal CT phantoms with organ labels (spleen, kidneys, liver, pancreas) in nnU-Net v2 layout.

Why: agn needs CT training and test data that ships with the tool (no licences, no downloads), yet is close enough to
real scans that a network trained on it transfers. Every phantom is built in *patient* coordinates (LPS, as in
DICOM/ITK: +x = patient left, +y = posterior, +z = superior) and sampled on the final voxel grid through its direction
matrix, so left/right is correct in world space whatever the array orientation, and the label map shares the image
geometry exactly (no resampling).

Anatomy is a set of analytic templates (superellipsoids, tubes along poly-lines) moved by smooth random displacement
fields (a few low-frequency plane waves), with organ volumes calibrated to adult ranges. Intensities follow published
Hounsfield unit ranges without and with portal-venous contrast; a Gaussian PSF (partial volume) and correlated Gaussian
noise finish the image.

What made the default CT model transfer to a real scan (README, "Sim-to-real"): fat where real abdomens have it
(perirenal fat that keeps liver and spleen off the kidneys, thin fat planes between organs and bowel or muscle), the
colon in front of the kidneys rather than beside them, and abdomen-pelvis fields of view with the pelvic structures
(bladder, femoral heads, gluteal muscles) a network must learn to call background.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import atomic_dir
from agn_cli.runtime.jsonio import dumps

LABELS: dict[str, int] = {
    "background": 0,
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "liver": 4,
    "pancreas": 5,
}
ORGAN_NAMES: dict[int, str] = {label: name for name, label in LABELS.items() if label}  # id -> organ, no background
# TotalSegmentator v2 "total" task ids of the same organs: the default CT model writes these, so its masks compare
# directly with TotalSegmentator's (benchmarks/train_default_ct.py renumbers the phantom labels to them).
TOTALSEGMENTATOR_IDS: dict[str, int] = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "pancreas": 7}

# Target volumes (mL) sampled per case: adult ranges.
VOLUME_RANGES_ML: dict[str, tuple[float, float]] = {
    "liver": (1000.0, 1800.0),
    "spleen": (150.0, 320.0),
    "kidney_right": (120.0, 180.0),
    "kidney_left": (120.0, 180.0),
    "pancreas": (60.0, 100.0),
}

DIRECTIONS = ("lps", "ras", "oblique")
_RESERVED = 254  # painted, not an organ: keeps later organs out; reset to background at the end
CONTRASTS = ("none", "portal")

_F32 = np.float32


# --------------------------------------------------------------------------------------------------------------------
# Small geometric building blocks
# --------------------------------------------------------------------------------------------------------------------


def _rot(ax: float = 0.0, ay: float = 0.0, az: float = 0.0) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class Waves:
    """A smooth random field: a sum of a few plane waves. Cheap to evaluate anywhere, identical for the same rng."""

    def __init__(self, rng: np.random.Generator, n: int, wavelength: tuple[float, float], amplitude: float, dims: int):
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength, size=(n, 1))
        self.k = (dirs * 2 * np.pi / lam).astype(_F32)
        self.phase = rng.uniform(0, 2 * np.pi, size=n).astype(_F32)
        self.amp = (rng.normal(size=(n, dims)) * amplitude / math.sqrt(n)).astype(_F32)
        self.bound = float(np.abs(self.amp).sum(axis=0).max()) if n else 0.0

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
        out = [np.zeros(np.broadcast(x, y, z).shape, _F32) for _ in range(self.amp.shape[1])]
        for i in range(len(self.phase)):
            s = np.sin(self.k[i, 0] * x + self.k[i, 1] * y + self.k[i, 2] * z + self.phase[i])
            for d in range(len(out)):
                out[d] += self.amp[i, d] * s
        return out


Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Blob:
    """A superellipsoid organ template with a smooth random deformation and an optional bend (crescent, bean)."""

    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray
    power: float = 2.0
    deform: Optional[Waves] = None
    bend: float = 0.0
    scale: float = 1.0
    clip: Optional[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = None

    def rho(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside, 1 on the surface."""
        dx, dy, dz = x - _F32(self.center[0]), y - _F32(self.center[1]), z - _F32(self.center[2])
        if self.deform is not None:
            ddx, ddy, ddz = self.deform(x, y, z)
            dx, dy, dz = dx + ddx, dy + ddy, dz + ddz
        r = self.rot.astype(_F32)
        semi = (self.semi * self.scale).astype(_F32)
        u = (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz) / semi[0]
        v = (r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz) / semi[1]
        w = (r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz) / semi[2]
        if self.bend:
            u = u - _F32(self.bend) * (v * v + w * w)
        p = _F32(self.power)
        if self.power == 2.0:
            return np.sqrt(u * u + v * v + w * w)
        return (np.abs(u) ** p + np.abs(v) ** p + np.abs(w) ** p) ** (1 / p)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        m = self.rho(x, y, z) <= 1.0
        if self.clip is not None:
            m &= self.clip(x, y, z)
        return m

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        ext = float(self.semi.max() * self.scale) * (1.0 + 2 * abs(self.bend)) + (self.deform.bound if self.deform else 0)
        ext += 2.0
        return self.center - ext, self.center + ext


@dataclass
class Tube:
    """Union of tubes along poly-lines (vessels, bowel, pancreas): distance to the nearest sample of the centre line."""

    points: np.ndarray  # (n, 3) centre-line samples, about 1 mm apart
    radii: np.ndarray  # (n,)
    squash: np.ndarray = field(default_factory=lambda: np.ones(3))  # > 1 makes the tube thinner along that axis
    deform: Optional[Waves] = None
    scale: float = 1.0
    clip: Optional[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = None

    def __post_init__(self) -> None:
        self._tree = cKDTree(self.points * self.squash)

    @staticmethod
    def along(knots: Sequence[Sequence[float]], radii: Sequence[float], step: float = 1.0, **kw) -> "Tube":
        """A tube through `knots` (poly-line), radius interpolated between the knot radii."""
        pts, rad = [], []
        knots_a = np.asarray(knots, float)
        for a, b, ra, rb in zip(knots_a[:-1], knots_a[1:], radii[:-1], radii[1:]):
            n = max(2, int(np.linalg.norm(b - a) / step))
            t = np.linspace(0, 1, n, endpoint=False)[:, None]
            pts.append(a + t * (b - a))
            rad.append(ra + t[:, 0] * (rb - ra))
        pts.append(knots_a[-1:])
        rad.append(np.asarray(radii[-1:], float))
        return Tube(np.concatenate(pts), np.concatenate(rad), **kw)

    @staticmethod
    def union(tubes: Iterable["Tube"], **kw) -> "Tube":
        tubes = list(tubes)
        return Tube(np.concatenate([t.points for t in tubes]), np.concatenate([t.radii for t in tubes]), **kw)

    def dist(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance to the centre line in squashed mm, radius of the nearest sample)."""
        if self.deform is not None:
            ddx, ddy, ddz = self.deform(x, y, z)
            x, y, z = x + ddx, y + ddy, z + ddz
        q = np.stack([np.ravel(x), np.ravel(y), np.ravel(z)], axis=1) * self.squash
        d, idx = self._tree.query(q, k=1, workers=1)
        shape = np.broadcast(x, y, z).shape
        return d.reshape(shape).astype(_F32), (self.radii[idx] * self.scale).reshape(shape).astype(_F32)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, grow: float = 0.0) -> np.ndarray:
        d, r = self.dist(x, y, z)
        m = d <= r + grow
        if self.clip is not None:
            m &= self.clip(x, y, z)
        return m

    def box(self, grow: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        ext = float(self.radii.max() * self.scale) + grow + (self.deform.bound if self.deform else 0) + 2.0
        return self.points.min(axis=0) - ext, self.points.max(axis=0) + ext


def _measure_volume(shape: Blob | Tube, step: float) -> float:
    """Volume (mL) of a shape on a regular anatomical grid; used to calibrate organ sizes before rendering."""
    lo, hi = shape.box()
    axes = [np.arange(a + step / 2, b, step, dtype=_F32) for a, b in zip(lo, hi)]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    x, y, z = np.broadcast_arrays(x, y, z)
    return float(shape.inside(x, y, z).sum()) * step**3 / 1000.0


def _calibrate(shape: Blob | Tube, target_ml: float, power: float, step: float) -> None:
    """Scale the shape (semi-axes or tube radii) so that its clipped, deformed volume matches the target."""
    for _ in range(3):
        vol = _measure_volume(shape, step)
        if vol <= 0:
            shape.scale *= 1.5
            continue
        ratio = target_ml / vol
        shape.scale *= ratio ** (1.0 / power)
        if abs(ratio - 1) < 0.03:
            break


# --------------------------------------------------------------------------------------------------------------------
# Voxel grid in patient space
# --------------------------------------------------------------------------------------------------------------------


class Grid:
    """The output voxel grid, with every voxel centre expressed in the phantom's anatomical frame.

    world = origin + D diag(spacing) index; anatomy = R^T (world - t). Arrays are (z, y, x) as SimpleITK returns them.
    """

    def __init__(self, size, spacing, origin, direction, patient_rot, patient_origin):
        self.size = tuple(int(s) for s in size)
        self.spacing = np.asarray(spacing, float)
        self.origin = np.asarray(origin, float)
        self.direction = np.asarray(direction, float)
        m = patient_rot.T @ self.direction @ np.diag(self.spacing)  # anatomy per index step
        b = patient_rot.T @ (self.origin - np.asarray(patient_origin, float))
        self._m, self._b = m, b
        self._minv = np.linalg.inv(m)
        nx, ny, nz = self.size
        i = np.arange(nx, dtype=_F32)[None, None, :]
        j = np.arange(ny, dtype=_F32)[None, :, None]
        k = np.arange(nz, dtype=_F32)[:, None, None]
        self.x, self.y, self.z = (
            (_F32(b[c]) + _F32(m[c, 0]) * i + _F32(m[c, 1]) * j + _F32(m[c, 2]) * k).astype(_F32) for c in range(3)
        )
        self.shape = (nz, ny, nx)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Optional[tuple[slice, slice, slice]]:
        """Array slices covering an anatomical axis-aligned box (None when it misses the grid)."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        idx = (self._minv @ (corners - self._b).T).T  # (8, 3) continuous i, j, k
        start = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        stop = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, self.size)
        if np.any(stop <= start):
            return None
        return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))

    def coords(self, sl) -> Coords:
        return self.x[sl], self.y[sl], self.z[sl]


# --------------------------------------------------------------------------------------------------------------------
# The phantom
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CaseInfo:
    """What was drawn for one case: enough to describe the data set and to test it."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: str
    direction_matrix: list[float]
    contrast: str
    noise_hu: float
    target_volumes_ml: dict[str, float]
    spine_world: tuple[float, float, float]  # vertebral body centre at kidney level, world LPS mm
    z_range_mm: tuple[float, float]  # anatomical z covered (0 = renal hilum level, + superior)
    table: bool
    seconds: float = 0.0


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


class _Painter:
    """Paints intensities (HU) and labels onto the grid, structure by structure, later ones on top."""

    def __init__(self, grid: Grid, rng: np.random.Generator):
        self.g = grid
        self.rng = rng
        self.hu = np.full(grid.shape, -1000.0, dtype=_F32)
        self.lab = np.zeros(grid.shape, dtype=np.uint8)

    def region(self, lo, hi):
        sl = self.g.box(np.asarray(lo, float), np.asarray(hi, float))
        if sl is None:
            return None, None
        return sl, self.g.coords(sl)

    def paint(self, sl, mask: np.ndarray, hu, label: Optional[int] = None, where: Optional[np.ndarray] = None,
              keep_labels: bool = False) -> None:
        if sl is None:
            return
        if where is not None:
            mask = mask & where
        if keep_labels:  # organs never overwrite an organ painted earlier
            mask = mask & (self.lab[sl] == 0)
        view = self.hu[sl]
        if np.ndim(hu) == 0:
            view[mask] = hu
        else:
            view[mask] = np.broadcast_to(hu, mask.shape)[mask]
        if label is not None:
            self.lab[sl][mask] = label

    def shape(self, shp: Blob | Tube, hu, label: Optional[int] = None, texture: float = 0.0,
              keep_labels: bool = False) -> None:
        sl, c = self.region(*shp.box())
        if sl is None:
            return
        m = shp.inside(*c)
        if texture:
            tex = Waves(self.rng, 4, (15, 40), texture, 1)(*c)[0]
            hu = hu + tex
        self.paint(sl, m, hu, label, keep_labels=keep_labels)


# The phantom is painted in a fixed order (later structures on top of earlier ones), and every random number is drawn
# in that same order, so a seed always gives the same phantom: body wall -> thorax -> bowel -> back muscles -> organ
# shapes -> duodenum -> organ HU -> vessels -> gallbladder -> organs -> fat planes -> bones -> pelvis.


@dataclass
class _Body:
    """The body outline: a superellipse whose half-axes vary slowly along z (patient supine on the table)."""

    a0: float  # half width (mm)
    b0: float  # half depth (mm)
    yc: float  # centre in y
    y_post: float  # posterior skin behind the vertebral body centre
    t_fat: float  # subcutaneous fat (mm)
    t_mus: float  # abdominal wall muscle (mm)
    power: float
    waves: Waves
    in_cavity: Optional[np.ndarray] = None  # the abdominal / thoracic cavity on the whole grid (set by _body_wall)

    def rho(self, x, y, z, shrink=0.0):
        """Normalised radius of the outline shrunk by `shrink` mm: < 1 inside."""
        s = 1.0 + self.waves(x * 0, y * 0, z)[0] + _F32(0.0004) * z  # slightly narrower towards the pelvis
        a = self.a0 * s - shrink
        b = self.b0 * s - shrink * 0.8
        return (np.abs(x / a) ** self.power + np.abs((y - self.yc) / b) ** self.power) ** (1 / self.power)

    def cavity(self, x, y, z):
        return self.rho(x, y, z, self.t_fat + self.t_mus) < 1.0

    def inside(self, x, y, z):
        return self.rho(x, y, z) < 1.0


@dataclass
class _Diaphragm:
    """Two domes (right higher): lungs above, abdomen below."""

    z_r: float
    z_l: float
    curv: float

    def height(self, x, y):
        dr = self.z_r - ((x + 70) ** 2 + (0.8 * (y + 40)) ** 2) / (2 * self.curv)
        dl = self.z_l - ((x - 70) ** 2 + (0.8 * (y + 30)) ** 2) / (2 * self.curv)
        return np.maximum(dr, dl)

    def below(self, x, y, z, margin=4.0):
        return z < self.height(x, y) - margin


@dataclass
class _Abdomen:
    """Inside the abdominal wall and `margin` mm under the diaphragm: where organs and bowel may be (a clip)."""

    body: _Body
    diaphragm: _Diaphragm
    margin: float = 5.0

    def __call__(self, x, y, z):
        return self.body.cavity(x, y, z) & self.diaphragm.below(x, y, z, self.margin)


class _Liver(Blob):
    """The liver: union of a right and a left lobe, clipped to the abdomen; scaling it scales both lobes."""

    def __init__(self, right: Blob, left: Blob, clip: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]):
        super().__init__(right.center, right.semi, right.rot, clip=clip)
        self.right, self.left = right, left

    def inside(self, x, y, z):
        self.right.scale = self.left.scale = self.scale
        return (self.right.inside(x, y, z) | self.left.inside(x, y, z)) & self.clip(x, y, z)

    def box(self):
        lo1, hi1 = self.right.box()
        lo2, hi2 = self.left.box()
        return np.minimum(lo1, lo2), np.maximum(hi1, hi2)


@dataclass
class _Organs:
    """The labelled organs' shapes, calibrated to the case's target volumes, and the landmarks vessels follow."""

    targets: dict[str, float]
    liver: _Liver
    spleen: Blob
    kidneys: dict[str, Blob]
    kz: float  # kidney (renal hilum) level
    pancreas: Tube
    p_tail: np.ndarray
    p_body: np.ndarray
    p_head: np.ndarray


@dataclass
class _OrganHU:
    """Hounsfield units of this case's organs and vessels (unenhanced or portal venous)."""

    liver: float
    spleen: float
    pancreas: float
    kidney_cortex: float
    kidney_medulla: float
    aorta: float
    vein: float
    hep_vessel: float


def _jitter(rng: np.random.Generator, sd: float) -> np.ndarray:
    return rng.normal(0, sd, 3)


def _body_wall(rng: np.random.Generator, P: _Painter, pv: bool) -> _Body:
    """Skin, subcutaneous fat, abdominal wall muscle and visceral fat on the whole grid."""
    X, Y, Z = P.g.x, P.g.y, P.g.z
    a0, b0 = _u(rng, 140, 185), _u(rng, 100, 135)
    y_post = _u(rng, 75, 95)
    body = _Body(a0=a0, b0=b0, yc=y_post - b0, y_post=y_post, t_fat=_u(rng, 8, 35), t_mus=_u(rng, 8, 14),
                 power=_u(rng, 2.1, 2.6), waves=Waves(rng, 3, (250, 500), 0.04, 1))
    body_r = body.rho(X, Y, Z)
    in_body = body_r <= 1.0
    P.hu[in_body] = rng.normal(-100, 6)  # subcutaneous fat
    inner_fat = body.rho(X, Y, Z, body.t_fat) <= 1.0
    P.hu[inner_fat] = _u(rng, 45, 58) + (8 if pv else 0)  # abdominal wall muscle
    body.in_cavity = body.rho(X, Y, Z, body.t_fat + body.t_mus) <= 1.0
    P.hu[body.in_cavity] = rng.normal(-95, 8)  # visceral / retroperitoneal fat
    P.hu[in_body & (body_r > 1.0 - 2.0 / b0)] = 20.0  # a thin skin line
    return body


def _thorax(rng: np.random.Generator, P: _Painter, body: _Body, pv: bool) -> _Diaphragm:
    """Diaphragm domes, and above them lungs and the heart."""
    z_r = _u(rng, 95, 135)
    dia = _Diaphragm(z_r=z_r, z_l=z_r - _u(rng, 5, 25), curv=_u(rng, 90, 130))
    sl, c = P.region((-250, -250, min(dia.z_l, dia.z_r) - 150), (250, 250, 400))
    if sl is not None:
        x, y, z = c
        cav = body.cavity(x, y, z)
        above = z >= dia.height(x, y)
        heart = (((x - 20) / 65) ** 2 + ((y + 65) / 55) ** 2 + ((z - (dia.z_l + 55)) / 55) ** 2) <= 1.0
        mediast = (np.abs(x - 5) < 28) & (y > -45) & (y < 20)
        lung = cav & above & ~heart & ~mediast
        P.paint(sl, lung, rng.normal(-850, 20) + Waves(rng, 4, (20, 60), 25, 1)(x, y, z)[0])
        P.paint(sl, cav & above & heart, 150.0 if pv else 40.0)
        P.paint(sl, cav & (z >= dia.height(x, y) - 5) & ~above, 50.0)
    return dia


def _small_bowel(rng: np.random.Generator, P: _Painter, body: _Body, pv: bool) -> None:
    """Small-bowel loops (fluid, gas, enhancing wall) in the lower anterior abdomen."""
    z_meso = _u(rng, -10, 15)
    sl, c = P.region((-200, -200, -300), (200, 60, z_meso + 20))
    if sl is None:
        return
    x, y, z = c
    region = body.cavity(x, y, z) & (z < z_meso) & (y < 10 - 0.002 * x * x)
    field = Waves(rng, 12, (35, 80), 1.0, 1)(x, y, z)[0]
    loops = region & (np.abs(field) < _u(rng, 0.18, 0.3))
    content = Waves(rng, 5, (25, 60), 1.0, 1)(x, y, z)[0]
    fluid = _u(rng, 5, 30)
    hu = np.where(content > _u(rng, 0.55, 0.9), -1000.0, fluid).astype(_F32)
    P.paint(sl, loops, hu)
    wall = region & (np.abs(field) >= _u(rng, 0.3, 0.32)) & (np.abs(field) < 0.36)
    P.paint(sl, wall, 90.0 if pv else 40.0)


def _colon(rng: np.random.Generator, P: _Painter, body: _Body, dia: _Diaphragm, pv: bool) -> None:
    """The colon frame: ascending and descending colon in front of and lateral to the kidneys, stool and gas."""
    colon_r = _u(rng, 18, 26)
    zt = _u(rng, 5, 25)
    ya, yd = _u(rng, -60, -25), _u(rng, -60, -20)
    colon = Tube.along(
        [(-90, ya, -140), (-97, ya, -60), (-92, ya - 10, zt), (-50, -75, zt + 8), (20, -80, zt + 12),
         (85, -55, zt + 25), (97, yd, 20), (95, yd, -60), (80, yd - 10, -150)],
        [colon_r] * 9,
        deform=Waves(rng, 4, (80, 160), 8, 3),
        clip=_Abdomen(body, dia, margin=10),
    )
    sl, c = P.region(*colon.box())
    if sl is None:
        return
    x, y, z = c
    d, r = colon.dist(x, y, z)
    m = (d <= r) & colon.clip(x, y, z)
    stool = Waves(rng, 6, (8, 20), 1.0, 1)(x, y, z)[0]
    gas_level = _u(rng, -0.5, 0.5)
    hu = np.where(stool > gas_level, -1000.0, 20.0 + 30 * stool).astype(_F32)
    P.paint(sl, m, hu)
    P.paint(sl, m & (d > r - 2.5), 70.0 if pv else 35.0)


def _stomach(rng: np.random.Generator, P: _Painter, body: _Body, dia: _Diaphragm, pv: bool) -> None:
    """The stomach under the left dome: gas on top, fluid or food below, an enhancing wall."""
    stomach = Blob(
        np.array([_u(rng, 45, 65), _u(rng, -75, -55), _u(rng, 55, 80)]),
        np.array([_u(rng, 35, 50), _u(rng, 28, 40), _u(rng, 50, 70)]),
        _rot(0, math.radians(_u(rng, -25, -10)), math.radians(_u(rng, -30, -10))),
        deform=Waves(rng, 4, (60, 140), 6, 3),
        clip=_Abdomen(body, dia, margin=6),
    )
    sl, c = P.region(*stomach.box())
    if sl is None:
        return
    x, y, z = c
    rho = stomach.rho(x, y, z)
    m = (rho <= 1.0) & stomach.clip(x, y, z)
    air_y = stomach.center[1] - stomach.semi[1] * _u(rng, 0.1, 0.8)
    food = rng.random() < 0.4
    inner = rng.normal(35, 8) + 15 * Waves(rng, 5, (10, 30), 1.0, 1)(x, y, z)[0] if food else _u(rng, 0, 20)
    hu = np.where(y < air_y, -1000.0, inner).astype(_F32)
    P.paint(sl, m, hu)
    P.paint(sl, m & (rho > 0.9) & (y >= air_y - 3), 80.0 if pv else 40.0)


def _back_muscles(rng: np.random.Generator, P: _Painter, body: _Body, dia: _Diaphragm, pv: bool) -> None:
    """Psoas, quadratus lumborum and erector spinae around the spine."""
    sl, c = P.region((-150, -40, -400), (150, 150, 400))
    if sl is None:
        return
    x, y, z = c
    inside = body.rho(x, y, z) <= 1.0
    pso_r = np.clip(12 + (0 - z) * 0.12, 6, 30).astype(_F32)
    pso_x = 28 + pso_r * 0.6
    psoas = ((np.abs(x) - pso_x) / pso_r) ** 2 + ((y - 2) / (pso_r * 0.9)) ** 2 <= 1.0
    ql = ((np.abs(x) - 62) / 20) ** 2 + ((y - 35) / 11) ** 2 <= 1.0
    erector = ((np.abs(x) - 36) / 30) ** 2 + ((y - 48) / 22) ** 2 <= 1.0
    muscle = inside & (psoas | ((ql | erector) & (z < dia.height(x, y) + 40)))
    P.paint(sl, muscle, _u(rng, 45, 58) + (8 if pv else 0))


def _organ_shapes(rng: np.random.Generator, in_abdomen: _Abdomen) -> _Organs:
    """Liver, spleen, kidneys and pancreas templates, each calibrated to a volume drawn from adult ranges."""
    targets = {name: _u(rng, *rng_ml) for name, rng_ml in VOLUME_RANGES_ML.items()}
    right_lobe = Blob(
        np.array([-72, -45, _u(rng, 28, 55)]) + _jitter(rng, 6),
        np.array([75, 85, _u(rng, 85, 110)]),
        _rot(0, 0, math.radians(_u(rng, -10, 10))),
        power=_u(rng, 2.2, 2.8),
    )
    left_lobe = Blob(
        np.array([_u(rng, -5, 20), -80, _u(rng, 55, 75)]), np.array([_u(rng, 45, 70), 30, 42.0]),
        _rot(0, math.radians(_u(rng, -10, 10)), math.radians(_u(rng, -20, 0))), power=2.3,
    )
    right_lobe.deform = left_lobe.deform = Waves(rng, 5, (90, 200), 9, 3)
    liver = _Liver(right_lobe, left_lobe, clip=in_abdomen)
    _calibrate(liver, targets["liver"], 3, 4.0)

    spleen = Blob(
        np.array([_u(rng, 98, 122), _u(rng, 10, 35), _u(rng, 28, 62)]),  # posterolateral, ribs 9-11
        np.array([22, 55, 45.0]) * rng.uniform(0.9, 1.1, 3),
        _rot(math.radians(_u(rng, -10, 10)), 0, math.radians(_u(rng, -50, -30))),
        power=2.0, bend=-0.25, deform=Waves(rng, 4, (60, 120), 4, 3),
        clip=in_abdomen,
    )
    _calibrate(spleen, targets["spleen"], 3, 3.0)

    kidneys = {}
    kz = _u(rng, -25, 8)  # kidneys ride low or high against liver and spleen (L1-L3 hilum, breathing)
    for name, side in (("kidney_right", -1), ("kidney_left", 1)):
        zoff = -_u(rng, 5, 20) if side < 0 else 0.0
        kidneys[name] = Blob(
            np.array([side * _u(rng, 68, 80), _u(rng, 5, 18), kz + zoff]),
            np.array([27, 24, 52.0]) * rng.uniform(0.92, 1.08, 3),
            _rot(0, math.radians(-side * _u(rng, 8, 18)), math.radians(side * _u(rng, 15, 30))),
            power=2.0, bend=side * 0.12, deform=Waves(rng, 3, (60, 120), 3, 3),
        )
        _calibrate(kidneys[name], targets[name], 3, 3.0)

    # pancreas: tail at the splenic hilum, body anterior to the aorta, head at the duodenum on the right
    p_tail = spleen.center + np.array([-_u(rng, 40, 50), -_u(rng, 25, 35), -_u(rng, 15, 25)])
    p_body = np.array([_u(rng, 10, 30), _u(rng, -62, -52), _u(rng, 15, 30)])
    p_head = np.array([_u(rng, -40, -28), _u(rng, -52, -42), _u(rng, 0, 12)])
    p_unc = p_head + np.array([8, 10, -15])
    pancreas = Tube.along(
        [p_tail, (p_tail + p_body) / 2 + np.array([0, -8, 2]), p_body, p_head, p_unc],
        [11, 10, 10, 17, 12], squash=np.array([1.0, 1.5, 1.0]),
        deform=Waves(rng, 4, (40, 90), 3, 3), clip=in_abdomen,
    )
    _calibrate(pancreas, targets["pancreas"] * 1.15, 2, 2.5)  # vessels along it take back about 15 %
    return _Organs(targets=targets, liver=liver, spleen=spleen, kidneys=kidneys, kz=kz, pancreas=pancreas,
                   p_tail=p_tail, p_body=p_body, p_head=p_head)


def _duodenum(rng: np.random.Generator, P: _Painter, p_head: np.ndarray, in_abdomen: _Abdomen, pv: bool) -> None:
    """The duodenal C-loop around the pancreatic head."""
    duo = Tube.along(
        [(-5, -95, p_head[2] + 35), (-45, -70, p_head[2] + 30), (-62, -50, p_head[2] + 5),
         (-58, -42, p_head[2] - 28), (-15, -38, p_head[2] - 38), (25, -45, p_head[2] - 32)],
        [12, 13, 13, 13, 11, 11], deform=Waves(rng, 3, (50, 100), 3, 3), clip=in_abdomen,
    )
    sl, c = P.region(*duo.box())
    if sl is None:
        return
    d, r = duo.dist(*c)
    m = (d <= r) & duo.clip(*c)
    fill = Waves(rng, 3, (15, 30), 1.0, 1)(*c)[0]
    P.paint(sl, m, np.where(fill > 0.6, -1000.0, _u(rng, 5, 25)).astype(_F32))
    P.paint(sl, m & (d > r - 3), 80.0 if pv else 40.0)


def _organ_hu(rng: np.random.Generator, pv: bool) -> _OrganHU:
    """Unenhanced ranges are wide on purpose: low-dose (e.g. PET/CT) scans and fatty pancreas sit low."""
    liver = (_u(rng, 50, 70) if pv else _u(rng, 40, 68)) + (_u(rng, 30, 60) if pv else 0)
    spleen = (_u(rng, 40, 50) if pv else _u(rng, 30, 50)) + (_u(rng, 60, 80) if pv else 0)
    pancreas = (_u(rng, 40, 50) if pv else _u(rng, 10, 50)) + (_u(rng, 40, 60) if pv else 0)
    cortex = _u(rng, 150, 200) if pv else _u(rng, 14, 36)
    medulla = cortex - _u(rng, 10, 40) if pv else cortex - _u(rng, 0, 8)
    aorta = _u(rng, 150, 250) if pv else _u(rng, 35, 45)
    vein = _u(rng, 130, 200) if pv else _u(rng, 35, 45)
    hep_vessel = liver + _u(rng, 40, 70) if pv else liver - _u(rng, 12, 20)
    return _OrganHU(liver, spleen, pancreas, cortex, medulla, aorta, vein, hep_vessel)


def _vessels(rng: np.random.Generator, P: _Painter, body: _Body, dia: _Diaphragm, organs: _Organs,
             hu: _OrganHU) -> tuple[Tube, float]:
    """Aorta (left-anterior of the spine) with its bifurcation, IVC, renal and portal veins: painted as reserved
    (not an organ). Returns the liver's own vessels (painted inside the liver label later) and the bifurcation
    level `zb`, which places the pelvis."""
    ax0, ay0 = _u(rng, 10, 18), _u(rng, -34, -28)
    ar = _u(rng, 9, 13)
    zb = _u(rng, -130, -100)
    aorta = Tube.along([(ax0, ay0 + 10, 400), (ax0, ay0 - 2, 60), (ax0, ay0, zb)], [ar * 1.15, ar, ar * 0.9])
    iliac_a = Tube.union([Tube.along([(ax0, ay0, zb), (ax0 + s * 45, ay0 + 15, zb - 100)], [ar * 0.65, ar * 0.6])
                          for s in (-1, 1)])
    sma = Tube.along([(ax0, ay0 - ar, 25), (ax0 - 4, ay0 - 35, 5), (ax0 - 6, -75, -70)], [4.0, 4.0, 3.0])
    ivc_x = _u(rng, -28, -20)
    ivc = Tube.along([(ivc_x, -45, dia.z_r + 30), (ivc_x, -40, 50), (ivc_x, -28, 0), (ivc_x + 5, -22, zb - 5)],
                     [12, 12, 11, 11], squash=np.array([1.0, 1.3, 1.0]))
    iliac_v = Tube.union([Tube.along([(ivc_x + 5, -22, zb - 5), (ax0 + s * 50 - 5, 0, zb - 100)], [9.0, 8.0])
                          for s in (-1, 1)])
    kz, kidneys = organs.kz, organs.kidneys
    renal_v = Tube.union([
        Tube.along([kidneys["kidney_left"].center + np.array([-32, -10, 0]), (ax0, ay0 - ar - 5, kz),
                    (ivc_x, -30, kz - 2)], [5.0, 4.0, 5.0]),
        Tube.along([kidneys["kidney_right"].center + np.array([32, -10, 0]), (ivc_x, -30, kz - 2)], [5.0, 5.0]),
    ])
    p_body, p_tail = organs.p_body, organs.p_tail
    confl = np.array([p_body[0] - 25, p_body[1] + 8, p_body[2] - 2])
    porta = np.array([-40, -55, 45.0]) + _jitter(rng, 4)
    portal = Tube.along([confl + np.array([0, 0, -60]), confl, porta], [6.0, 7.0, 7.5])
    splenic_v = Tube.along([p_tail + np.array([0, 10, 0]), p_body + np.array([0, 12, 0]), confl], [4.5, 4.5, 5.0])
    branches = []
    for _ in range(int(rng.integers(4, 7))):
        end = organs.liver.right.center + rng.normal(0, 35, 3) * np.array([1.2, 1, 1])
        mid = (porta + end) / 2 + rng.normal(0, 8, 3)
        branches.append(Tube.along([porta, mid, end], [5.0, 3.5, 2.0]))
    hv_top = np.array([ivc_x + 3, -48, dia.z_r - 15])
    for end in ([-110, -40, 80], [-55, -85, 60], [10, -85, 75]):
        end = np.asarray(end, float) + rng.normal(0, 8, 3)
        branches.append(Tube.along([hv_top, end], [6.0, 2.5]))
    for vessel, vessel_hu in ((iliac_v, hu.vein), (ivc, hu.vein), (renal_v, hu.vein), (portal, hu.vein + 10),
                              (splenic_v, hu.vein + 10), (aorta, hu.aorta), (iliac_a, hu.aorta), (sma, hu.aorta)):
        vessel.clip = body.inside
        P.shape(vessel, vessel_hu, _RESERVED)
    return Tube.union(branches), zb


def _gallbladder(rng: np.random.Generator, P: _Painter, in_abdomen: _Abdomen) -> None:
    """Under the liver in most cases; not part of the liver label."""
    if rng.random() < 0.7:
        gb = Blob(np.array([_u(rng, -55, -35), _u(rng, -85, -70), _u(rng, 5, 25)]),
                  np.array([14, 14, 35.0]) * rng.uniform(0.7, 1.2, 3), _rot(math.radians(25), 0, 0),
                  clip=in_abdomen)
        P.shape(gb, _u(rng, 0, 20), _RESERVED)


def _paint_kidney(P: _Painter, name: str, kid: Blob, hu: _OrganHU, perirenal: float, fat_hu: float,
                  in_abdomen: _Abdomen) -> None:
    """Perirenal fat around it, the renal sinus (fat, fluid pelvis) at the hilum, cortex and medulla."""
    lo, hi = kid.box()
    sl, c = P.region(lo - perirenal, hi + perirenal)
    if sl is None:
        return
    rho = kid.rho(*c)
    grow = 1.0 + perirenal / float(kid.semi.min() * kid.scale)
    P.paint(sl, (rho <= grow) & (rho > 1.0) & in_abdomen(*c), fat_hu, _RESERVED, keep_labels=True)
    m = rho <= 1.0
    side = -1 if name == "kidney_right" else 1
    semi = kid.semi * kid.scale
    hil = Blob(kid.center + np.array([-side * semi[0] * 0.75, -6, 0]), semi * np.array([0.45, 0.35, 0.32]), kid.rot)
    hrho = hil.rho(*c)
    P.paint(sl, m & (hrho <= 1.0), -80.0, _RESERVED, keep_labels=True)
    P.paint(sl, m & (hrho < 0.45), 10.0, _RESERVED)
    cortex_frac = 1.0 - 7.0 / float(kid.semi.min() * kid.scale)
    kidney_hu = np.where(rho > cortex_frac, hu.kidney_cortex, hu.kidney_medulla).astype(_F32)
    P.paint(sl, m, kidney_hu, LABELS[name], keep_labels=True)


def _paint_organs(rng: np.random.Generator, P: _Painter, organs: _Organs, hu: _OrganHU, liver_vessels: Tube,
                  in_abdomen: _Abdomen) -> float:
    """Kidneys (with perirenal fat that keeps liver and spleen off them), spleen, pancreas, liver and its vessels.
    Returns the case's fat HU (the fat planes reuse it)."""
    perirenal = _u(rng, 2, 12)  # mm of perirenal fat (inside Gerota's fascia); liver and spleen stay outside it
    fat_hu = rng.normal(-95, 8)
    for name, kid in organs.kidneys.items():
        _paint_kidney(P, name, kid, hu, perirenal, fat_hu, in_abdomen)
    P.shape(organs.spleen, hu.spleen, LABELS["spleen"], texture=3, keep_labels=True)
    P.shape(organs.pancreas, hu.pancreas, LABELS["pancreas"], texture=5, keep_labels=True)
    P.shape(organs.liver, hu.liver, LABELS["liver"], texture=4, keep_labels=True)
    sl, c = P.region(*liver_vessels.box())
    if sl is not None:
        m = liver_vessels.inside(*c) & (P.lab[sl] == LABELS["liver"])
        P.paint(sl, m, hu.hep_vessel)  # intrahepatic vessels stay in the liver label
    return fat_hu


def _fat_planes(rng: np.random.Generator, P: _Painter, body: _Body, fat_hu: float) -> None:
    """In real abdomens fat separates organs and vessels from bowel and muscle, so unlabelled soft tissue next to
    them becomes fat. Ends the labelled part: reserved voxels go back to background."""
    d_any = ndimage.distance_transform_edt(P.lab == 0, sampling=P.g.spacing[::-1])
    soft = (P.lab == 0) & (P.hu > -50) & (P.hu < 150) & body.in_cavity
    P.hu[soft & (d_any <= _u(rng, 1.5, 6))] = fat_hu
    P.lab[P.lab == _RESERVED] = 0


def _spine(rng: np.random.Generator, P: _Painter, body: _Body) -> None:
    """Vertebral bodies with discs, the spinal canal and the posterior elements."""
    sl, c = P.region((-70, -30, -400), (70, 75, 400))
    if sl is None:
        return
    x, y, z = c
    inside = body.rho(x, y, z) <= 1.0
    level_h = _u(rng, 32, 38)
    phase = _u(rng, 0, level_h)
    fz = np.mod(z + phase, level_h)
    disc = fz < _u(rng, 7, 10)
    vb_rx = 20 + np.clip(-z * 0.03, -3, 6)
    rv = (x / vb_rx) ** 2 + (y / (vb_rx * 0.78)) ** 2
    vb = inside & (rv <= 1.0)
    cortical = _u(rng, 450, 900)
    cancellous = _u(rng, 150, 260)
    P.paint(sl, vb & ~disc, np.where(rv > 0.78, cortical, cancellous).astype(_F32), 0)
    P.paint(sl, vb & disc, _u(rng, 70, 100), 0)
    rc = np.sqrt(x**2 + (y - 27) ** 2)
    canal = inside & (rc <= 9)
    post = inside & ~disc & (rc > 9) & (rc <= 16) & (y > 17)
    spinous = inside & ~disc & (np.abs(x) < 4) & (y > 25) & (y < body.y_post - body.t_fat - 6)
    transverse = inside & (np.abs(fz - level_h * 0.55) < 4) & (np.abs(x) < 48) & (np.abs(y - 22) < 5)
    P.paint(sl, post | spinous | transverse, cortical * 0.8, 0)
    P.paint(sl, canal, 15.0)


def _ribs(rng: np.random.Generator, P: _Painter, body: _Body, dia: _Diaphragm) -> None:
    """Ribs in the wall muscle from below the diaphragm up."""
    z_rib = min(dia.z_l, dia.z_r) - _u(rng, 40, 70)
    sl, c = P.region((-250, -250, z_rib), (250, 250, 400))
    if sl is None:
        return
    x, y, z = c
    rr = body.rho(x, y, z, body.t_fat)
    ring = (rr <= 1.0) & (rr > 1.0 - 0.9 * body.t_mus / body.b0) & (y > -60 - 0.4 * np.abs(x)) & (z > z_rib)
    ang = np.arctan2(y, x)
    rib_sp = _u(rng, 25, 32)
    band = np.mod(z + 12 * np.abs(np.sin(ang)) + _u(rng, 0, rib_sp), rib_sp) < 9
    P.paint(sl, ring & band, _u(rng, 300, 600), 0)


def _iliac_wings(rng: np.random.Generator, P: _Painter, body: _Body, zb: float) -> None:
    if zb - 40 <= -400:
        return
    sl, c = P.region((-160, -60, -400), (160, 80, zb - 20))
    if sl is None:
        return
    x, y, z = c
    wing = (np.abs(np.abs(x) - 95 - 0.3 * (y - 20)) < 5) & (y > -40) & (y < 60) & (z < zb - 30) & (z > zb - 95)
    P.paint(sl, wing & (body.rho(x, y, z) < 1.0), _u(rng, 300, 600))


def _phantom(rng: np.random.Generator, grid: Grid, contrast: str) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Build one phantom on `grid`: returns (HU float32, label uint8, target volumes mL)."""
    P = _Painter(grid, rng)
    pv = contrast == "portal"
    body = _body_wall(rng, P, pv)
    dia = _thorax(rng, P, body, pv)
    _small_bowel(rng, P, body, pv)
    _colon(rng, P, body, dia, pv)
    _stomach(rng, P, body, dia, pv)
    _back_muscles(rng, P, body, dia, pv)
    in_abdomen = _Abdomen(body, dia)
    organs = _organ_shapes(rng, in_abdomen)
    _duodenum(rng, P, organs.p_head, in_abdomen, pv)
    hu = _organ_hu(rng, pv)
    liver_vessels, zb = _vessels(rng, P, body, dia, organs, hu)
    _gallbladder(rng, P, in_abdomen)
    fat_hu = _paint_organs(rng, P, organs, hu, liver_vessels, in_abdomen)
    _fat_planes(rng, P, body, fat_hu)
    _spine(rng, P, body)
    _ribs(rng, P, body, dia)
    _iliac_wings(rng, P, body, zb)
    _pelvis(P, rng, body.rho, zb, pv)
    return P.hu, P.lab, organs.targets


def _pelvis(P: "_Painter", rng: np.random.Generator, body_rho, zb: float, pv: bool) -> None:
    """Background structures of the lower pelvis, so abdomen-pelvis scans teach what is *not* an organ: urinary
    bladder (fluid), femoral heads and necks in their acetabula, gluteal muscles. z is relative to the renal hilum
    (a real abdomen-pelvis CT has the femoral heads about 230 mm below it and the bladder about 200 mm)."""
    z_fem = _u(rng, -250, -215)
    sl, c = P.region((-200, -150, z_fem - 120), (200, 200, zb + 20))
    if sl is None:
        return
    x, y, z = c
    body = body_rho(x, y, z) < 1.0
    muscle_hu = _u(rng, 10, 55) + (8 if pv else 0)  # gluteal muscle is often fatty, low HU
    glut_max = body & (np.abs(x) > 15) & (y > 25 + 0.1 * np.abs(x)) & (z < zb - _u(rng, 10, 40)) & (
        ((np.abs(x) - 80) / 70) ** 2 + ((y - 70) / 45) ** 2 <= 1.0)
    glut_med = body & (((np.abs(x) - 125) / 28) ** 2 + ((y - 0) / 40) ** 2 <= 1.0) & (z < zb - 20) & (z > z_fem - 10)
    P.paint(sl, glut_max | glut_med, muscle_hu, keep_labels=True)
    bladder = Blob(np.array([rng.normal(0, 8), _u(rng, -75, -45), z_fem + _u(rng, 15, 45)]),
                   np.array([_u(rng, 30, 55), _u(rng, 25, 45), _u(rng, 25, 45)]), _rot(0, 0, 0), power=2.2,
                   deform=Waves(rng, 3, (40, 80), 4, 3))
    rho = bladder.rho(x, y, z)
    P.paint(sl, body & (rho <= 1.0), _u(rng, 0, 20), keep_labels=True)
    P.paint(sl, body & (rho <= 1.0) & (rho > 0.93), _u(rng, 30, 45) + (20 if pv else 0), keep_labels=True)
    cortical, cancellous = _u(rng, 500, 900), _u(rng, 150, 300)
    for side in (-1, 1):
        head = np.array([side * _u(rng, 85, 100), _u(rng, -15, 5), z_fem])
        r = _u(rng, 21, 26)
        d = np.sqrt((x - head[0]) ** 2 + (y - head[1]) ** 2 + (z - head[2]) ** 2)
        shaft = Tube.along([head, head + np.array([side * 30, 5, -35]), head + np.array([side * 45, 10, -120])],
                           [r * 0.6, r * 0.65, r * 0.55])
        ds, rs = shaft.dist(x, y, z)
        bone = body & ((d <= r) | (ds <= rs))
        inner = (d <= r - 3) | (ds <= rs - 4)
        socket = body & (d > r + 2) & (d <= r + 9) & (side * (x - head[0]) < 8) & (z > head[2] - 10)
        P.paint(sl, socket, cortical * 0.7, keep_labels=True)
        P.paint(sl, bone, np.where(inner, cancellous, cortical).astype(_F32), keep_labels=True)


def _direction_matrix(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "lps":
        return np.eye(3)
    if kind == "ras":
        return np.diag([-1.0, -1.0, 1.0])
    if kind == "oblique":
        base = np.eye(3) if rng.random() < 0.5 else np.diag([-1.0, -1.0, 1.0])
        ang = np.radians(rng.uniform(4, 12, 3) * rng.choice([-1, 1], 3))
        return _rot(ang[0], ang[1] * 0.5, ang[2]) @ base
    raise AgnError(f"unknown direction {kind!r}; use one of: {', '.join(DIRECTIONS)}")


def generate_ct_case_with_info(
    rng: np.random.Generator,
    resolution: int = 128,
    direction: Optional[str] = None,
    contrast: Optional[str] = None,
    size_mm: Optional[Sequence[float]] = None,
    crop: bool = True,
) -> tuple[sitk.Image, sitk.Image, CaseInfo]:
    """One phantom: (int16 HU image, uint8 label map on the same grid, what was drawn).

    `resolution` is the in-plane matrix (128 by default; 512 gives real-scanner 0.6-1.0 mm pixels). `direction` is
    'lps', 'ras' or 'oblique' (random when None), `contrast` 'none' or 'portal' (random when None). `size_mm` fixes the
    field of view (x, y, z in mm); `crop=False` makes the field of view cover all labelled organs whole.
    """
    t0 = time.perf_counter()
    if resolution < 16 or resolution > 1024:
        raise AgnError(f"--resolution must be between 16 and 1024, got {resolution}")
    direction = direction or str(rng.choice(DIRECTIONS, p=[0.45, 0.45, 0.10]))
    contrast = contrast or str(rng.choice(CONTRASTS))
    if contrast not in CONTRASTS:
        raise AgnError(f"unknown contrast {contrast!r}; use one of: {', '.join(CONTRASTS)}")
    dmat = _direction_matrix(direction, rng)

    # Spacing: draw a real scanner's 512-matrix pixel (0.6-1.0 mm) and slice (1-5 mm); scale to the output matrix.
    f = resolution / 128.0
    pix0 = _u(rng, 0.6, 1.0)
    slice0 = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0]))
    fov_xy = 512 * pix0
    if not crop:
        fov_xy = max(fov_xy, 420.0)
    if size_mm is not None:
        fov_xy = float(max(size_mm[0], size_mm[1]))
    sxy = fov_xy / resolution
    sz = max(slice0, 0.8 * sxy)
    if size_mm is not None:
        fov_z = float(size_mm[2])
        nz = max(4, int(round(fov_z / sz)))
    elif crop and rng.random() < 0.5:  # abdomen-pelvis protocol: from below the hips up into the liver
        span = _u(rng, 330, 480)
        sz = max(sz, span / (160 * f))  # keep the array small: at most 160 slices at resolution 128
        nz = int(round(span / sz))
    else:
        lo_n = max(int(round(40 * f)), int(math.ceil((260 if not crop else 130) / sz)))
        hi_n = max(lo_n, int(round(90 * f)))
        nz = int(rng.integers(lo_n, hi_n + 1))
    fov_z = nz * sz
    need_lo, need_hi = (-90.0, 150.0) if not crop else (-40.0, 70.0)
    if crop and size_mm is None and fov_z >= 330:  # a long scan starts in the pelvis
        z_lo = _u(rng, -300, -230)
    elif fov_z >= need_hi - need_lo:
        z_lo = _u(rng, need_hi - fov_z, need_lo)
    else:
        z_lo = (need_lo + need_hi - fov_z) / 2
    z_center = z_lo + fov_z / 2

    patient_rot = _rot(math.radians(rng.normal(0, 1.5)), math.radians(rng.normal(0, 1.5)), math.radians(rng.normal(0, 3)))
    patient_origin = np.array([rng.normal(0, 15), rng.normal(20, 15), _u(rng, -700, -300)])
    center_anat = np.array([rng.normal(0, 8) if crop else 0.0, -25 + (rng.normal(0, 10) if crop else 0.0), z_center])
    center_world = patient_origin + patient_rot @ center_anat
    size = (resolution, resolution, nz)
    spacing = (sxy, sxy, sz)
    origin = center_world - dmat @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    grid = Grid(size, spacing, origin, dmat, patient_rot, patient_origin)

    hu, lab, targets = _phantom(rng, grid, contrast)

    # Table under the patient (carbon shell, foam core), in world y below the lowest body point.
    table = bool(rng.random() < 0.7)
    if table:
        y_w = grid.y  # anatomical y ~ world y (small patient rotation)
        top = float(np.max(grid.y[hu > -500])) + _u(rng, 2, 25) if np.any(hu > -500) else 150.0
        thick = _u(rng, 12, 30)
        slab = (y_w > top) & (y_w < top + thick) & (np.abs(grid.x) < 230)
        shell = slab & ((y_w < top + 2) | (y_w > top + thick - 2))
        hu[slab] = -850.0
        hu[shell] = _u(rng, 100, 300)

    # Partial volume (PSF ~1 mm plus the voxel footprint), then correlated noise.
    sig_mm = _u(rng, 0.8, 1.2)
    sig = [
        math.sqrt((sig_mm / sz) ** 2 + 0.38**2),  # z: PSF plus the slice profile
        math.sqrt((sig_mm / sxy) ** 2 + 0.3**2),
        math.sqrt((sig_mm / sxy) ** 2 + 0.3**2),
    ]
    hu = ndimage.gaussian_filter(hu, sig, mode="nearest")
    noise_hu = _u(rng, 10, 25)
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=_F32), [0.3, 0.6, 0.6])
    noise *= noise_hu / max(float(noise.std()), 1e-6)
    hu += noise
    if rng.random() < 0.3:  # outside the reconstruction circle
        r = np.sqrt(((grid.x - center_anat[0]) ** 2 + (grid.y - center_anat[1]) ** 2))
        hu[r > fov_xy / 2] = -1024
    img_arr = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    image = sitk.GetImageFromArray(img_arr)
    label = sitk.GetImageFromArray(lab)
    for im in (image, label):
        im.SetSpacing(tuple(float(s) for s in spacing))
        im.SetOrigin(tuple(float(o) for o in origin))
        im.SetDirection(tuple(float(d) for d in dmat.flatten()))
    info = CaseInfo(
        size=size, spacing=tuple(round(s, 4) for s in spacing), direction=direction,
        direction_matrix=[round(float(d), 6) for d in dmat.flatten()], contrast=contrast,
        noise_hu=round(noise_hu, 1), target_volumes_ml={k: round(v, 1) for k, v in targets.items()},
        spine_world=tuple(float(v) for v in patient_origin), z_range_mm=(round(z_lo, 1), round(z_lo + fov_z, 1)),
        table=table, seconds=round(time.perf_counter() - t0, 3),
    )
    return image, label, info


def generate_ct_case(rng: np.random.Generator, **kwargs) -> tuple[sitk.Image, sitk.Image]:
    """One phantom: (int16 HU image, uint8 label map with the same geometry). See `generate_ct_case_with_info`."""
    image, label, _ = generate_ct_case_with_info(rng, **kwargs)
    return image, label


def phantom_scan(size: Sequence[int], spacing: Sequence[float], seed: int = 0, resolution: int = 128) -> sitk.Image:
    """A phantom CT (int16 HU, LPS axes) on exactly this grid (x, y, z voxels and mm), for benchmarks.

    Why resampled: a benchmark needs a scan of a given size (512x512x300 by default), and building the anatomy at
    that size would take minutes and gigabytes; the phantom is built at `resolution` in-plane over the same field of
    view, then resampled linearly (air outside it)."""
    size = tuple(int(v) for v in size)
    spacing = tuple(float(v) for v in spacing)
    fov_mm = [n * s for n, s in zip(size, spacing)]
    rng = np.random.default_rng(seed)
    matrix = min(int(resolution), max(16, size[0], size[1]))
    image, _, _ = generate_ct_case_with_info(rng, resolution=matrix, direction="lps", size_mm=fov_mm)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    origin = [c - s * (n - 1) / 2 for c, s, n in zip(centre, spacing, size)]
    identity = tuple(float(v) for v in np.eye(3).ravel())
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, identity, -1024, sitk.sitkInt16)


def label_volumes_ml(label: sitk.Image) -> dict[str, float]:
    """Volume of every labelled organ (mL)."""
    arr = sitk.GetArrayViewFromImage(label)
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    counts = np.bincount(arr.ravel(), minlength=max(LABELS.values()) + 1)
    return {name: float(counts[i]) * voxel_ml for name, i in LABELS.items() if i}


def dataset_json(cases: int, seed: int, resolution: int) -> dict:
    """The nnU-Net v2 dataset.json for a phantom folder."""
    return {
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": int(cases),
        "file_ending": ".nii.gz",
        "name": "AGN-SyntheticAbdomenCT",
        "description": (
            f"Synthetic abdominal CT phantoms made by `agn synth ct` (seed {seed}, in-plane matrix {resolution}): "
            "spleen, kidneys, liver and pancreas labels; random sizes, shapes, contrast phase (none or portal venous), "
            "spacing, orientation and field of view. Not real patient data."
        ),
        "reference": "agn synthetic data engine",
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "overwrite_image_reader_writer": "SimpleITKIO",
    }


_DATASET_ENTRIES = {"dataset.json", "imagesTr", "labelsTr", "phantoms.json"}


def _prepare_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise AgnError(f"{out_dir} exists and is not a folder; choose another -o")
        entries = {p.name for p in out_dir.iterdir()}
        if entries and not overwrite:
            raise AgnError(f"{out_dir} already exists and is not empty; pass --overwrite to replace it")
        foreign = entries - _DATASET_ENTRIES
        if foreign and overwrite:
            raise AgnError(
                f"{out_dir} holds files that are not a phantom data set ({sorted(foreign)[0]}, ...); "
                "refusing to replace it, choose an empty or new folder"
            )


def write_ct_dataset(
    out_dir: Path | str,
    cases: int,
    seed: int = 0,
    resolution: int = 128,
    direction: Optional[str] = None,
    contrast: Optional[str] = None,
    size_mm: Optional[Sequence[float]] = None,
    crop: bool = True,
    overwrite: bool = False,
    progress: Optional[Callable[[int, CaseInfo], None]] = None,
) -> list[CaseInfo]:
    """Write `cases` phantoms in nnU-Net v2 layout; built in a hidden temporary folder and moved into place at the end.

    Case i uses the generator seeded with (seed, i), so any case can be regenerated on its own.
    """
    out_dir = Path(out_dir)
    if cases < 1:
        raise AgnError("--cases must be at least 1")
    if direction is not None and direction not in DIRECTIONS:
        raise AgnError(f"unknown direction {direction!r}; use one of: {', '.join(DIRECTIONS)}")
    if contrast is not None and contrast not in CONTRASTS:
        raise AgnError(f"unknown contrast {contrast!r}; use one of: {', '.join(CONTRASTS)}")
    _prepare_output(out_dir, overwrite)
    infos: list[CaseInfo] = []
    # built in a hidden folder and moved into place when complete; an old phantom set is replaced only with --overwrite
    with atomic_dir(out_dir, may_replace=lambda folder: _prepare_output(folder, overwrite)) as tmp:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        for i in range(cases):
            rng = np.random.default_rng([seed, i])
            image, label, info = generate_ct_case_with_info(
                rng, resolution=resolution, direction=direction, contrast=contrast, size_mm=size_mm, crop=crop
            )
            name = f"case_{i:04d}"
            sitk.WriteImage(image, str(tmp / "imagesTr" / f"{name}_0000.nii.gz"), useCompression=True)
            sitk.WriteImage(label, str(tmp / "labelsTr" / f"{name}.nii.gz"), useCompression=True)
            infos.append(info)
            if progress is not None:
                progress(i, info)
        (tmp / "dataset.json").write_text(dumps(dataset_json(cases, seed, resolution)))
        meta = {f"case_{i:04d}": asdict(info) for i, info in enumerate(infos)}
        (tmp / "phantoms.json").write_text(dumps(meta))
    return infos

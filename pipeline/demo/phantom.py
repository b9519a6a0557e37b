"""A synthetic chest/abdomen CT phantom in Hounsfield units, with its organ labels, on a non-RAS grid.

Anatomy is drawn in patient (RAS+) millimetres and sampled on the voxel grid, so organs sit on the
correct side whatever the storage orientation: the default grid is stored **LPS** (voxel ``x`` runs
to the patient's Left, ``y`` to Posterior, ``z`` to Superior, as DICOM scanners store it) with
anisotropic voxels of 3.5 x 3.5 x 5.0 mm (x, y, z), so the 96 x 96 x 64 default spans a realistic
336 x 336 x 320 mm field of view and organ volumes come out in plausible millilitres.

Labels: 0 background (air), 1 body (soft tissue, fat, bowel), 2 lungs, 3 liver, 4 spleen,
5 kidneys, 6 spine. Intensities: air -1000, lungs ~-850, subcutaneous fat ~-100, muscle ~45,
liver ~60, spleen ~50, kidneys ~30 (medulla) with a ~150 enhancing cortex, vertebrae 400-1000
(cortical shell, cancellous core); Gaussian noise of 15 HU, smoothed slightly like a reconstruction
kernel. Pure numpy + ``scipy.ndimage``, deterministic by seed.

Arrays are ``(Z, Y, X)`` (the :mod:`pipeline.volume` convention); the affine maps voxel
``(x, y, z, 1)`` to RAS+ millimetres (nibabel convention).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

BACKGROUND, BODY, LUNGS, LIVER, SPLEEN, KIDNEYS, SPINE = range(7)
LABEL_NAMES = ("background", "body", "lungs", "liver", "spleen", "kidneys", "spine")
DEFAULT_SHAPE = (64, 96, 96)  # (Z, Y, X)
DEFAULT_SPACING = (5.0, 3.5, 3.5)  # (z, y, x) mm
NOISE_HU = 15.0


def lps_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Affine of an LPS-stored grid centred on the world origin.

    Args:
        shape: ``(Z, Y, X)`` voxels.
        spacing: ``(z, y, x)`` millimetres.

    Returns:
        4x4 float64 mapping voxel ``(x, y, z, 1)`` to RAS+ mm: ``x`` grows to the Left (R decreases),
        ``y`` to Posterior (A decreases), ``z`` to Superior.
    """
    (nz, ny, nx), (sz, sy, sx) = shape, spacing
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * (nx - 1) / 2, sy * (ny - 1) / 2, -sz * (nz - 1) / 2]
    return affine


def synthetic_ct(
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate a CT phantom.

    Args:
        seed: random seed; the same seed gives the same phantom, bit for bit.
        shape: ``(Z, Y, X)`` voxels (at least 16 x 32 x 32).
        spacing: ``(z, y, x)`` voxel size in mm.

    Returns:
        ``(hu, labels, affine)``: ``hu`` int16 ``(Z, Y, X)`` Hounsfield units; ``labels`` uint8
        ``(Z, Y, X)`` with ids 0..6 (see :data:`LABEL_NAMES`); ``affine`` float64 4x4, LPS-oriented
        (see :func:`lps_affine`).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] < 16 or min(shape[1:]) < 32:
        raise ValueError(f"phantom shape {shape} too small: give (Z, Y, X) of at least (16, 32, 32)")
    rng = np.random.default_rng(seed)
    affine = lps_affine(shape, spacing)
    r, a, s = _world_grid(shape, affine)  # RAS mm of every voxel, each (Z, Y, X)
    z_top, z_bot = s.max(), s.min()
    jitter = lambda scale: 1.0 + scale * rng.uniform(-1, 1)  # noqa: E731

    hu = np.full(shape, -1000.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    body, half_w, half_d = _paint_body(hu, labels, r, a, s, rng, jitter)

    # organs, in anatomical position (world mm; z = 0 at the volume centre)
    dome = z_bot + (z_top - z_bot) * 0.55 * jitter(0.05)
    lungs = _lungs(r, a, s, dome, z_top, half_w, jitter)
    liver = _ellipsoid(r, a, s, (60 * jitter(0.1), 5.0, dome - 35), (75 * jitter(0.1), 70 * jitter(0.1), 55 * jitter(0.1)))
    liver &= ~_ellipsoid(r, a, s, (-10.0, 20.0, dome - 30), (45.0, 45.0, 60.0))  # notch at the midline
    spleen = _ellipsoid(r, a, s, (-85 * jitter(0.08), -40 * jitter(0.1), dome - 40), (28 * jitter(0.15), 38 * jitter(0.1), 40 * jitter(0.1)))
    kidneys, cortex = _kidneys(r, a, s, dome, jitter)
    spine, bone_core = _spine(r, a, s, half_d, rng)

    texture = _smooth(rng, shape, 2.0)
    for mask, label, value, tex in (
        (lungs & body, LUNGS, -850.0, 40.0),
        (liver & body & ~lungs, LIVER, 60.0 * jitter(0.08), 6.0),
        (spleen & body & ~lungs, SPLEEN, 50.0 * jitter(0.08), 5.0),
        (kidneys & body, KIDNEYS, 30.0 * jitter(0.1), 4.0),
    ):
        # a thin fat plane around each solid organ separates it from its neighbours, as in real CT
        if label != LUNGS:
            halo = ndimage.binary_dilation(mask, iterations=1) & ~mask & (labels == BODY)
            hu[halo] = -80.0
        labels[mask] = label
        hu[mask] = value + tex * texture[mask]
    hu[cortex & (labels == KIDNEYS)] = 150.0 * jitter(0.1)
    labels[spine & body] = SPINE
    hu[spine & body] = 900.0
    hu[bone_core & body] = 420.0 + 60.0 * texture[bone_core & body]

    return _reconstruct(hu, rng), labels, affine


def _paint_body(hu, labels, r, a, s, rng, jitter) -> tuple[np.ndarray, float, float]:
    """Paint the body into ``hu`` and ``labels`` (in place): an ellipse (wider left-right), slowly
    varying along z; fat rim, muscle wall, bowel/fat core. Returns ``(body mask, half width, half
    depth)``, the half axes in mm."""
    shape = r.shape
    z_top, z_bot = s.max(), s.min()
    half_w, half_d = 150 * jitter(0.06), 105 * jitter(0.06)
    bulge = 1.0 + 0.04 * np.sin((s - z_bot) / (z_top - z_bot + 1e-6) * np.pi * jitter(0.3))
    rho = np.sqrt((r / (half_w * bulge)) ** 2 + ((a + 10) / (half_d * bulge)) ** 2)
    body = rho < 1.0 + 0.015 * _smooth(rng, shape, 3.0)
    labels[body] = BODY
    fat_depth = 0.12 * jitter(0.3)
    hu[body] = 45.0  # muscle / soft tissue
    hu[body & (rho > 1.0 - fat_depth)] = -100.0  # subcutaneous fat
    inner = body & (rho < 1.0 - fat_depth - 0.08)
    bowel = _smooth(rng, shape, 2.0)
    hu[inner] = np.where(bowel[inner] > 0.3, 20.0, -90.0)  # bowel loops in visceral fat
    gas = inner & (_smooth(rng, shape, 1.5) > 2.2)
    hu[gas] = -950.0
    return body, half_w, half_d


def _kidneys(r, a, s, dome, jitter) -> tuple[np.ndarray, np.ndarray]:
    """Both kidneys below the diaphragm ``dome`` (S mm); returns (kidneys, their 6 mm cortex)."""
    kid_z = dome - 95 * jitter(0.05)
    kidneys = np.zeros(r.shape, bool)
    cortex = np.zeros(r.shape, bool)
    for side in (-1, 1):
        centre = (side * 55 * jitter(0.08), -45 * jitter(0.08), kid_z - side * 10 * jitter(0.5))
        radii = (25 * jitter(0.1), 22 * jitter(0.1), 48 * jitter(0.1))
        outer = _ellipsoid(r, a, s, centre, radii)
        kidneys |= outer
        cortex |= outer & ~_ellipsoid(r, a, s, centre, tuple(x - 6.0 for x in radii))
    return kidneys, cortex


def _reconstruct(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reconstruction: partial-volume blur, then quantum noise blurred by the kernel; int16 HU clipped to -1024..3071."""
    hu = ndimage.gaussian_filter(hu, sigma=(0.5, 0.6, 0.6))
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 0.6)
    hu += NOISE_HU * noise / max(float(noise.std()), 1e-6)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _world_grid(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAS+ mm coordinates (R, A, S) of every voxel, each ``(Z, Y, X)`` float32."""
    z, y, x = (np.arange(n, dtype=np.float64) for n in shape)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    world = [affine[i, 0] * xx + affine[i, 1] * yy + affine[i, 2] * zz + affine[i, 3] for i in range(3)]
    return tuple(w.astype(np.float32) for w in world)


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-std Gaussian-smoothed noise (``sigma`` in voxels)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _ellipsoid(r, a, s, centre, radii) -> np.ndarray:
    return ((r - centre[0]) / radii[0]) ** 2 + ((a - centre[1]) / radii[1]) ** 2 + ((s - centre[2]) / radii[2]) ** 2 < 1.0


def _lungs(r, a, s, dome, z_top, half_w, jitter) -> np.ndarray:
    """Two lungs above the diaphragm domes, tapering to the apices, with the mediastinum between them."""
    lungs = np.zeros(r.shape, bool)
    height = max(z_top - dome + 40.0, 1.0)
    for side in (-1, 1):
        cr = side * 70 * jitter(0.06)
        taper = np.clip(1.0 - ((s - dome) / height) ** 2 * 0.6, 0.2, 1.0)
        dome_s = dome - 25.0 + 0.004 * (r - cr) ** 2  # domed floor
        shape = ((r - cr) / (55 * taper)) ** 2 + ((a - 5) / (80 * taper)) ** 2 < 1.0
        lungs |= shape & (s > dome_s) & (np.abs(r) > 22)
    return lungs


def _spine(r, a, s, half_d, rng) -> tuple[np.ndarray, np.ndarray]:
    """Vertebral bodies (with discs between them) and a posterior arch; returns (bone, cancellous core)."""
    ac = -10.0 - 0.5 * half_d  # vertebral body centre (A mm), halfway from the body centre to its back
    level = 30.0  # mm per vertebra
    phase = rng.uniform(0, level)
    in_disc = ((s + phase) % level) < 6.0
    body_dist = np.sqrt((r / 20.0) ** 2 + ((a - ac) / 17.0) ** 2)
    vertebra = (body_dist < 1.0) & ~in_disc
    arch = (np.sqrt((r / 16.0) ** 2 + ((a - ac + 30.0) / 12.0) ** 2) < 1.0) & (np.sqrt((r / 8.0) ** 2 + ((a - ac + 26.0) / 7.0) ** 2) > 1.0)
    bone = vertebra | (arch & ~in_disc)
    core = vertebra & (body_dist < 0.75)
    return bone, core


def write_ct_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a ``(Z, Y, X)`` array as NIfTI-1 with ``affine`` as qform and sform (code 1, scanner).

    The array is transposed to nibabel's ``(x, y, z)`` index order; its dtype is kept (int16 HU,
    uint8 labels).
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return path

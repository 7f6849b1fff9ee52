"""Synthetic non-contrast head CT phantoms with hyperdense bleeds of known volume.

A head is scalp, skull, a cerebrospinal-fluid rim, cortex, white matter and two lateral
ventricles, posed with a random pitch (how far the chin is tucked), so the brain meets the
slices at the angles real head CTs show; bleeds are lumpy hyperdense blobs (50-90 HU) inside
the parenchyma. For training, evaluating and demonstrating the hemorrhage triage model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imaging_ai.synthetic import HU_AIR, FakePatient, Phantom
from imaging_ai.synthetic_series import tilted_series

HU_SCALP, HU_BONE, HU_CSF = 30.0, 850.0, 6.0
BRAIN_HU = (25.0, 36.0)  # white matter; cortex is a few HU denser
BLEED_HU = (55.0, 88.0)  # acute blood, within the 50-90 HU that radiologists look for
SCALP_MM = 4.0


@dataclass(frozen=True)
class Bleed:
    """Ground truth for one bleed: its voxel count on the phantom grid and where it lies."""

    index: int  # value in the phantom's bleed mask
    volume_mm3: float  # voxels x voxel volume: the figure a segmentation is compared to
    centroid_voxel: tuple[float, float, float]  # (slice, row, column)
    hu: float

    @property
    def volume_ml(self) -> float:
        return self.volume_mm3 / 1000.0

    @property
    def radius_mm(self) -> float:
        """The radius of a sphere of the same volume: how close a finding must lie."""
        return float((3.0 * self.volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0))


@dataclass
class HeadPhantom:
    """A head CT volume in HU (its `phantom.nodule_mask` holds the bleeds) and its truth."""

    phantom: Phantom
    bleeds: list[Bleed]

    @property
    def bleed_mask(self) -> npt.NDArray[np.uint8]:
        return self.phantom.nodule_mask

    def bleed_centre_mm(self, bleed: Bleed) -> npt.NDArray[np.float64]:
        """Patient (x, y, z) of a bleed's centroid (axial slices, default orientation)."""
        k, i, j = bleed.centroid_voxel
        dz, dy, dx = self.phantom.spacing_mm
        oz, oy, ox = self.phantom.origin_mm
        return np.array([ox + j * dx, oy + i * dy, oz + k * dz])


def _rotation(pitch_deg: float, roll_deg: float, yaw_deg: float) -> npt.NDArray[np.float64]:
    """Patient (x, y, z) to head axes (left-right, front-back, up-down)."""
    p, r, y = (math.radians(a) for a in (pitch_deg, roll_deg, yaw_deg))
    about_x = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    about_y = np.array([[math.cos(r), 0, math.sin(r)], [0, 1, 0], [-math.sin(r), 0, math.cos(r)]])
    about_z = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    return np.asarray(about_z @ about_y @ about_x, dtype=np.float64)


@dataclass(frozen=True)
class _Ellipsoid:
    centre: npt.NDArray[np.float64]  # head axes, mm
    semi_axes: npt.NDArray[np.float64]
    axes: npt.NDArray[np.float64]  # rows: the ellipsoid's own axes in head axes

    def inside(self, points: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        local = (points - self.centre.astype(np.float32)) @ self.axes.T.astype(np.float32)
        scaled = local / self.semi_axes.astype(np.float32)
        return np.asarray(np.einsum("...i,...i->...", scaled, scaled) <= 1.0)


def _random_axes(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return np.asarray(q, dtype=np.float64)


def _bleed_lobes(
    rng: np.random.Generator, centre: npt.NDArray[np.float64], volume_mm3: float
) -> list[_Ellipsoid]:
    """A main ellipsoid of about the wanted volume and up to two small lobes on its surface."""
    radius = (3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    ratios = rng.uniform(0.65, 1.35, size=3)
    ratios /= ratios.prod() ** (1.0 / 3.0)
    main = _Ellipsoid(centre, radius * ratios, _random_axes(rng))
    lobes = [main]
    for _ in range(int(rng.integers(0, 3))):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        offset = direction * radius * rng.uniform(0.5, 0.8)
        lobes.append(
            _Ellipsoid(centre + offset, radius * rng.uniform(0.35, 0.6, size=3), _random_axes(rng))
        )
    return lobes


def make_head_ct_phantom(
    seed: int,
    shape: tuple[int, int, int] = (120, 256, 256),
    spacing_mm: tuple[float, float, float] = (1.25, 0.9, 0.9),
    bleed_count: int | None = None,
    bleed_volume_ml: tuple[float, float] = (0.3, 30.0),
    noise_hu: float = 6.0,
    max_pitch_deg: float = 15.0,
) -> HeadPhantom:
    """A head CT of a random head pose, with `bleed_count` bleeds (random 0-2 when None)
    whose volumes are drawn log-uniformly from `bleed_volume_ml`.

    The slab covers the head from just above the skull base to the vertex, like a routine
    non-contrast head CT. The same seed always gives the same phantom.
    """
    rng = np.random.default_rng(seed)
    depth, rows, cols = shape
    dz, dy, dx = spacing_mm
    z = (np.arange(depth) - depth / 2 + 0.5) * dz
    y = (np.arange(rows) - rows / 2 + 0.5) * dy
    x = (np.arange(cols) - cols / 2 + 0.5) * dx
    origin = (float(z[0]), float(y[0]), float(x[0]))

    # Skull outer surface semi-axes (left-right, front-back, up-down), mm.
    skull = np.array([rng.uniform(68, 76), rng.uniform(86, 96), rng.uniform(88, 98)])
    thickness = rng.uniform(5.0, 8.0)
    # The head centre sits so that the slab's top reaches just past the vertex.
    centre_z = z[-1] - skull[2] * rng.uniform(0.92, 1.0)
    centre = np.array([rng.uniform(-4, 4), rng.uniform(-6, 6), centre_z])
    rotation = _rotation(
        rng.uniform(-max_pitch_deg, max_pitch_deg), rng.uniform(-4, 4), rng.uniform(-4, 4)
    )
    brain_hu = rng.uniform(*BRAIN_HU)
    cortex_hu = brain_hu + rng.uniform(4.0, 8.0)
    # A slowly varying offset across the brain (beam hardening, reconstruction), +-3 HU.
    wave = rng.uniform(0.01, 0.03, size=3) * rng.choice([-1, 1], size=3)
    wave_phase = rng.uniform(0, 2 * math.pi, size=3)

    inner = skull - thickness
    ventricle_height = rng.uniform(14, 22)
    ventricles = [
        _Ellipsoid(
            np.array([side * rng.uniform(5, 9), rng.uniform(-6, 2), ventricle_height]),
            np.array([rng.uniform(4, 8), rng.uniform(18, 28), rng.uniform(7, 11)]),
            np.eye(3),
        )
        for side in (-1.0, 1.0)
    ]

    count = int(rng.integers(0, 3)) if bleed_count is None else bleed_count
    lobes: list[list[_Ellipsoid]] = []
    low, high = (math.log(v * 1000.0) for v in bleed_volume_ml)
    bleed_hu = [float(rng.uniform(*BLEED_HU)) for _ in range(count)]
    attempts = 0
    while len(lobes) < count and attempts < 200:
        attempts += 1
        volume = math.exp(rng.uniform(low, high))
        radius = (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)
        # Parenchyma, clear of the skull by a margin, of the ventricles and of other bleeds.
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        reach = (inner - 1.6 * radius - 6.0).clip(min=1.0)
        candidate = direction * rng.uniform(0.0, 1.0) ** (1 / 3) * reach
        if any(
            np.linalg.norm((candidate - v.centre) / (v.semi_axes + radius * 1.6)) < 1.0
            for v in ventricles
        ):
            continue
        if any(np.linalg.norm(candidate - other[0].centre) < radius * 2 + 12 for other in lobes):
            continue
        # Inside the slab (the head centre is above most of it; the slab bottom cuts the head).
        top_z, bottom_z = z[-1] - centre_z, z[0] - centre_z
        if not bottom_z + radius * 1.8 + 4 < candidate[2] < top_z - radius * 1.8 - 4:
            continue
        lobes.append(_bleed_lobes(rng, candidate, volume))

    hu = np.full(shape, HU_AIR, dtype=np.float32)
    bleed_mask = np.zeros(shape, dtype=np.uint8)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    rot = rotation.astype(np.float32)
    for k in range(depth):
        world = np.stack(
            [xx - centre[0], yy - centre[1], np.full_like(xx, z[k] - centre[2])], axis=-1
        ).astype(np.float32)
        head = world @ rot.T  # head axes of every pixel of this slice
        radial = np.einsum("...i,...i->...", head / skull.astype(np.float32), head / skull)
        inside_inner = np.einsum(
            "...i,...i->...", head / inner.astype(np.float32), head / inner.astype(np.float32)
        )
        scalp_axes = (skull + SCALP_MM).astype(np.float32)
        scalp = np.einsum("...i,...i->...", head / scalp_axes, head / scalp_axes) <= 1.0
        plane = hu[k]
        plane[scalp] = HU_SCALP
        plane[radial <= 1.0] = HU_BONE
        plane[inside_inner <= 1.0] = HU_CSF
        cortex_axes = (inner - 1.5).astype(np.float32)
        in_cortex = np.einsum("...i,...i->...", head / cortex_axes, head / cortex_axes) <= 1.0
        white_axes = (inner - 5.0).astype(np.float32)
        in_white = np.einsum("...i,...i->...", head / white_axes, head / white_axes) <= 1.0
        offset = 3.0 * np.sin(head @ wave.astype(np.float32) * 2 * np.pi + wave_phase[0])
        plane[in_cortex] = (cortex_hu + offset)[in_cortex]
        plane[in_white] = (brain_hu + offset)[in_white]
        for ventricle in ventricles:
            plane[ventricle.inside(head)] = HU_CSF
        for index, bleed in enumerate(lobes, start=1):
            inside = np.zeros(plane.shape, dtype=bool)
            for lobe in bleed:
                inside |= lobe.inside(head)
            inside &= in_cortex
            plane[inside] = bleed_hu[index - 1]
            bleed_mask[k][inside] = index
    hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)

    voxel_mm3 = dz * dy * dx
    bleeds = []
    for index in range(1, len(lobes) + 1):
        voxels = np.argwhere(bleed_mask == index)
        if len(voxels) == 0:
            continue
        centroid = voxels.mean(axis=0)
        bleeds.append(
            Bleed(
                index=index,
                volume_mm3=float(len(voxels) * voxel_mm3),
                centroid_voxel=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
                hu=bleed_hu[index - 1],
            )
        )
    phantom = Phantom(
        hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        spacing_mm=spacing_mm,
        origin_mm=origin,
        nodules=[],
        nodule_mask=bleed_mask,
    )
    return HeadPhantom(phantom=phantom, bleeds=bleeds)


HEAD_SERIES_DESCRIPTION = "HEAD W/O CONTRAST 1.25MM"


@dataclass
class HeadStudy:
    """A written head CT study and its truth (the bleeds, in the phantom's frame)."""

    study_instance_uid: str
    paths: list[Path]
    head: HeadPhantom
    tilt_deg: float
    sop_instance_uids: list[str] = field(default_factory=list)


def write_head_ct_study(
    out_dir: Path,
    seed: int = 21,
    tilt_deg: float = 15.0,
    patient: FakePatient | None = None,
    bleed_volume_ml: tuple[float, float] = (6.0, 12.0),
    bleed_count: int = 1,
) -> HeadStudy:
    """A non-contrast head CT acquired with the gantry tilted by `tilt_deg` (as trauma head
    CTs often are, to spare the eyes), as DICOM Part 10 files with fake PHI."""
    out_dir.mkdir(parents=True, exist_ok=True)
    head = make_head_ct_phantom(seed, bleed_count=bleed_count, bleed_volume_ml=bleed_volume_ml)
    slices = tilted_series(
        head.phantom, tilt_deg, head.phantom.spacing_mm[0], patient or FakePatient()
    )
    study = HeadStudy(str(slices[0].StudyInstanceUID), [], head, tilt_deg)
    for ds in slices:
        ds.BodyPartExamined = "HEAD"
        ds.SeriesDescription = HEAD_SERIES_DESCRIPTION
        ds.StudyDescription = "CT HEAD W/O CONTRAST TRAUMA"
        ds.WindowCenter, ds.WindowWidth = 40, 80
        path = out_dir / f"CT{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        study.paths.append(path)
        study.sop_instance_uids.append(str(ds.SOPInstanceUID))
    return study

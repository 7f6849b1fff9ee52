"""Findings: connected components with volume, longest diameter and patient centroid."""

from __future__ import annotations

import numpy as np

from imaging_ai.inference.findings import extract_findings
from imaging_ai.inference.training import MODEL_NAME, NODULE_LABEL
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import VolumeGeometry

GEOMETRY = VolumeGeometry(shape=(40, 80, 80), spacing_mm=(1.5, 0.7, 0.7), origin_mm=(-30, -28, -28))
CARD = ModelCard(
    name=MODEL_NAME,
    version="0",
    description="test",
    weights_file="model.ts",
    weights_sha256="0" * 64,
    labels=[NODULE_LABEL],
    input_spacing_mm=(1.5, 1.5, 1.5),
    intensity_window_hu=(-1000, 400),
    roi_size=(32, 32, 32),
)


def _sphere(centre: tuple[int, int, int], diameter_mm: float) -> np.ndarray:
    k, i, j = np.meshgrid(*(np.arange(n) for n in GEOMETRY.shape), indexing="ij")
    dz, dy, dx = GEOMETRY.spacing_mm
    distance2 = (
        ((k - centre[0]) * dz) ** 2 + ((i - centre[1]) * dy) ** 2 + ((j - centre[2]) * dx) ** 2
    )
    return distance2 <= (diameter_mm / 2) ** 2


def test_a_sphere_becomes_one_finding_with_its_size_and_place() -> None:
    # Given a 12 mm sphere in the label map and a 1.5 mm speck elsewhere
    labels = np.zeros(GEOMETRY.shape, dtype=np.uint8)
    labels[_sphere((20, 40, 40), 12.0)] = 1
    labels[5, 5, 5:7] = 1
    # When findings are extracted
    cleaned, findings = extract_findings(labels, GEOMETRY, CARD)
    # Then the sphere is one finding with its volume, diameter and centroid; the speck is gone
    assert len(findings) == 1
    finding = findings[0]
    assert abs(finding.volume_mm3 - np.pi / 6 * 12.0**3) / (np.pi / 6 * 12.0**3) < 0.05
    assert abs(finding.longest_diameter_mm - 12.0) <= 0.3
    np.testing.assert_allclose(
        finding.centroid_mm, GEOMETRY.voxel_to_patient((20, 40, 40)), atol=0.1
    )
    assert cleaned[5, 5, 5] == 0 and cleaned[20, 40, 40] == 1


def test_components_are_numbered_largest_first() -> None:
    labels = np.zeros(GEOMETRY.shape, dtype=np.uint8)
    labels[_sphere((10, 20, 20), 7.0)] = 1
    labels[_sphere((28, 55, 55), 14.0)] = 1
    _, findings = extract_findings(labels, GEOMETRY, CARD)
    assert [f.component for f in findings] == [1, 2]
    assert findings[0].volume_mm3 > findings[1].volume_mm3


def test_longest_diameter_of_generated_nodules_is_within_two_percent() -> None:
    # Given the generator's nodules, digitized on anisotropic CT voxels, with known diameters
    from imaging_ai.inference.findings import longest_diameter_mm
    from imaging_ai.synthetic import make_chest_phantom

    phantom = make_chest_phantom(12, shape=(120, 400, 400), nodule_count=3)
    geometry = phantom.geometry()
    # When each one's longest diameter is measured on its mask
    for index, nodule in enumerate(phantom.nodules, start=1):
        measured = longest_diameter_mm(phantom.nodule_mask == index, geometry)
        # Then it reads the true diameter within 2 %
        assert abs(measured - nodule.diameter_mm) / nodule.diameter_mm < 0.02

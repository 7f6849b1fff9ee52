"""Run a model directory on a study: sliding-window inference, source-grid labels, findings."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from monai.inferers.utils import sliding_window_inference
from scipy import ndimage

from imaging_ai.errors import ContractError, PipelineError
from imaging_ai.inference.bundle import Bundle, Reorientation, is_bundle, read_bundle
from imaging_ai.inference.findings import extract_findings
from imaging_ai.inference.grid import resample_linear, source_box_for
from imaging_ai.model_card import ModelCard, TriageFlag, load_model_card
from imaging_ai.model_io import ModelInputMeta, ModelOutputMeta, TriageResult, VolumeGeometry

# Model-grid voxels whose foreground probability stays below this cannot reach 0.5 after
# linear interpolation, so only boxes around the rest are resampled to the source grid.
_CANDIDATE_PROBABILITY = 0.2
_SPACING_TOLERANCE_MM = 0.01
# Windows per forward pass on CPU. PyTorch's CPU convolution takes oneDNN only for a batch of
# two or more or a large enough input: one small 3-D window falls to its im2col path
# (slow_conv3d) in every layer. Measured on the 200x512^2 demo study's grid, 2 threads: 64^3
# windows (the head model) took 0.40x the time two at a time; 112x128x240 windows (the lung
# model), already on oneDNN in most layers, took 1.05-1.13x (twice the activations).
CPU_BATCHED_WINDOW_VOXELS = 1_000_000
CPU_SMALL_WINDOW_BATCH = 2


class ModelLoadError(PipelineError):
    """The model directory is missing, inconsistent or its weights cannot be loaded."""


@dataclass(frozen=True)
class PredictorSettings:
    """Runtime knobs; the model itself is described by model.json, not here."""

    device: str = "auto"  # "auto", "cpu" or "cuda[:n]"
    sw_batch_size: int = 0  # 0: 4 on CUDA; on CPU 2 for small windows, else 1 (see below)
    amp: bool = True  # mixed precision on CUDA; CPU always runs fp32
    cpu_threads: int = 0  # 0: min(4, cpu count); fixed so CPU results are reproducible

    @classmethod
    def from_environment(cls) -> PredictorSettings:
        return cls(
            device=os.environ.get("INFERENCE_DEVICE", "auto"),
            sw_batch_size=int(os.environ.get("INFERENCE_SW_BATCH_SIZE", "0")),
            amp=os.environ.get("INFERENCE_AMP", "1") not in ("0", "false", "False"),
            cpu_threads=int(os.environ.get("INFERENCE_CPU_THREADS", "0")),
        )


# Trilinear resampling of values in [0, 1] stays in [0, 1]; allow float rounding only.
_RANGE_TOLERANCE = 1e-3


def normalise_hu(image: npt.NDArray[np.float32], window: tuple[float, float]) -> torch.Tensor:
    low, high = window
    scaled = (np.clip(image, low, high) - low) / (high - low)
    return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))


def triage_probability(
    foreground: npt.NDArray[np.float32], voxel_mm3: float, flag: TriageFlag
) -> float:
    """Mean probability of the label's most likely voxels that make up `flag.min_volume_mm3`."""
    count = max(1, min(foreground.size, math.ceil(flag.min_volume_mm3 / voxel_mm3)))
    flat = foreground.ravel()
    top = np.partition(flat, flat.size - count)[flat.size - count :]
    return float(np.clip(top.mean(dtype=np.float64), 0.0, 1.0))


def answer_triage(
    card: ModelCard, probabilities: npt.NDArray[np.float32], model: VolumeGeometry
) -> TriageResult | None:
    """The card's per-study flag from the model-grid class probabilities (None: no flag)."""
    flag = card.triage
    if flag is None:
        return None
    channel = 1 + [label.value for label in card.labels].index(flag.label_value)
    probability = round(
        triage_probability(probabilities[channel], float(np.prod(model.spacing_mm)), flag), 4
    )
    suspected = probability >= flag.threshold
    return TriageResult(
        name=flag.name,
        probability=probability,
        suspected=suspected,
        critical=suspected and card.is_critical(flag.finding),
    )


class Predictor:
    """A loaded model: feed it a model-grid image, get a source-grid label map and findings."""

    def __init__(self, model_dir: Path, settings: PredictorSettings | None = None) -> None:
        self.settings = settings or PredictorSettings()
        # A MONAI bundle brings its own axis order and ROI; our model.json models take ours.
        self.bundle: Bundle | None = None
        try:
            if is_bundle(model_dir):
                self.bundle = read_bundle(model_dir)
                self.card: ModelCard = self.bundle.card
            else:
                self.card = load_model_card(model_dir)
        except (ContractError, ValueError, OSError) as error:
            raise ModelLoadError(f"model card: {error}") from error
        if self.bundle is None and self.card.weights_format != "torchscript":
            raise ModelLoadError(f"unsupported weights format {self.card.weights_format!r}")
        self.device = self._choose_device()
        try:
            if self.bundle is not None:
                module = self.bundle.load_network(self.device)
            else:
                module = torch.jit.load(  # type: ignore[no-untyped-call]
                    str(model_dir / self.card.weights_file), map_location=self.device
                )
        except (ContractError, RuntimeError, ValueError, OSError, KeyError) as error:
            raise ModelLoadError(f"weights could not be loaded: {type(error).__name__}") from error
        self.network: torch.nn.Module = module.eval()

    def _choose_device(self) -> torch.device:
        wanted = self.settings.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(wanted)
        if device.type == "cpu":
            # Same threads + deterministic kernels: the same input gives the same bytes out.
            torch.use_deterministic_algorithms(True)
            # ...without also filling every new tensor with NaN first: a debugging aid for
            # kernels that read memory they never wrote, not part of reproducibility; it was
            # a third of the CPU time of an inference (aten::fill_, measured).
            torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
            threads = self.settings.cpu_threads or min(4, os.cpu_count() or 1)
            torch.set_num_threads(threads)
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        return device

    @property
    def uses_amp(self) -> bool:
        return self.device.type == "cuda" and self.settings.amp

    @property
    def sw_batch_size(self) -> int:
        if self.settings.sw_batch_size:
            return self.settings.sw_batch_size
        if self.device.type == "cuda":
            return 4
        small = math.prod(self.card.roi_size) <= CPU_BATCHED_WINDOW_VOXELS
        return CPU_SMALL_WINDOW_BATCH if small else 1

    def check_input(self, image: npt.NDArray[np.float32], meta: ModelInputMeta) -> None:
        """Refuse inputs this model was not made for, with a reason a caller can act on."""
        if meta.model_name != self.card.name:
            raise ContractError(f"request is for model {meta.model_name!r}, not {self.card.name!r}")
        if not np.allclose(
            meta.model_geometry.spacing_mm, self.card.input_spacing_mm, atol=_SPACING_TOLERANCE_MM
        ):
            raise ContractError(
                f"image spacing {meta.model_geometry.spacing_mm} mm is not the model's "
                f"{self.card.input_spacing_mm} mm"
            )
        if meta.model_version not in (None, self.card.version):
            raise ContractError(
                f"request is pinned to version {meta.model_version!r}, not {self.card.version!r}"
            )
        if self.bundle is not None:  # an oblique grid or a mismatched axis is a 400, not a 500
            Reorientation.for_geometry(meta.model_geometry, self.bundle.axes)
        if min(image.shape) < 1 or not np.isfinite(image).all():
            raise ContractError("image is empty or holds non-finite values")
        low, high = float(image.min()), float(image.max())
        if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
            # Raw HU here means the caller skipped the window; the model would see nothing.
            raise ContractError(
                f"image values span [{low:.3g}, {high:.3g}]; the model takes intensities "
                f"normalized to [0, 1] with model.json's window {self.card.intensity_window_hu}"
            )

    def probabilities(
        self, image: npt.NDArray[np.float32], geometry: VolumeGeometry | None = None
    ) -> npt.NDArray[np.float32]:
        """Softmax class probabilities on the model grid, shape (classes, *image.shape).

        A bundle's network runs in the bundle's axis order (its Orientationd), which needs the
        image's `geometry`; the probabilities come back in ours.
        """
        roi_size = self.card.roi_size
        reorientation: Reorientation | None = None
        if self.bundle is not None:
            if geometry is None:
                raise ContractError("a MONAI bundle model needs the image geometry to orient it")
            reorientation = Reorientation.for_geometry(geometry, self.bundle.axes)
            image = reorientation.to_bundle(image)
            roi_size = self.bundle.axes.roi_size
        # Preprocessing already applied the intensity window (model.json): never twice.
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        tensor = tensor[None, None].to(self.device)
        with (
            torch.inference_mode(),
            torch.autocast(device_type=self.device.type, enabled=self.uses_amp),
        ):
            logits = sliding_window_inference(
                tensor,
                roi_size=roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=self.network,
                overlap=self.card.overlap,
                mode="gaussian",
            )
            assert isinstance(logits, torch.Tensor)
            probabilities = torch.softmax(logits.float(), dim=1)[0]
        channels = np.asarray(probabilities.cpu().numpy(), dtype=np.float32)
        return reorientation.from_bundle(channels) if reorientation else channels

    def to_source_labels(
        self,
        probabilities: npt.NDArray[np.float32],
        model: VolumeGeometry,
        source: VolumeGeometry,
    ) -> npt.NDArray[np.uint8]:
        """Resample probabilities to the source grid around candidates, then take the argmax."""
        labels = np.zeros(source.shape, dtype=np.uint8)
        candidates = probabilities[1:].max(axis=0) >= _CANDIDATE_PROBABILITY
        if not candidates.any():
            return labels
        grown, _ = ndimage.label(ndimage.binary_dilation(candidates, iterations=1))
        values = np.array([0] + [label.value for label in self.card.labels], dtype=np.uint8)
        for model_box in ndimage.find_objects(grown):
            if model_box is None:
                continue
            box = source_box_for((model_box[0], model_box[1], model_box[2]), model, source)
            if any(s.stop <= s.start for s in box):
                continue
            stacked = np.stack(
                [resample_linear(channel, model, source, box) for channel in probabilities]
            )
            labels[box] = np.maximum(labels[box], values[np.argmax(stacked, axis=0)])
        return labels

    def predict(
        self, image: npt.NDArray[np.float32], meta: ModelInputMeta
    ) -> tuple[npt.NDArray[np.uint8], ModelOutputMeta]:
        self.check_input(image, meta)
        started = time.perf_counter()
        probabilities = self.probabilities(image, meta.model_geometry)
        if probabilities.shape[0] != len(self.card.labels) + 1:
            raise ModelLoadError("network output channels do not match the model card's labels")
        labels = self.to_source_labels(probabilities, meta.model_geometry, meta.source_geometry)
        labels, findings = extract_findings(labels, meta.source_geometry, self.card)
        triage = answer_triage(self.card, probabilities, meta.model_geometry)
        output = ModelOutputMeta(
            input=meta,
            model_name=self.card.name,
            model_version=self.card.version,
            weights_sha256=self.card.weights_sha256,
            device=str(self.device),
            inference_seconds=round(time.perf_counter() - started, 3),
            findings=findings,
            triage=triage,
        )
        return labels, output

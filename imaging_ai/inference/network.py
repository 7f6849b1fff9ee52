"""The demo network: a small MONAI 3-D U-Net, and how to export it as TorchScript."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets.unet import UNet

# Three poolings: ROI and training patch sizes must be multiples of 8.
CHANNELS = (16, 32, 64, 128)
STRIDES = (2, 2, 2)


def build_network(
    out_channels: int = 2, channels: tuple[int, ...] | None = None
) -> torch.nn.Module:
    """Background plus one channel per label, softmax over channels."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        channels=channels or CHANNELS,
        strides=STRIDES,
        num_res_units=1,
    )


def export_torchscript(network: torch.nn.Module, path: Path) -> None:
    """Trace in eval mode on CPU; the graph is shape-generic because the net is convolutional."""
    network = network.to("cpu").eval()
    example = torch.zeros(1, 1, 32, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(network, example)  # type: ignore[no-untyped-call]
    traced.save(str(path))

"""Dataset readers yielding common DatasetFrames; `open_dataset(kind, path)` picks one by name."""

from __future__ import annotations

import os

from surg3d_nodes.data.datasets.base import DatasetError, DatasetFrame, DatasetReader
from surg3d_nodes.data.datasets.endonerf import EndoNeRFReader
from surg3d_nodes.data.datasets.stereo import StereoFolderReader
from surg3d_nodes.data.datasets.stereomis import StereoMISReader

READERS: dict[str, type[DatasetReader]] = {
    "endonerf": EndoNeRFReader,
    "synthetic": EndoNeRFReader,   # the synthetic generator writes the EndoNeRF layout
    "stereomis": StereoMISReader,
    "stereo": StereoFolderReader,
}


def open_dataset(kind: str, path: str | os.PathLike, **kwargs) -> DatasetReader:
    """Reader of dataset `kind` (endonerf, synthetic, stereomis, stereo) at `path`; kwargs go to it."""
    if kind not in READERS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(READERS)}")
    return READERS[kind](path, **kwargs)


__all__ = ["READERS", "DatasetError", "DatasetFrame", "DatasetReader", "EndoNeRFReader", "StereoFolderReader",
           "StereoMISReader", "open_dataset"]

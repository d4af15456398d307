"""Non-square films and cines keep their aspect ratio (pad by default, centre-crop on request), and colour cines
are converted to grey in frame blocks whose temporaries do not grow with the cine."""
from __future__ import annotations

import io
import shutil
import tarfile
import tracemalloc

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from probmed.data.builder import BuildOptions, build_dataset
from probmed.data.manifest import write_manifest
from probmed.data.inputs import CXRInput, EchoInput, fit_square
from probmed.data.readers.echo_sources import FRAME_BLOCK, rgb_to_grey


def _disc(h: int, w: int, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) - h / 2, torch.arange(w) - w / 2, indexing="ij")
    return ((yy**2 + xx**2) < radius**2).float()[None]


def _extent(mask: torch.Tensor) -> tuple[int, int]:
    rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_pad_keeps_the_whole_image_and_its_shape():
    film = torch.ones(1, 1955, 1841)
    out = fit_square(film, 64, "pad")
    assert out.shape == (1, 64, 64)
    assert torch.all(out[0, :, 2:62] > 0.99) and torch.all(out[0, :, :1] == 0) and torch.all(out[0, :, 63:] == 0)
    # a round disc in a 480 × 640 cine stays round (squashing to a square would make it 4:3)
    h, w = _extent(fit_square(_disc(480, 640, 150), 64, "pad")[0] > 0.5)
    assert abs(h - w) <= 1 and h == pytest.approx(150 * 2 * 64 / 640, abs=1.5)


def test_crop_fills_the_square_from_the_centre():
    image = (torch.arange(40.0) >= 20).float().expand(1, 20, 40)  # left half 0, right half 1
    out = fit_square(image, 32, "crop")[0]  # 20 × 40 → 32 × 64, keep columns 16..47
    assert out.shape == (32, 32)
    assert torch.all(out[:, :14] < 0.01) and torch.all(out[:, 18:] > 0.99)
    h, w = _extent(fit_square(_disc(480, 640, 150), 64, "crop")[0] > 0.5)
    assert abs(h - w) <= 1 and h == pytest.approx(150 * 2 * 64 / 480, abs=1.5)
    with pytest.raises(ValueError, match="fit must be one of"):
        fit_square(image, 32, "stretch")
    with pytest.raises(ValueError, match="fit must be one of"):
        EchoInput(fit="squash")
    assert CXRInput(fit="crop").fit == "crop"


def test_build_pads_a_real_non_square_cine(tmp_path):
    source = shutil.copy(get_testdata_file("examples_ybr_color.dcm", download=False), tmp_path / "echo.dcm")
    write_manifest(tmp_path / "m.csv", [{"study_id": "s", "patient_id": "p", "split": "train", "echo": source}])
    build_dataset(tmp_path / "m.csv", tmp_path / "out", salt="k", progress=False, options=BuildOptions(echo_size=32))
    with tarfile.open(next((tmp_path / "out").glob("*.tar"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("echo.npy"))
        cine = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
    assert cine.shape == (30, 32, 32)  # 240 × 320 → 24 × 32 picture centred with 4 black rows above and below
    assert cine[:, :4].max() == 0 and cine[:, 28:].max() == 0 and cine[:, 4:28].max() > 0


def _peak_temporaries(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """``(grey, peak bytes allocated during the conversion beyond its uint8 output)``."""
    tracemalloc.start()
    grey = rgb_to_grey(rgb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return grey, peak - grey.nbytes


def test_colour_to_grey_in_blocks_is_exact_and_small():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 96, 128, 3), dtype=np.uint8)
    expected = np.floor(rgb.astype(np.float64) @ np.array([299.0, 587.0, 114.0]) * 255 / 255000 + 0.5)
    grey, extra = _peak_temporaries(rgb)
    np.testing.assert_array_equal(grey, expected.astype(np.uint8))
    _, extra_long = _peak_temporaries(np.concatenate([rgb, rgb]))  # twice the frames
    assert abs(extra_long - extra) < (1 << 16)  # the temporaries do not grow with the cine's length ...
    assert extra < 3 * FRAME_BLOCK * 96 * 128 * 3 * 4  # ... they are a few uint32 blocks
    assert extra_long < 2 * rgb.size * 8 / 10  # the old conversion copied the whole cine to float64 (size × 8 B)
    sixteen = rng.integers(0, 65536, (3, 5, 7, 3)).astype(np.uint16)  # 16-bit palette entries
    reference = np.floor(sixteen.astype(np.float64) @ np.array([299.0, 587.0, 114.0]) * 255 / 65535000 + 0.5)
    np.testing.assert_array_equal(rgb_to_grey(sixteen, 65535), reference.astype(np.uint8))

"""Faithfulness of the random resized crop + flip of the `gpu`, `ffcv` (crop="decoder") and `dali` loaders, measured
from their outputs (issue 5, "Faithfulness": crop area and aspect-ratio distributions, flipped fraction).

The crop box of every output view is read back from the pixels: the input is a coordinate image (red = column x,
green = row y, uint8, 256 x 192), so inside a view red is linear in the output column and green in the output row;
a least-squares line over the interior columns (rows) gives the box's width (height) as slope x S, its left (top) edge
from the intercept, and a flip as a negative red slope. Linear resampling filters (bilinear, bicubic, OpenCV
INTER_AREA, DALI's antialiased resize) keep a linear ramp linear away from the image border, so the estimate is
exact to a fraction of a pixel (the gpu loader's boxes come back as integers).

Each kind's boxes (N = 2048 views) are compared with torchvision's `RandomResizedCrop.get_params` restated in
numpy (`pil_reference.crop_params`): area fraction, log aspect ratio and the relative corner position
left / (W - w + 1), top / (H - h + 1) with the two-sample KS statistic (slack 0.005 / 0.01 / 0.01 for the
sub-pixel estimation error; critical value at ALPHA = 1e-4: 0.070), and the flipped fraction with a binomial test.
Measured KS (area, log aspect): gpu 0.020 / 0.007, dali 0.009 / 0.003, ffcv 0.014 / 0.019. The test can fail:
the same boxes against a reference with min scale 0.2 instead of 0.08 give KS > 0.1 (asserted).
The fallback (no attempt fits: scale (0.9, 1), ratio (3, 4)) is torchvision's centre crop with the aspect clipped
to 3 in all three: 256 x 85 at top 53 — DALI places that box at a random height instead of the centre (documented
in loaders/dali_loader.py; with the anchors' ranges the fallback has probability < 1e-8 per image).
"""
from __future__ import annotations

import dataclasses
import gc
import io

import numpy as np
import pytest

from loaders import ViewConfig, make_loader

from .pil_reference import crop_params
from .test_faithfulness import ks_distance
from .utils import FakeDataset, assert_binomial, ks_critical

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # FFCV's numba finalizer

H, W, S, N, BATCH = 192, 256, 48, 2048, 256
ALPHA = 1e-4
MARGIN = 3  # output columns/rows left out of the line fit at each edge (resampling at the image border clamps)
SLACK = {"area": 0.005, "log_aspect": 0.01, "rel_top": 0.01, "rel_left": 0.01}
CROP = ViewConfig(size=S, interpolation="bilinear", jitter_prob=0.0, grayscale_prob=0.0, flip_prob=0.5,
                  mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # anchors' scale (0.08, 1) and ratio (3/4, 4/3)


def coordinate_image() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx, yy, np.full_like(xx, 128)], axis=-1).astype(np.uint8)


class JpegCoordinates:
    """The coordinate image as BATCH encoded JPEGs (quality 100), for the dali loader."""

    name, split = "coordinates", "train"
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(coordinate_image()).save(buf, format="JPEG", quality=100)
        self.blob = buf.getvalue()
        self.labels = np.zeros(BATCH, np.int64)

    def encoded(self, i: int) -> bytes:
        return self.blob

    def __len__(self) -> int:
        return BATCH


def decoded_coordinates() -> FakeDataset:
    return FakeDataset(images=np.repeat(coordinate_image()[None], BATCH, axis=0), labels=np.zeros(BATCH, np.int64),
                       mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def boxes(view) -> np.ndarray:
    """(B, 5) float: top, left, h, w, flipped of each (B, 3, S, S) view in [0, 255] pixel units (module docstring)."""
    y = view.permute(0, 2, 3, 1).double().cpu().numpy() * 255
    k = np.arange(S, dtype=np.float64)[MARGIN:S - MARGIN] + 0.5  # output pixel centres
    design = np.stack([k, np.ones_like(k)], axis=1)
    red = y[:, :, :, 0].mean(axis=1)[:, MARGIN:S - MARGIN].T    # per output column
    green = y[:, :, :, 1].mean(axis=2)[:, MARGIN:S - MARGIN].T  # per output row
    (sr, cr), (sg, cg) = (np.linalg.lstsq(design, v, rcond=None)[0] for v in (red, green))
    w, h, flipped = np.abs(sr) * S, sg * S, sr < 0
    # column k samples x = left + (k + 0.5) w / S - 0.5 (pixel centres); mirrored: left + w - (k + 0.5) w / S - 0.5
    left = np.where(flipped, cr - w + 0.5, cr + 0.5)
    return np.stack([cg + 0.5, left, h, w, flipped], axis=1)


def loader_boxes(kind, source, cfg, n=N, **kw) -> np.ndarray:
    ld = make_loader(kind, source, batch_size=BATCH, num_views=1, device="cpu", seed=0, view_configs=cfg, **kw)
    out, epoch = [], 0
    while sum(len(b) for b in out) < n:
        ld.set_epoch(epoch)
        out += [boxes(views[0]) for views, _, _ in ld]
        epoch += 1
    del ld
    gc.collect()
    return np.concatenate(out)[:n]


def statistics(b) -> dict:
    top, left, h, w = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return {"area": h * w / (H * W), "log_aspect": np.log(w / h), "rel_top": top / (H - h + 1),
            "rel_left": left / (W - w + 1)}


def reference_boxes(cfg, n=N, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([crop_params(H, W, cfg.crop_scale, cfg.crop_ratio, rng) for _ in range(n)], dtype=np.float64)


@pytest.fixture(scope="module")
def coordinate_beton(tmp_path_factory):
    pytest.importorskip("ffcv")
    from loaders.ffcv_ops import write_beton

    path = write_beton(decoded_coordinates(), tmp_path_factory.mktemp("crop") / "coordinates.beton", num_workers=1)
    yield str(path)
    gc.collect()


def source_for(kind, request):
    if kind == "gpu":
        return decoded_coordinates(), {}
    if kind == "ffcv":
        return request.getfixturevalue("coordinate_beton"), {"crop": "decoder", "num_workers": 2}
    pytest.importorskip("nvidia.dali")
    return JpegCoordinates(), {"num_threads": 2}


def test_box_estimate_is_exact_on_known_crops():
    """The read-back recovers boxes drawn by hand, mirrored or not (the measuring tool is checked first)."""
    import torch

    from loaders.gpu_aug import crop_flip_theta

    x = torch.from_numpy(coordinate_image()).permute(2, 0, 1)[None].float().div(255).expand(4, 3, H, W)
    top, left, h, w = (torch.tensor(v) for v in ([0, 10, 53, 100], [0, 37, 0, 5], [192, 60, 85, 30], [256, 90, 256, 40]))
    flip = torch.tensor([False, True, False, True])
    grid = torch.nn.functional.affine_grid(crop_flip_theta(top, left, h, w, flip, H, W), [4, 3, S, S],
                                           align_corners=False)
    view = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    got = boxes(view)
    want = np.array([[0, 0, 192, 256, 0], [10, 37, 60, 90, 1], [53, 0, 85, 256, 0], [100, 5, 30, 40, 1]], np.float64)
    np.testing.assert_allclose(got, want, atol=0.05)


@pytest.mark.parametrize("kind", ["gpu", "ffcv", "dali"])
def test_crop_and_flip_distribution_matches_torchvision(kind, request):
    source, kw = source_for(kind, request)
    ours = loader_boxes(kind, source, CROP, **kw)
    assert (ours[:, 2] > 0).all() and (ours[:, 3] > 0).all()
    # inside the image, up to the estimate's error (OpenCV's INTER_AREA reads half a pixel off the gpu's convention)
    assert (ours[:, 0] > -1).all() and (ours[:, 1] > -1).all()
    assert (ours[:, 0] + ours[:, 2] < H + 1).all() and (ours[:, 1] + ours[:, 3] < W + 1).all()
    got, ref = statistics(ours), statistics(reference_boxes(CROP))
    crit = ks_critical(N, N, ALPHA)
    bad = [f"{k}: KS {ks_distance(got[k], ref[k], SLACK[k]):.3f} > {crit:.3f} (mean {got[k].mean():.4f} vs "
           f"{ref[k].mean():.4f})" for k in got if ks_distance(got[k], ref[k], SLACK[k]) > crit]
    assert not bad, f"{kind} crops differ from torchvision's RandomResizedCrop:\n" + "\n".join(bad)
    assert_binomial(int(ours[:, 4].sum()), N, CROP.flip_prob)
    # the comparison can fail: a reference with min scale 0.2 is told apart
    other = statistics(reference_boxes(dataclasses.replace(CROP, crop_scale=(0.2, 1.0))))
    assert ks_distance(got["area"], other["area"], SLACK["area"]) > 1.5 * crit


@pytest.mark.parametrize("kind", ["gpu", "ffcv", "dali"])
def test_fallback_is_centre_crop_with_clipped_aspect(kind, request):
    """No attempt fits (every aspect >= 3 on a 4:3 image at scale >= 0.9): torchvision's centre crop, aspect 3."""
    source, kw = source_for(kind, request)
    cfg = dataclasses.replace(CROP, crop_scale=(0.9, 1.0), crop_ratio=(3.0, 4.0), flip_prob=0.0)
    got = loader_boxes(kind, source, cfg, n=BATCH, **kw)
    top, left, h, w = (H - 85) // 2, 0, 85, 256  # w = W, h = round(W / 3)
    np.testing.assert_allclose(got[:, 2:4], np.broadcast_to([h, w], (BATCH, 2)), atol=0.5)
    np.testing.assert_allclose(got[:, 1], left, atol=0.5)
    assert not got[:, 4].any()
    if kind != "dali":  # DALI draws the fallback box's position (see the module docstring)
        np.testing.assert_allclose(got[:, 0], top, atol=0.5)

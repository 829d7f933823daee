"""fastpnr to_beton: write one split of a dataset to an FFCV `.beton` (fields image, label, index[, domain]).

    fastpnr to_beton --dataset cifar10 --split train --data-dir /path/to/data --out cifar10_train.beton
    fastpnr to_beton --dataset imagenette112 --split train --image-format jpeg --jpeg-quality 90

Needs the ffcv extra (pip install ffcv==1.0.2, see README). `index` is the image's position in
`load_dataset(dataset, split, ...)`, so loader subsets (tasks) computed from that dataset apply to the file.
"""
from __future__ import annotations

import sys
from pathlib import Path

from fastpnr.cli import run_fire
from fastpnr.data.decode import RESIZE_MODES

CHOICES = {"resize": RESIZE_MODES}  # validated in load_dataset (help text)


def main(dataset: str, split: str = "train", data_dir: str | None = None, out: str | None = None,
         image_format: str = "raw", jpeg_quality: int = 90, max_resolution: int | None = None, num_workers: int = 2,
         image_size: int | None = None, resize: str = "stretch", skip_corrupt: bool = False,
         cache_dir: str | None = None) -> str:
    """Write `dataset`/`split` to `out` (default ./<dataset>_<split>_<image_format>.beton); returns the path written.

    image_format: raw (uint8 pixels, fastest to read) or jpeg (re-encoded at jpeg_quality, smaller).
    max_resolution: cap the longest side when writing (FFCV's resize, OpenCV INTER_AREA).
    image_size: resize every image when loading the dataset (load_dataset(image_size=...), PIL bicubic);
    resize: stretch (the whole image) or center (shorter side x256/224, then the centre crop).
    num_workers: writer processes. skip_corrupt: skip undecodable images instead of failing.
    """
    from fastpnr.data import load_dataset
    from fastpnr.errors import require
    from loaders.ffcv_ops import IMAGE_FORMATS, import_ffcv, write_beton

    require(image_format in IMAGE_FORMATS, "image_format", image_format, ("raw", "jpeg"))
    import_ffcv()  # fail in one line before the (slow) dataset decode
    out = Path(out) if out is not None else Path(f"{dataset}_{split}_{image_format}.beton")
    ds = load_dataset(dataset, split, data_dir, image_size=image_size, resize=resize, skip_corrupt=skip_corrupt,
                      cache_dir=cache_dir, decode=True, progress=True)
    path = write_beton(ds, out, image_format=image_format, jpeg_quality=jpeg_quality, max_resolution=max_resolution,
                       num_workers=num_workers)
    print(f"wrote {len(ds)} images of {dataset}/{split} to {path}", file=sys.stderr)
    return str(path)


def cli(argv=None):
    run_fire(main, argv, name="fastpnr to_beton")


if __name__ == "__main__":
    cli()

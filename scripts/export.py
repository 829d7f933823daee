"""fastpnr export: a trained model's backbone as a ResNet state_dict in torchvision's key layout.

    fastpnr export --checkpoint runs/smoke/task1.pt --out backbone.pt   # the model after task 1 (0-based, as task1.pt)
    python -c "import fastpnr; m = fastpnr.load_backbone('backbone.pt')"   # a fastpnr ResNet, eval mode

The file holds `state_dict` (conv1, bn1, layer1.0.conv1, ...; no `backbone.` prefix, no `fc`) and the metadata
`arch`, `width`, `stem` ("cifar": 3x3 stride-1 conv1, no max-pool, not torchvision's; "imagenet": torchvision's),
`stem_padding`, `feat_dim`, `normalize` (mean, std, image size), `source`. README: loading it into torchvision/timm.
"""
from __future__ import annotations

from fastpnr.cli import run_fire


def main(checkpoint: str, out: str = "backbone.pt"):
    """Export the online backbone of --checkpoint (RUN/task{t}.pt, or RUN/checkpoint.pt: the model where the run
    stood) to --out (default backbone.pt); prints what was written."""
    from fastpnr.run.export import describe_source, export_backbone

    meta = export_backbone(checkpoint, out)
    stem = ("CIFAR stem: 3x3 stride-1 conv1 with padding "
            f"{meta['stem_padding']}, no max-pool (replace torchvision's conv1 and maxpool, README)"
            if meta["stem"] == "cifar" else "ImageNet stem (torchvision's 7x7 conv1 and max-pool)")
    print(f"wrote {out}: {meta['arch']} width {meta['width']} ({meta['feat_dim']}-d features), {stem}; "
          f"{describe_source(meta)} of {meta['source']['method']}+{meta['source']['regularizer']} on "
          f"{meta['source']['dataset']}; inputs normalized with mean {meta['normalize']['mean']}, "
          f"std {meta['normalize']['std']}")


def cli(argv=None):
    run_fire(main, argv, name="fastpnr export")


if __name__ == "__main__":
    cli()

"""fastpnr export: a trained model's backbone as a ResNet state_dict in torchvision's key layout (a ViT: timm's).

    fastpnr export --checkpoint runs/smoke/task1.pt --out backbone.pt   # the model after task 1 (0-based, as task1.pt)
    python -c "import fastpnr; m = fastpnr.load_backbone('backbone.pt')"   # a fastpnr ResNet, eval mode

The file holds `state_dict` (conv1, bn1, layer1.0.conv1, ...; no `backbone.` prefix, no `fc`) and the metadata
`arch`, `width`, `stem` ("cifar": 3x3 stride-1 conv1, no max-pool, not torchvision's; "imagenet": torchvision's),
`stem_padding`, `feat_dim`, `normalize` (mean, std, image size), `source`. README: loading it into torchvision/timm.
A ViT's file has `layout` "timm", `timm_name`, `patch_size`, `image_size` and `pos_embed` instead of width and stem.
"""
from __future__ import annotations

from fastpnr.cli import run_fire


def main(checkpoint: str, out: str = "backbone.pt"):
    """Export the online backbone of --checkpoint (RUN/task{t}.pt, or RUN/checkpoint.pt: the model where the run
    stood) to --out (default backbone.pt); prints what was written."""
    from fastpnr.run.export import describe_source, export_backbone

    meta = export_backbone(checkpoint, out)
    print(f"wrote {out}: {_architecture(meta)}; "
          f"{describe_source(meta)} of {meta['source']['method']}+{meta['source']['regularizer']} on "
          f"{meta['source']['dataset']}; inputs normalized with mean {meta['normalize']['mean']}, "
          f"std {meta['normalize']['std']}")


def _architecture(meta: dict) -> str:
    """The exported network in words: a ResNet's width and stem, or a ViT's timm name and sizes."""
    if meta.get("layout") == "timm":
        depth = "" if meta.get("depth") is None else f", depth={meta['depth']}"
        return (f"{meta['arch']} patch {meta['patch_size']} at {meta['image_size']} px ({meta['feat_dim']}-d class "
                f"token) in timm's layout: timm.create_model({meta['timm_name']!r}, img_size={meta['image_size']}, "
                f"patch_size={meta['patch_size']}{depth}, num_classes=0).load_state_dict(...)")
    stem = ("CIFAR stem: 3x3 stride-1 conv1 with padding "
            f"{meta['stem_padding']}, no max-pool (replace torchvision's conv1 and maxpool, README)"
            if meta["stem"] == "cifar" else "ImageNet stem (torchvision's 7x7 conv1 and max-pool)")
    return f"{meta['arch']} width {meta['width']} ({meta['feat_dim']}-d features), {stem}"


def cli(argv=None):
    run_fire(main, argv, name="fastpnr export")


if __name__ == "__main__":
    cli()

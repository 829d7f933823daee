"""fastpnr: fast continual self-supervised learning with Pseudo-Negative Regularization."""
__version__ = "0.1.0"


def load_backbone(path, map_location="cpu"):
    """A trained backbone as a fastpnr ResNet or ViT in eval mode, from ``fastpnr export``'s file, a ``task{t}.pt`` or a
    ``checkpoint.pt`` (``fastpnr.run.export.load_backbone``; imported here on first use, so ``import fastpnr`` stays
    light)."""
    from .run.export import load_backbone as _load

    return _load(path, map_location)

"""Per-view augmentation settings: the anchors' family (anchors-methods.md §1.4), one frozen dataclass per view."""
from __future__ import annotations

from dataclasses import dataclass

from fastpnr.errors import require

INTERPOLATIONS = ("bicubic", "bilinear")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 stats, used for CIFAR-100 too (as in the anchors)
CIFAR_STD = (0.247, 0.243, 0.261)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.228, 0.224, 0.225)  # 0.228, not 0.229: the anchors' DALI value
CROP_MODES = ("device", "decoder")  # the ffcv loader's data.ffcv_crop (here: checked before torch loads)
ORDERS = ("random", "quasi_random", "sequential")  # the ffcv loader's data.ffcv_order


def _is_range(r, lo: float, hi: float) -> bool:
    return isinstance(r, (tuple, list)) and len(r) == 2 and lo <= r[0] <= r[1] <= hi


@dataclass(frozen=True)
class ViewConfig:
    """One view's augmentation: crop → flip → colour jitter → grayscale → blur → solarize → normalize.

    Defaults are the anchors' CIFAR recipe (cassle/utils/pretrain_dataloader.py): RandomResizedCrop(scale=(0.08, 1),
    bicubic), ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2, no blur, no solarization, flip p=0.5.
    Probabilities are per sample. `blur_sigma` is U[lo, hi]; `hue` is the torchvision hue factor in [0, 0.5].
    """

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    flip_prob: float = 0.5
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    def __post_init__(self):
        require(isinstance(self.size, int) and self.size > 0, "view.size", self.size, "an int > 0")
        require(_is_range(self.crop_scale, 1e-6, 1.0), "view.crop_scale", self.crop_scale, "(lo, hi) with 0 < lo <= hi <= 1")
        require(_is_range(self.crop_ratio, 1e-6, float("inf")), "view.crop_ratio", self.crop_ratio, "(lo, hi) with 0 < lo <= hi")
        require(self.interpolation in INTERPOLATIONS, "view.interpolation", self.interpolation, INTERPOLATIONS)
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            require(isinstance(v, (int, float)) and v >= 0, f"view.{name}", v, "a float >= 0")
        require(isinstance(self.hue, (int, float)) and 0 <= self.hue <= 0.5, "view.hue", self.hue, "a float in [0, 0.5]")
        for name in ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob", "flip_prob"):
            p = getattr(self, name)
            require(isinstance(p, (int, float)) and 0 <= p <= 1, f"view.{name}", p, "a probability in [0, 1]")
        require(_is_range(self.blur_sigma, 1e-6, float("inf")), "view.blur_sigma", self.blur_sigma, "(lo, hi) with 0 < lo <= hi")
        require(isinstance(self.mean, (tuple, list)) and len(self.mean) == 3, "view.mean", self.mean, "3 floats")
        require(isinstance(self.std, (tuple, list)) and len(self.std) == 3 and all(s > 0 for s in self.std),
                "view.std", self.std, "3 floats > 0")

    @property
    def jitters(self) -> bool:
        """Whether colour jitter can change an image (torchvision skips a factor of 0)."""
        return self.jitter_prob > 0 and (self.brightness or self.contrast or self.saturation or self.hue) != 0

    @property
    def is_deterministic(self) -> bool:
        """True when the view is a fixed resize (+ centre crop for non-square inputs) and normalization."""
        return (self.crop_scale == (1.0, 1.0) and self.crop_ratio == (1.0, 1.0) and self.flip_prob == 0
                and not self.jitters and self.grayscale_prob == 0 and self.blur_prob == 0 and self.solarize_prob == 0)

    @classmethod
    def eval(cls, size: int, mean=CIFAR_MEAN, std=CIFAR_STD) -> "ViewConfig":
        """The deterministic evaluation transform: resize to `size` (centre square for non-square images), normalize.

        Scale (1, 1) with ratio (1, 1) makes torchvision's crop rule pick the whole (square) image or, after its 10
        rejected attempts, the centre square: Resize + CenterCrop with no randomness.
        """
        return cls(size=size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), brightness=0.0, contrast=0.0,
                   saturation=0.0, hue=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0,
                   flip_prob=0.0, mean=tuple(mean), std=tuple(std))


def cifar_views(size: int = 32, mean=CIFAR_MEAN, std=CIFAR_STD, min_scale: float = 0.08,
                solarize=(0.0, 0.2), blur=(0.0, 0.0)) -> list[ViewConfig]:
    """The anchors' two asymmetric CIFAR views (PIL pipeline): solarize p 0.0/0.2, no blur; VICReg uses min_scale 0.2."""
    require(len(solarize) == len(blur), "cifar_views.blur", blur, f"{len(solarize)} probabilities, one per view")
    return [ViewConfig(size=size, crop_scale=(min_scale, 1.0), solarize_prob=s, blur_prob=b, mean=tuple(mean),
                       std=tuple(std)) for s, b in zip(solarize, blur)]


def imagenet_views(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, min_scale: float = 0.08,
                   solarize=(0.0, 0.2), blur=(1.0, 0.1)) -> list[ViewConfig]:
    """The anchors' two ImageNet-100 / DomainNet views (DALI recipe): blur p 1.0/0.1, solarize p 0.0/0.2."""
    require(len(solarize) == len(blur), "imagenet_views.blur", blur, f"{len(solarize)} probabilities, one per view")
    return [ViewConfig(size=size, crop_scale=(min_scale, 1.0), solarize_prob=s, blur_prob=b, mean=tuple(mean),
                       std=tuple(std)) for s, b in zip(solarize, blur)]

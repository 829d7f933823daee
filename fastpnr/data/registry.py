"""The dataset registry: one `DatasetSpec` per name that `load_dataset` accepts."""
from __future__ import annotations

from dataclasses import dataclass, field

from fastpnr.errors import require

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
# The anchors' ImageNet std is (0.228, 0.224, 0.225), not torchvision's 0.229 (solo-learn/cassle ImagenetTransform).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)
# The anchors' DomainNet task order (cassle/methods/base.py `self.domains`): task t is domain DOMAINNET_DOMAINS[t].
DOMAINNET_DOMAINS = ("real", "quickdraw", "painting", "sketch", "infograph", "clipart")


@dataclass(frozen=True)
class DatasetSpec:
    """What fastpnr knows about a dataset before reading it.

    `layout` picks the reader: "splits" (`<split>/<class>/<file>` in folders or `<split>[-k].tar[.xz|.gz]`),
    "cifar" ("splits" or the official python pickles), "pacs" (one archive per domain, README split rule),
    "domainnet" (the official file lists `<domain>_<split>.txt` beside one folder or archive per domain).
    `splits` are the canonical names; `aliases` maps other accepted names onto them.
    `num_images` (split -> count) is only a progress-bar hint.
    """

    name: str
    num_classes: int | None
    native_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    splits: tuple[str, ...]
    layout: str = "splits"
    aliases: dict[str, str] = field(default_factory=dict)
    cache_decoded: bool = True
    domains: tuple[str, ...] | None = None
    download_url: str | None = None
    num_images: dict[str, int] = field(default_factory=dict)

    @property
    def has_domains(self) -> bool:
        return self.domains is not None

    def canonical_split(self, split: str) -> str:
        """'test' -> 'val' where the eval split is called val; ConfigError for an unknown split."""
        split = self.aliases.get(split, split)
        if self.splits:  # imagefolder accepts any split folder name
            require(split in self.splits, "split", split, [*self.splits, *self.aliases])
        else:
            require(isinstance(split, str) and split != "", "split", split, "a split folder name such as train")
        return split


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("cifar10", 10, 32, CIFAR_MEAN, CIFAR_STD, ("train", "test"), layout="cifar",
                    download_url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    num_images={"train": 50000, "test": 10000}),
        DatasetSpec("cifar100", 100, 32, CIFAR_MEAN, CIFAR_STD, ("train", "test"), layout="cifar",
                    download_url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                    num_images={"train": 50000, "test": 10000}),
        DatasetSpec("tinyimagenet100", 100, 64, IMAGENET_MEAN, IMAGENET_STD, ("train", "val"),
                    aliases={"test": "val"}, num_images={"train": 50000, "val": 5000}),
        # Kept as JPEG bytes on disk only: it exists to exercise the decode path (DALI/FFCV/GPU loaders).
        DatasetSpec("imagenette112", 10, 112, IMAGENET_MEAN, IMAGENET_STD, ("train", "val"),
                    aliases={"test": "val"}, cache_decoded=False, num_images={"train": 9469, "val": 3925}),
        DatasetSpec("pacs", 7, 128, IMAGENET_MEAN, IMAGENET_STD, ("train", "test"), layout="pacs",
                    domains=("art_painting", "cartoon", "photo", "sketch"), num_images={"train": 8003, "test": 1988}),
        # Images of every size: decoding needs image_size (the domainnet-6t preset sets 224).
        DatasetSpec("domainnet", 345, None, IMAGENET_MEAN, IMAGENET_STD, ("train", "test"), layout="domainnet",
                    domains=DOMAINNET_DOMAINS),
        DatasetSpec("imagefolder", None, None, IMAGENET_MEAN, IMAGENET_STD, ()),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    require(name in DATASETS, "dataset", name, list(DATASETS))
    return DATASETS[name]

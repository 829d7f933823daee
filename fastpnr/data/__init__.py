"""Datasets: `load_dataset(name, split, data_dir) -> ImageDataset`, the `DATASETS` registry and the decode cache."""
from fastpnr.data.cache import cache_root
from fastpnr.data.dataset import ImageDataset, load_dataset
from fastpnr.data.registry import DATASETS, DatasetSpec
from fastpnr.data.sources import resolve_data_root

__all__ = ["DATASETS", "DatasetSpec", "ImageDataset", "cache_root", "load_dataset", "resolve_data_root"]

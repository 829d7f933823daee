"""The backbone of a trained model as a plain ResNet (torchvision) or ViT (timm) state_dict (``fastpnr export``, ``fastpnr.load_backbone``).

The exported file (``torch.load``-able with ``weights_only=True``) is a dict:

    format         "fastpnr-backbone", version 1
    state_dict     the online backbone's tensors in torchvision's ResNet key layout (conv1, bn1, layer1.0.conv1, ...,
                   layer2.0.downsample.0/1, ...), no ``backbone.`` prefix and no ``fc`` (the anchors use no classifier:
                   load it into a torchvision/timm ResNet whose ``fc`` is ``nn.Identity``)
    arch, width    resnet18 / resnet50 and the base width (64: torchvision's; other widths load only into fastpnr)
    stem           "cifar": 3x3 stride-1 conv1 with padding ``stem_padding`` (2, the anchors') and no max-pool, which
                   torchvision/timm do not have (replace their conv1 and maxpool first, README); "imagenet": theirs
    feat_dim       length of the feature vector (512 for ResNet-18, 2048 for ResNet-50 at width 64)
    normalize      mean and std the inputs were normalized with (RGB in [0, 1]), the image size trained on
    source         the file exported, its task, method, regularizer, dataset

fastpnr's ResNet (``models.resnet``) is written in torchvision's layout, so the keys map one to one; the exporter
checks that the backbone's keys are exactly those of a fresh fastpnr ResNet of the same shape before writing.

A ViT (``models.vit``) is exported in timm's layout (``layout`` "timm"; cls_token, pos_embed, patch_embed.proj,
blocks.N..., norm; no head) with ``timm_name``, ``patch_size``, ``image_size`` and ``pos_embed`` instead of width and
stem: ``timm.create_model(timm_name, img_size=image_size, patch_size=patch_size, num_classes=0)`` loads its
state_dict unchanged (``depth`` not None: a scaled-down ViT; add ``depth=depth``).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from fastpnr.system.checkpoint import atomic_save, load_failure
from fastpnr.errors import DataError

FORMAT, VERSION = "fastpnr-backbone", 1
PREFIX = "backbone."
GIVE = "give RUN/task{t}.pt (the model after task t) or RUN/checkpoint.pt, written by `fastpnr train`"


def _read(path: str | os.PathLike) -> dict:
    """The dict in a torch file, or one line saying why the file is not one."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p} is a folder; {GIVE}, e.g. {p / 'task0.pt'}")
    if not p.is_file():
        raise DataError(f"{p}: no such file; {GIVE}")
    try:
        try:  # task{t}.pt and exported backbones hold tensors and plain values only
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # checkpoint.pt also holds numpy RNG states
            obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise DataError(f"{p} is not a PyTorch file fastpnr can read: truncated or corrupt ({p.stat().st_size} bytes; "
                        f"torch.load: {load_failure(e)}); {GIVE}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{p} holds a {type(obj).__name__}, not a fastpnr model; {GIVE}")
    return obj


def _stem(model_cfg: dict) -> str:
    return "cifar" if model_cfg.get("cifar_stem", True) else "imagenet"


def backbone_state_dict(method_state: dict) -> dict:
    """The ``backbone.*`` entries of a method's state_dict without the prefix, as contiguous copies (a channels_last
    model's tensors are stored in NHWC strides; the copies are plain NCHW)."""
    return {k[len(PREFIX):]: v.detach().contiguous().clone() for k, v in method_state.items() if k.startswith(PREFIX)}


def build_resnet(meta: dict) -> nn.Module:
    """A fresh fastpnr ResNet of the shape ``meta`` describes (arch, width, stem, stem_padding)."""
    from fastpnr.models import build_backbone

    return build_backbone(meta["arch"], cifar_stem=meta["stem"] == "cifar", stem_padding=meta.get("stem_padding", 2),
                          width=meta["width"])


def build_from_meta(meta: dict) -> nn.Module:
    """A fresh fastpnr backbone of the shape ``meta`` describes: a ViT (layout "timm") or a ResNet."""
    if meta.get("layout") != "timm":
        return build_resnet(meta)
    from fastpnr.models import build_vit

    return build_vit(meta["arch"], meta["patch_size"], meta["image_size"], pos_embed=meta.get("pos_embed", "learned"),
                     depth=meta.get("depth"))


def _arch_meta(model: dict) -> dict:
    """What rebuilds the backbone of a run whose ``model`` config is ``model``."""
    from fastpnr.models import is_vit
    from fastpnr.models.vit import TIMM_NAMES

    arch = model.get("backbone", "resnet18")
    if is_vit(arch):
        return {"arch": arch, "layout": "timm", "timm_name": TIMM_NAMES[arch], "patch_size": int(model["patch_size"]),
                "image_size": int(model["image_size"]), "pos_embed": model.get("pos_embed", "learned"),
                "depth": model.get("depth")}
    return {"arch": arch, "width": int(model.get("width", 64)), "stem": _stem(model),
            "stem_padding": int(model.get("stem_padding", 2)), "layout": "torchvision"}


def backbone_from_model_file(path: str | os.PathLike) -> dict:
    """The exported form (module docstring) of a ``task{t}.pt`` or ``checkpoint.pt``."""
    obj = _read(path)
    p = Path(path)
    if obj.get("format") == FORMAT:
        raise DataError(f"{p} is already an exported backbone (arch {obj.get('arch')}); load it with "
                        "fastpnr.load_backbone, or export RUN/task{t}.pt")
    if "method" not in obj or "config" not in obj or not isinstance(obj["method"], dict):
        keys = ", ".join(sorted(map(str, obj))[:6])
        raise DataError(f"{p} is not a fastpnr model (no 'method' and 'config' entries; it holds {keys or 'nothing'}); "
                        f"{GIVE}")
    cfg = obj["config"]
    model = cfg.get("model", {})
    state = backbone_state_dict(obj["method"])
    if not state:
        raise DataError(f"{p}: its 'method' state has no backbone.* weights, so it is not a fastpnr model; {GIVE}")
    from fastpnr.data.registry import get_spec

    data = cfg.get("data", {})
    spec = get_spec(data.get("dataset", "cifar10"))
    meta = {"format": FORMAT, "version": VERSION, **_arch_meta(model)}
    fresh = build_from_meta(meta)
    expected = set(fresh.state_dict())
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise DataError(f"{p}: backbone keys differ from a fastpnr {meta['arch']} (extra {extra[:3]}, missing "
                        f"{missing[:3]}); {GIVE}")
    task = obj.get("task")
    if task is None and "next_task" in obj:  # checkpoint.pt: the model as it was when the checkpoint was written
        task = {"next_task": int(obj["next_task"]), "next_epoch": int(obj.get("next_epoch", 0)),
                "phase": obj.get("phase", "train")}
    size = data.get("crop_size") or data.get("image_size") or spec.native_size
    meta.update(feat_dim=int(fresh.feat_dim), state_dict=state,
                normalize={"mean": list(spec.mean), "std": list(spec.std), "image_size": size},
                source={"file": str(p.resolve()), "task": task, "method": cfg.get("method", {}).get("name"),
                        "regularizer": cfg.get("regularizer", {}).get("name"), "dataset": data.get("dataset")})
    return meta


def describe_source(meta: dict) -> str:
    """Which model an export holds, in words: "the model after task t", or where a checkpoint.pt stood (written at
    the start, after every epoch, when a task's training ends and after its evaluation)."""
    task = meta["source"]["task"]
    if not isinstance(task, dict):
        return f"the model after task {task}"
    n, epoch = task["next_task"], task["next_epoch"]
    if task["phase"] == "evaluate":
        where = f"the model after task {n} (checkpoint.pt written before that task's evaluation)"
    elif epoch == 0:
        where = "the untrained model (checkpoint.pt of a run that has not trained yet)" if n == 0 else \
            f"the model after task {n - 1} (checkpoint.pt)"
    else:
        where = f"checkpoint.pt in the middle of task {n} ({epoch} of its epochs done)"
    return f"{where}; for the model after task t export task{{t}}.pt"


def export_backbone(path: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the backbone of ``path`` (``task{t}.pt`` or ``checkpoint.pt``) to ``out``, atomically; its metadata."""
    meta = backbone_from_model_file(path)
    out = Path(out)
    if out.resolve() == Path(path).resolve():
        raise DataError(f"--out {out} is the model file itself; give another file name, e.g. backbone.pt")
    atomic_save(meta, out)
    return {k: v for k, v in meta.items() if k != "state_dict"}


def load_backbone(path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """A fastpnr ResNet or ViT holding the weights of ``path`` (an exported backbone, or a ``task{t}.pt`` /
    ``checkpoint.pt`` directly), in eval mode; ``.export_info`` holds the file's metadata (stem, normalize, ...)."""
    obj = _read(path)
    meta = obj if obj.get("format") == FORMAT else backbone_from_model_file(path)
    if meta.get("version", VERSION) > VERSION:
        raise DataError(f"{path}: exported by a newer fastpnr (format version {meta['version']}); allowed: "
                        f"<= {VERSION}")
    model = build_from_meta(meta)
    model.load_state_dict(meta["state_dict"])
    model.export_info = {k: v for k, v in meta.items() if k != "state_dict"}
    return model.to(map_location).eval()

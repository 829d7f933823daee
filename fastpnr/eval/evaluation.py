"""Evaluation: frozen-backbone features, linear probe, kNN, the accuracy matrix, average accuracy, forgetting.

Protocol (anchors §3.3): after each task a classifier over *all* classes is fit on the labelled train set
(no task masking, class-IL included) and evaluated on the whole test set and on each task's part of it;
a[i][j] = accuracy after task i on task j's test images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastpnr.system.atomic import atomic_file


# --------------------------------------------------------------------------------------------- features
def eval_batches(images: np.ndarray, indices: np.ndarray, batch_size: int, device, mean, std, size: int | None = None,
                 channels_last: bool = True):
    """Deterministic evaluation transform: uint8 HWC -> normalized float NCHW (resized to ``size`` if given)."""
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        x = torch.from_numpy(np.ascontiguousarray(images[idx]))
        if torch.device(device).type == "cuda":
            x = x.pin_memory()  # a pinned source makes the non_blocking copy asynchronous
        x = x.to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255)
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 1)
        x = (x - mean_t) / std_t
        yield x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def extract_features(backbone, images, indices, batch_size, device, mean, std, size=None, autocast_dtype=None):
    """Backbone features (N, feat_dim) float32 on ``device``, backbone in eval mode (restored afterwards)."""
    was_training = backbone.training
    backbone.eval()
    device_type = torch.device(device).type
    dtype = next(backbone.parameters()).dtype  # float64 weights (train.precision fp64) take float64 images
    feats = []
    try:
        for x in eval_batches(images, indices, batch_size, device, mean, std, size):
            with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                feats.append(backbone(x.to(dtype)).float())
    finally:
        backbone.train(was_training)
    return torch.cat(feats) if feats else torch.zeros(0, getattr(backbone, "feat_dim", 1), device=device)


# --------------------------------------------------------------------------------------------- classifiers
def linear_probe(train_x, train_y, num_classes: int, epochs: int = 100, lr: float = 0.1, batch_size: int = 512,
                 weight_decay: float = 0.0, seed: int = 0):
    """Fit a linear classifier on standardized frozen features with SGD (momentum 0.9) and a cosine schedule.

    Returns ``predict(x) -> logits``.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    mu = train_x.mean(0, keepdim=True)
    sd = train_x.std(0, keepdim=True).clamp_min(1e-6)
    xs = (train_x - mu) / sd
    with torch.random.fork_rng(devices=[]):  # the probe's init must not depend on (or disturb) the training RNG
        torch.manual_seed(seed)
        layer = torch.nn.Linear(train_x.shape[1], num_classes).to(train_x.device)
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    n = xs.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(train_x.device)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(layer(xs[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1

    @torch.no_grad()
    def predict(x):
        return layer((x - mu) / sd)

    return predict


@torch.no_grad()
def knn_predict(train_x, train_y, test_x, num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024):
    """Weighted kNN on cosine similarity (InstDisc): class score = sum over the k neighbours of exp(sim / T)."""
    train_n = F.normalize(train_x, dim=1)
    k = min(k, train_x.shape[0])
    scores = []
    for start in range(0, test_x.shape[0], chunk):
        sim = F.normalize(test_x[start:start + chunk], dim=1) @ train_n.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        one_hot = F.one_hot(train_y[top_idx], num_classes).float()
        scores.append((weights.unsqueeze(-1) * one_hot).sum(1))
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return float("nan")
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def part_accuracies(logits, labels, parts: list[np.ndarray]) -> list[float]:
    """Accuracy on each task's part of the test set; ``parts`` index into the rows of ``logits``."""
    out = []
    for idx in parts:
        t = torch.as_tensor(idx, dtype=torch.long, device=logits.device)
        out.append(accuracy(logits[t], labels[t]))
    return out


# --------------------------------------------------------------------------------------------- seeds and subsets
def eval_seed(train_seed: int, task: int, repeat: int = 0) -> int:
    """The one seed rule of every probe fit: after task ``task`` (-1: the random-init model), repeat ``repeat``.

    The run and ``fastpnr linear`` both use it, so the offline figure of task t equals the run's; repeat 0 is the
    seed of single-fit runs (``train.seed + task``).
    """
    return train_seed + task + 1000 * repeat


def mean_and_std(values) -> tuple:
    """Mean and sample standard deviation (ddof 1; 0 for one value) over the first axis, as plain floats/lists."""
    a = np.asarray(values, dtype=float)
    std = a.std(axis=0, ddof=1) if a.shape[0] > 1 else np.zeros_like(a[0])
    mean = a.mean(axis=0)
    return (mean.tolist(), std.tolist()) if a.ndim > 1 else (float(mean), float(std))


# --------------------------------------------------------------------------------------------- continual metrics
@dataclass
class ContinualMetrics:
    """Accuracy summaries of a (possibly partial) accuracy matrix a[i][j] in percent, rows i = after task i.

    A_k = mean_{j<=k} a[k][j] is the average accuracy over the tasks seen after task k.
    """

    matrix: list[list[float]]

    @property
    def tasks_done(self) -> int:
        return len(self.matrix)

    def _seen_average(self, k: int) -> float:
        return float(np.mean(self.matrix[k][: k + 1]))

    def final_average_accuracy(self) -> float:
        """A_T: mean_{j<=T} a[T][j] after the last finished task T (the tables' "average accuracy")."""
        return self._seen_average(self.tasks_done - 1)

    def average_incremental_accuracy(self) -> float:
        """mean over k of A_k (every row's average over the tasks seen so far)."""
        return float(np.mean([self._seen_average(k) for k in range(self.tasks_done)]))

    def average_accuracy(self) -> float:
        """Alias of ``final_average_accuracy`` (A_T), the name of older metrics files."""
        return self.final_average_accuracy()

    def final_accuracy_all_tasks(self) -> float:
        return float(np.mean(self.matrix[-1]))

    def forgetting(self) -> float:
        """mean over j < i of max_{l < i} a[l][j] - a[i][j], i = the last finished task (0 with one task)."""
        drops = self.forgetting_per_task()
        return float(np.mean(drops)) if drops else 0.0

    def forgetting_per_task(self) -> list[float]:
        """[max_{j <= l < i} a[l][j] - a[i][j] for each earlier task j < i], i = the last finished task."""
        i = self.tasks_done - 1
        return [float(max(self.matrix[l][j] for l in range(j, i)) - self.matrix[i][j]) for j in range(i)]

    def forward_transfer(self, random_init: list[float]) -> float | None:
        """mean over j >= 1 of a[j-1][j] - b_j, b_j the random-init model's accuracy on task j (None before task 1)."""
        i = self.tasks_done - 1
        if i == 0:
            return None
        return float(np.mean([self.matrix[j - 1][j] - random_init[j] for j in range(1, i + 1)]))


def save_heatmap(matrix: list[list[float]], path, title: str = "accuracy a[i][j] (%)", std=None) -> None:
    """A PNG heatmap of the accuracy matrix (rows: after task i, columns: task j); ``std`` (same shape) adds "± s"."""
    import matplotlib.pyplot as plt

    fig = heatmap_figure(matrix, title, std)
    with atomic_file(path) as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)


def heatmap_figure(matrix: list[list[float]], title: str = "accuracy a[i][j] (%)", std=None):
    """The matplotlib figure of ``save_heatmap`` (Agg backend): the matrix, its values, a colorbar."""
    import matplotlib

    matrix_np = np.asarray(matrix, dtype=float)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_rows, t_cols = matrix_np.shape
    # Constrained layout keeps the tick labels inside the figure; the title's padding keeps it clear of the
    # colorbar's top label ("100"), which sticks out above the axes.
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * t_cols, 1.4 + 0.8 * t_rows), layout="constrained")
    im = ax.imshow(matrix_np, cmap="viridis", vmin=0, vmax=max(100.0, float(np.nanmax(matrix_np)) if matrix_np.size else 100))
    for i in range(t_rows):
        for j in range(t_cols):
            v = matrix_np[i, j]
            if not np.isnan(v):
                label = f"{v:.1f}" if std is None else f"{v:.1f}\n±{std[i][j]:.1f}"
                ax.text(j, i, label, ha="center", va="center", color="w" if v < 60 else "k", fontsize=9)
    ax.set_xticks(range(t_cols), [f"task {j}" for j in range(t_cols)])
    ax.set_yticks(range(t_rows), [f"after {i}" for i in range(t_rows)])
    ax.set_title(title, pad=14)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("%")
    return fig


# --------------------------------------------------------------------------------------------- official protocol
# The anchors' offline linear evaluation (PNR main_linear.py, cassle/methods/linear.py, bash_files/linear/*):
# SGD lr by method (SimSiam 30.0 from CaSSLe; the GSG variants take their base method's), momentum 0.0 (PNR; CaSSLe
# 0.9), weight decay 0, batch 256, 100 epochs, MultiStep at 60 and 80 with gamma 0.1.
OFFICIAL_LINEAR_LR = {"simclr": 1.0, "mocov2plus": 3.0, "byol": 3.0, "barlow": 0.1, "vicreg": 0.3, "simsiam": 30.0,
                      "simsiam_gsg": 30.0, "byol_gsg": 3.0,
                      "mocov3": 3.0}  # facebookresearch/moco-v3 CONFIG.md: main_lincls.py --lr=3 for its ViTs
OFFICIAL_DECAY_AT = (0.6, 0.8)  # MultiStep milestones as shares of the epochs ([60, 80] of 100)


def official_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """The MultiStep schedule: base_lr x 0.1 per milestone (0.6 and 0.8 of ``epochs``, at least epoch 1) passed."""
    milestones = [max(1, int(share * epochs)) for share in OFFICIAL_DECAY_AT]
    return base_lr * 0.1 ** sum(epoch >= m for m in milestones)


def train_official_head(backbone, loader, feat_dim: int, num_classes: int, epochs: int, lr: float, momentum: float,
                        seed: int, autocast_dtype=None, progress: bool = False) -> torch.nn.Linear:
    """A Linear(feat_dim, C) trained on ``loader``'s augmented batches through the frozen backbone (eval mode)."""
    device = next(backbone.parameters()).device
    with torch.random.fork_rng(devices=[]):  # the head's init must not depend on (or disturb) the training RNG
        torch.manual_seed(seed)
        head = torch.nn.Linear(feat_dim, num_classes).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=0.0)
    was_training = backbone.training
    backbone.eval()
    bar = _epoch_bar(epochs, progress)
    try:
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = official_lr(lr, epoch, epochs)
            loader.set_epoch(epoch)
            for views, labels, _ in loader:
                with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                                     enabled=autocast_dtype is not None):
                    feats = backbone(views[0].to(next(backbone.parameters()).dtype))  # fp64 weights: fp64 images
                loss = F.cross_entropy(head(feats.float()), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if bar is not None:
                bar.update(1)
    finally:
        backbone.train(was_training)
        if bar is not None:
            bar.close()
    return head


def _epoch_bar(epochs: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=epochs, unit="epoch", desc="official linear", leave=False, dynamic_ncols=True)


def summarize_fits(fits: list[tuple[list[float], float]]) -> dict:
    """Per-task rows and whole-test accuracies of repeated probe fits -> their means, stds and the values per fit."""
    rows, tests = [list(r) for r, _ in fits], [float(t) for _, t in fits]
    row, row_std = mean_and_std(rows)
    test, test_std = mean_and_std(tests)
    return {"row": row, "row_std": row_std, "test_accuracy": test, "test_accuracy_std": test_std, "rows": rows,
            "tests": tests}

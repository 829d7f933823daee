"""Multi-block InfoNCE: the one contrastive primitive behind SimCLR, MoCo, their PNR versions and CaSSLe."""
from __future__ import annotations

from typing import Sequence

import torch

from fastpnr.errors import require
from fastpnr.losses._checks import check_2d, check_positive, check_same_shape


def _blocks(keys) -> list[torch.Tensor]:
    return [keys] if isinstance(keys, torch.Tensor) else list(keys)


def multi_block_infonce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    keys: Sequence[torch.Tensor] | torch.Tensor,
    temperature: float,
    exclude_diagonal: Sequence[bool] | None = None,
    positive_in_denominator: bool = True,
    backend: str = "torch",
) -> torch.Tensor:
    """Mean over rows of an InfoNCE whose negatives come from several key blocks.

    ``l_i = -a_i.p_i/t + log( [positive_in_denominator] e^{a_i.p_i/t} + sum_b sum_{k not excluded} e^{a_i.K_{b,k}/t} )``,
    ``loss = mean_i l_i``.

    Shapes: ``anchors``, ``positives`` (N, D); ``keys`` a list of blocks ``K_b`` (K_b, D) (a single tensor is one block).
    ``exclude_diagonal[b]`` drops the pair (i, i) of block b (that block must have N rows); default: nothing dropped.
    Nothing is normalized or detached here: callers decide. ``backend="torch"`` uses a masked logsumexp
    (numerically stable, the anchors subtract the detached row max to the same end); any other backend calls
    ``kernels.infonce`` with the same arguments.
    """
    blocks = _blocks(keys)
    exclude = [False] * len(blocks) if exclude_diagonal is None else [bool(e) for e in exclude_diagonal]
    check_same_shape(("anchors", "positives"), anchors, positives)
    check_positive("temperature", temperature)
    require(len(exclude) == len(blocks), "len(exclude_diagonal)", len(exclude), f"{len(blocks)} (one flag per key block)")
    require(len(blocks) > 0 or positive_in_denominator, "keys", "[]", "at least one block when positive_in_denominator=False")
    n, d = anchors.shape
    for b, (k, ex) in enumerate(zip(blocks, exclude)):
        check_2d(f"keys[{b}]", k)
        require(k.shape[1] == d, f"keys[{b}].shape", tuple(k.shape), f"(K, {d}) to match anchors.shape {(n, d)}")
        require(not ex or k.shape[0] == n, f"keys[{b}].shape", tuple(k.shape),
                f"({n}, {d}) rows = anchors rows, since exclude_diagonal[{b}] is True")

    if backend != "torch":
        from kernels import infonce  # lazy: Triton is optional

        return infonce(anchors, positives, blocks, temperature, exclude_diagonal=exclude,
                       positive_in_denominator=positive_in_denominator, backend=backend)

    pos = (anchors * positives).sum(dim=1) / temperature  # (N,)
    logits = [pos.unsqueeze(1)] if positive_in_denominator else []
    eye = None
    for k, ex in zip(blocks, exclude):
        block = anchors @ k.transpose(0, 1) / temperature  # (N, K_b)
        if ex:
            if eye is None:
                eye = torch.eye(n, dtype=torch.bool, device=anchors.device)
            block = block.masked_fill(eye, float("-inf"))
        logits.append(block)
    return (torch.logsumexp(torch.cat(logits, dim=1), dim=1) - pos).mean()

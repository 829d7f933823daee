"""Multi-block InfoNCE: fused similarity + streaming logsumexp in Triton, with a PyTorch reference.

For anchors ``a`` (N, D), positives ``p`` (N, D), key blocks ``K_b`` (M_b, D) and temperature ``t``::

    l_i  = -a_i.p_i/t + log( [positive_in_denominator] * exp(a_i.p_i/t)
                             + sum_b sum_{k not in excl(b, i)} exp(a_i.K_b,k/t) )
    loss = mean_i l_i                      (float32 scalar; float32 accumulation for float32/bfloat16 inputs)

where ``excl(b, i) = {i}`` when ``exclude_diagonal[b]`` (block b is then the anchors' own batch, M_b == N), else empty.

Gradients, with ``g`` the incoming scalar gradient, ``c = g / (N t)``, ``lse_i`` the log term and
``w_ibk = exp(a_i.K_b,k/t - lse_i)`` (zero on excluded entries), ``q_i = exp(a_i.p_i/t - lse_i)`` (zero when the
positive is not in the denominator)::

    dL/da_i    = c * ( (q_i - 1) p_i + sum_b sum_k w_ibk K_b,k )
    dL/dp_i    = c * (q_i - 1) a_i
    dL/dK_b,k  = c * sum_i w_ibk a_i

The Triton path never builds an N x M logits tensor. Forward: program (r, s) streams the s-th slice of a key block
past anchor tile r with an online max / sum-exp and stores one partial logsumexp per row; a combine pass folds the
partials (and the positive logit) into ``lse``. Splitting the keys across programs ("split-K") keeps a GPU busy when
N is small and M huge (MoCo-PNR: N=256, M=2 x 65,536). Backward: the tile logits are recomputed from ``lse``; dA is
summed from per-slice partials, each dK_b is written once by the program owning those keys. Extra memory: the
partials, at most MAX_SPLITS floats per row and block in the forward and MAX_SPLITS x D per row and block in the
backward, whatever M is. Everything is deterministic (no atomics). ``python -m kernels.aot`` compiles every launch
variant for sm_90 on any machine and reports registers, spills and shared memory.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

try:  # fastpnr's error type when available; kernels/ also works as a standalone package
    from fastpnr.errors import ConfigError
except ImportError:  # pragma: no cover - only without the fastpnr package
    class ConfigError(ValueError):
        """A configuration value is unknown or out of range."""

try:  # importing kernels must never fail because triton is missing; only backend="triton" needs it
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    triton = tl = None
    HAS_TRITON = False

BACKENDS = ("auto", "triton", "torch")


def _check_inputs(anchors, positives, keys, temperature, exclude_diagonal):
    """Validate shapes and options; return ``(keys, exclude)`` as tuples. One-line ConfigError on bad input."""
    if isinstance(keys, Tensor):  # a bare tensor would iterate over its rows
        keys = (keys,)
    keys = tuple(keys)
    if anchors.dim() != 2 or anchors.shape[0] < 1:
        raise ConfigError(f"anchors.shape={tuple(anchors.shape)} is invalid; allowed: (N, D) with N >= 1")
    n, d = anchors.shape
    if positives.shape != anchors.shape:
        raise ConfigError(f"positives.shape={tuple(positives.shape)} is invalid; allowed: anchors' shape {(n, d)}")
    if not keys:
        raise ConfigError("keys=() is invalid; allowed: a sequence of at least one (M_b, D) tensor")
    for b, k in enumerate(keys):
        if k.dim() != 2 or k.shape[1] != d:
            raise ConfigError(f"keys[{b}].shape={tuple(k.shape)} is invalid; allowed: (M_b, {d})")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"temperature={temperature!r} is invalid; allowed: a Python float > 0")
    exclude = (False,) * len(keys) if exclude_diagonal is None else tuple(bool(e) for e in exclude_diagonal)
    if len(exclude) != len(keys):
        raise ConfigError(f"exclude_diagonal={exclude_diagonal!r} is invalid; allowed: one bool per key block "
                          f"({len(keys)} blocks)")
    for b, (k, e) in enumerate(zip(keys, exclude)):
        if e and k.shape[0] != n:
            raise ConfigError(f"keys[{b}].shape={tuple(k.shape)} is invalid with exclude_diagonal[{b}]=True; "
                              f"allowed: ({n}, {d}), the anchors' own batch")
    return keys, exclude


def reference_infonce(anchors: Tensor, positives: Tensor, keys: Sequence[Tensor], temperature: float,
                      exclude_diagonal: Sequence[bool] | None = None,
                      positive_in_denominator: bool = True) -> Tensor:
    """The spec: materialize the (N, [1] + sum_b M_b) logits, mask, logsumexp. Computes in float32 (float64 stays)."""
    keys, exclude = _check_inputs(anchors, positives, keys, temperature, exclude_diagonal)
    acc = torch.promote_types(anchors.dtype, torch.float32)
    a, p = anchors.to(acc), positives.to(acc)
    pos = (a * p).sum(1) / temperature
    parts = [pos[:, None]] if positive_in_denominator else []
    for k, e in zip(keys, exclude):
        logits = a @ k.to(acc).T / temperature
        if e:
            eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(eye, float("-inf"))
        parts.append(logits)
    return (torch.logsumexp(torch.cat(parts, 1), 1) - pos).mean()


if HAS_TRITON:
    # Kernels only exist when triton imports. Masked logits are -inf (exp gives exactly 0); running maxima start at a
    # finite -1e30 instead of -inf so that exp(m_old - m_new) is never exp(-inf + inf) = nan.
    #
    # Parallelism: MoCo-PNR has few anchors (N=256: 4 row tiles) and many keys (2 x 65,536). One program per row tile
    # would leave an H100's 132 SMs idle, so the forward and the anchor gradient also split the keys ("split-K", as
    # flash-decoding does): program (r, s) covers row tile r and the s-th contiguous slice of the key block, and
    # writes a partial result that a second, tiny pass combines (a partial logsumexp per row, or a partial dA).

    @triton.jit
    def _key_tile_logits(a, K, keys, end, rows, cols, dim, stride_k, scale,
                         EXCLUDE_DIAG: tl.constexpr, INPUT_PRECISION: tl.constexpr):
        """One key tile against the anchor tile ``a``: ``(x, k)`` with the logits x = a.k * scale, -inf where masked
        (keys at or past ``end``; the diagonal when EXCLUDE_DIAG), and the loaded key tile k (zero rows when masked)."""
        key_ok = keys < end
        k = tl.load(K + keys[:, None].to(tl.int64) * stride_k + cols[None, :],
                    mask=key_ok[:, None] & (cols[None, :] < dim), other=0.0)
        x = tl.dot(a, tl.trans(k), input_precision=INPUT_PRECISION) * scale
        valid = key_ok[None, :]
        if EXCLUDE_DIAG:
            valid = valid & (keys[None, :] != rows[:, None])
        return tl.where(valid, x, float("-inf")), k

    @triton.jit
    def _infonce_fwd_partial_kernel(
        A, K, PART,
        n_rows, n_keys, dim, stride_a, stride_k, scale, keys_per_split, part_offset,
        EXCLUDE_DIAG: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Program (r, s): logsumexp over keys [s*keys_per_split, (s+1)*keys_per_split) of rows tile r, stored in
        PART[part_offset + s, rows] (-inf when every key of the slice is masked)."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        split = tl.program_id(1)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < n_rows
        a = tl.load(A + rows[:, None].to(tl.int64) * stride_a + cols[None, :],
                    mask=row_ok[:, None] & (cols[None, :] < dim), other=0.0)
        begin = split * keys_per_split
        end = tl.minimum(begin + keys_per_split, n_keys)
        m = tl.full([BLOCK_N], -1.0e30, tl.float32)
        s = tl.zeros([BLOCK_N], tl.float32)
        for start in range(begin, end, BLOCK_M):
            x, k = _key_tile_logits(a, K, start + tl.arange(0, BLOCK_M), end, rows, cols, dim, stride_k, scale,
                                    EXCLUDE_DIAG, INPUT_PRECISION)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
            m = m_new
        tl.store(PART + (part_offset + split).to(tl.int64) * n_rows + rows, m + tl.log(s), mask=row_ok)

    @triton.jit
    def _infonce_combine_kernel(
        A, P, PART, POS, LSE,
        n_rows, n_parts, dim, stride_a, stride_p, scale,
        POS_IN_DENOM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        """Per row: the positive logit POS = a.p * scale and LSE = logsumexp([POS if POS_IN_DENOM] + partials)."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < n_rows
        tile_ok = row_ok[:, None] & (cols[None, :] < dim)
        a = tl.load(A + rows[:, None].to(tl.int64) * stride_a + cols[None, :], mask=tile_ok, other=0.0)
        p = tl.load(P + rows[:, None].to(tl.int64) * stride_p + cols[None, :], mask=tile_ok, other=0.0)
        pos = tl.sum(a.to(tl.float32) * p.to(tl.float32), axis=1) * scale
        tl.store(POS + rows, pos, mask=row_ok)
        if POS_IN_DENOM:
            m = pos
            s = tl.full([BLOCK_N], 1.0, tl.float32)
        else:
            m = tl.full([BLOCK_N], -1.0e30, tl.float32)
            s = tl.zeros([BLOCK_N], tl.float32)
        for start in range(0, n_parts, BLOCK_P):
            parts = start + tl.arange(0, BLOCK_P)
            x = tl.load(PART + parts[:, None].to(tl.int64) * n_rows + rows[None, :],
                        mask=(parts[:, None] < n_parts) & row_ok[None, :], other=float("-inf"))
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[None, :]), axis=0)
            m = m_new
        tl.store(LSE + rows, m + tl.log(s), mask=row_ok)  # s == 0 (everything excluded) gives -inf, as the spec

    @triton.jit
    def _infonce_bwd_anchor_kernel(
        A, K, LSE, COEF, WS,
        n_rows, n_keys, dim, stride_a, stride_k, scale, keys_per_split, part_offset,
        EXCLUDE_DIAG: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Program (r, s): WS[part_offset + s, rows, :] = COEF * sum over the s-th key slice of w(i, k) * K_k,
        w the softmax weight recomputed from LSE. WS is (parts, n_rows, dim) float32, contiguous."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        split = tl.program_id(1)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < n_rows
        tile_ok = row_ok[:, None] & (cols[None, :] < dim)
        a = tl.load(A + rows[:, None].to(tl.int64) * stride_a + cols[None, :], mask=tile_ok, other=0.0)
        lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
        begin = split * keys_per_split
        end = tl.minimum(begin + keys_per_split, n_keys)
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start in range(begin, end, BLOCK_M):
            # masked before exp: an excluded diagonal can sit far above lse and would overflow to inf; rows past
            # n_rows have lse = +inf, so their weights are exactly 0
            x, k = _key_tile_logits(a, K, start + tl.arange(0, BLOCK_M), end, rows, cols, dim, stride_k, scale,
                                    EXCLUDE_DIAG, INPUT_PRECISION)
            w = tl.exp(x - lse[:, None])
            # bf16 inputs: the weights go to bf16 for the tensor-core dot, as flash attention does
            acc += tl.dot(w.to(k.dtype), k, input_precision=INPUT_PRECISION)
        ws = WS + ((part_offset + split).to(tl.int64) * n_rows + rows[:, None]) * dim + cols[None, :]
        tl.store(ws, acc * tl.load(COEF), mask=tile_ok)

    @triton.jit
    def _infonce_bwd_keys_kernel(
        A, K, LSE, COEF, DK,
        n_rows, n_keys, dim, stride_a, stride_k, stride_dk, scale,
        EXCLUDE_DIAG: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """One program per BLOCK_M keys of one block: DK = COEF * sum_i softmax weight(i, k) * a_i (written once)."""
        keys = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        key_ok = keys < n_keys
        tile_ok = key_ok[:, None] & (cols[None, :] < dim)
        k = tl.load(K + keys[:, None].to(tl.int64) * stride_k + cols[None, :], mask=tile_ok, other=0.0)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, n_rows, BLOCK_N):
            rows = start + tl.arange(0, BLOCK_N)
            row_ok = rows < n_rows
            a = tl.load(A + rows[:, None].to(tl.int64) * stride_a + cols[None, :],
                        mask=row_ok[:, None] & (cols[None, :] < dim), other=0.0)
            lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
            x = tl.dot(k, tl.trans(a), input_precision=INPUT_PRECISION) * scale  # (BLOCK_M, BLOCK_N)
            if EXCLUDE_DIAG:  # masked before exp, as in the anchor kernel
                x = tl.where(keys[:, None] != rows[None, :], x, float("-inf"))
            # no other mask: rows past n_rows have lse = +inf (weight exactly 0); keys past n_keys are never stored
            w = tl.exp(x - lse[None, :])
            acc += tl.dot(w.to(a.dtype), a, input_precision=INPUT_PRECISION)
        tl.store(DK + keys[:, None].to(tl.int64) * stride_dk + cols[None, :],
                 (acc * tl.load(COEF)).to(DK.dtype.element_ty), mask=tile_ok)


def _kernel(fn, device: torch.device):
    """The kernel to launch on ``device``. CPU tensors run in Triton's interpreter, which must be switched on before
    triton is imported (``tl.sum`` and friends are decorated at import time), so say so instead of failing deep."""
    if device.type == "cuda":
        return fn
    if type(fn).__name__ != "InterpretedFunction":
        raise RuntimeError(f'backend="triton" on {device.type} tensors needs TRITON_INTERPRET=1 set before triton '
                           "is imported; or use CUDA tensors, or backend=\"torch\"")
    return fn


# Split-K: aim for this many programs per launch (two resident programs per SM fill an H100 with these tiles), but
# never more than MAX_SPLITS key slices per block, which bounds the backward's partial-dA workspace to
# MAX_SPLITS * N * D floats per block whatever the number of keys. On CPU a small target still makes the tests
# cover several slices, including a short last one.
PROGRAMS_PER_SM = 2
MAX_SPLITS = 64
CPU_TARGET_PROGRAMS = 8


def _input_precision(dtype: torch.dtype) -> str:
    """float32 dots follow torch's own matmul setting: near-fp32 3xTF32 tensor-core dots under the default "highest"
    precision, single TF32 when the user allowed it (``torch.set_float32_matmul_precision("high")``). Plain fp32
    FMA dots ("ieee") are not used on GPU: at these tiles they spill ~10 KB per thread on sm_90 (kernels.aot).
    bf16/fp16 inputs use bf16/fp16 tensor cores whatever this says."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"


# GPU tiles per (dot kind, BLOCK_D): (BLOCK_N, BLOCK_M, num_warps, num_stages). Chosen with `python -m kernels.aot`
# (sm_90 cubins built on a CPU machine, 2026-11-23, triton 3.6.0/3.7.1/3.9.0): TF32 and 16-bit dots spill nothing,
# keep shared memory well under 227 KB and two or more resident programs per SM. 3xTF32 (fp32 inputs under torch's
# "highest" precision) needs three times the operand registers: at D=128 only its dK kernel spills (16-152 bytes per
# thread by triton version), the least of the tiles tried; at D=256 ~100 bytes. Not yet tuned by timing on a GPU.
_GPU_TILES = {
    ("tf32x3", 128): (32, 64, 8, 1),
    ("tf32", 128): (64, 64, 4, 2),
    ("16bit", 128): (64, 64, 4, 3),
    ("tf32x3", 256): (16, 16, 8, 1),
    ("tf32", 256): (32, 32, 8, 1),
    ("16bit", 256): (64, 32, 8, 2),
}
_WIDEST_TILES = (32, 32, 8, 1)  # BLOCK_D > 256


def _launch_config(device: torch.device, dim: int, dtype: torch.dtype) -> dict:
    """Tile sizes (constexpr) and launch options. The CPU interpreter runs numpy per tile op: small tiles keep the
    tests fast and still cover several tiles; on GPU, the ``_GPU_TILES`` entry for the dot kind and width."""
    block_d = max(16, triton.next_power_of_2(dim))  # tl.dot needs every dimension >= 16
    precision = _input_precision(dtype)
    cfg = dict(BLOCK_D=block_d, INPUT_PRECISION=precision)
    if device.type != "cuda":
        return dict(cfg, BLOCK_N=16, BLOCK_M=16)
    kind = precision if dtype == torch.float32 else "16bit"
    width = 128 if block_d <= 128 else block_d
    block_n, block_m, warps, stages = _GPU_TILES.get((kind, width), _WIDEST_TILES)
    return dict(cfg, BLOCK_N=block_n, BLOCK_M=block_m, num_warps=warps, num_stages=stages)


def _target_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return CPU_TARGET_PROGRAMS
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count  # cached, no sync


def _key_splits(n_rows: int, n_keys: int, cfg: dict, target: int) -> tuple[int, int]:
    """``(splits, keys_per_split)`` for one key block: enough slices that (row tiles x slices) reaches ``target``
    programs, each slice a whole number of key tiles, no empty slice."""
    row_tiles = triton.cdiv(n_rows, cfg["BLOCK_N"])
    key_tiles = triton.cdiv(n_keys, cfg["BLOCK_M"])
    splits = max(1, min(key_tiles, MAX_SPLITS, triton.cdiv(target, row_tiles)))
    tiles_per_split = triton.cdiv(key_tiles, splits)
    return triton.cdiv(key_tiles, tiles_per_split), tiles_per_split * cfg["BLOCK_M"]


def _require_triton():
    if not HAS_TRITON:
        raise ImportError('backend="triton" needs triton, which is not importable; pip install triton')


def _lastdim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _infonce_forward(anchors, positives, keys, scale, exclude, pos_in_denom):
    """Partial logsumexps per (key slice, row), then one combine pass; return ``(pos, lse)``, each (N,) float32,
    and the per-block split plan the backward reuses."""
    n, d = anchors.shape
    cfg = _launch_config(anchors.device, d, anchors.dtype)
    target = _target_programs(anchors.device)
    plan = [_key_splits(n, k.shape[0], cfg, target) for k in keys]
    n_parts = sum(splits for splits, _ in plan)
    part = torch.empty(n_parts, n, dtype=torch.float32, device=anchors.device)  # O(N) floats: <= 64 per row/block
    kernel = _kernel(_infonce_fwd_partial_kernel, anchors.device)
    row_tiles = triton.cdiv(n, cfg["BLOCK_N"])
    offset = 0
    for k, e, (splits, per_split) in zip(keys, exclude, plan):
        kernel[(row_tiles, splits)](anchors, k, part, n, k.shape[0], d, anchors.stride(0), k.stride(0), scale,
                                    per_split, offset, EXCLUDE_DIAG=e, **cfg)
        offset += splits
    pos = torch.empty(n, dtype=torch.float32, device=anchors.device)
    lse = torch.empty(n, dtype=torch.float32, device=anchors.device)
    _kernel(_infonce_combine_kernel, anchors.device)[(row_tiles,)](
        anchors, positives, part, pos, lse, n, n_parts, d, anchors.stride(0), positives.stride(0), scale,
        POS_IN_DENOM=pos_in_denom, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], BLOCK_P=16)
    return pos, lse, plan


def _infonce_backward(anchors, positives, keys, pos, lse, coef, scale, exclude, pos_in_denom, plan, need):
    """Gradients for (anchors, positives, *keys); ``need`` flags which; ``coef`` = grad_output / (N t), (1,)."""
    n, d = anchors.shape
    cfg = _launch_config(anchors.device, d, anchors.dtype)
    # (q_i - 1) * c: the positive logit's weight, O(N) floats, no host sync
    q = torch.exp(pos - lse) if pos_in_denom else torch.zeros_like(pos)
    pos_coef = ((q - 1.0) * coef)[:, None]
    d_anchors = d_positives = None
    if need[1]:
        d_positives = (pos_coef * anchors.float()).to(positives.dtype)
    if need[0]:
        # partial dA per key slice, summed once: deterministic (no atomics); bounded by MAX_SPLITS * N * D per block
        ws = torch.empty(sum(s for s, _ in plan), n, d, dtype=torch.float32, device=anchors.device)
        kernel = _kernel(_infonce_bwd_anchor_kernel, anchors.device)
        row_tiles = triton.cdiv(n, cfg["BLOCK_N"])
        offset = 0
        for k, e, (splits, per_split) in zip(keys, exclude, plan):
            kernel[(row_tiles, splits)](anchors, k, lse, coef, ws, n, k.shape[0], d, anchors.stride(0),
                                        k.stride(0), scale, per_split, offset, EXCLUDE_DIAG=e, **cfg)
            offset += splits
        da = ws.sum(0) if ws.shape[0] > 1 else ws[0]
        d_anchors = da.add_(pos_coef * positives.float()).to(anchors.dtype)
    d_keys = []
    kernel = _kernel(_infonce_bwd_keys_kernel, anchors.device)
    for k, e, k_needs in zip(keys, exclude, need[2:]):
        if not k_needs:  # keys without grad (queues, frozen outputs) cost no gradient compute
            d_keys.append(None)
            continue
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # row-major, as the kernel writes it
        grid = (triton.cdiv(k.shape[0], cfg["BLOCK_M"]),)
        kernel[grid](anchors, k, lse, coef, dk, n, k.shape[0], d,
                     anchors.stride(0), k.stride(0), dk.stride(0), scale, EXCLUDE_DIAG=e, **cfg)
        d_keys.append(dk)
    return d_anchors, d_positives, d_keys


class InfoNCEFunction(torch.autograd.Function):
    """Autograd wrapper: saves inputs plus (pos, lse), 2N floats; backward scales by grad_output on the device."""

    @staticmethod
    def forward(ctx, anchors, positives, temperature, exclude, pos_in_denom, *keys):
        anchors, positives = _lastdim_contiguous(anchors), _lastdim_contiguous(positives)
        keys = tuple(_lastdim_contiguous(k) for k in keys)
        scale = 1.0 / temperature
        pos, lse, plan = _infonce_forward(anchors, positives, keys, scale, exclude, pos_in_denom)
        ctx.save_for_backward(anchors, positives, pos, lse, *keys)
        ctx.scale, ctx.exclude, ctx.pos_in_denom, ctx.plan = scale, exclude, pos_in_denom, plan
        return (lse - pos).mean()

    @staticmethod
    def backward(ctx, grad_output):
        anchors, positives, pos, lse, *keys = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], *ctx.needs_input_grad[5:])
        # a tensor, never .item(): no host sync, so the step stays CUDA-graph capturable
        coef = (grad_output.float() * (ctx.scale / anchors.shape[0])).reshape(1)
        d_a, d_p, d_keys = _infonce_backward(anchors, positives, keys, pos, lse, coef, ctx.scale,
                                             ctx.exclude, ctx.pos_in_denom, ctx.plan, need)
        return (d_a, d_p, None, None, None, *d_keys)


def infonce(anchors: Tensor, positives: Tensor, keys: Sequence[Tensor], temperature: float,
            exclude_diagonal: Sequence[bool] | None = None, positive_in_denominator: bool = True,
            backend: str = "auto") -> Tensor:
    """Mean InfoNCE over N anchor rows against their positives and several key blocks (equation: module docstring).

    anchors, positives: (N, D); keys: sequence of (M_b, D) (a single tensor is one block); float32 or bfloat16,
    one tensor may appear in several roles (autograd sums). Returns a float32 scalar.
    backend: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "torch" (``reference_infonce``), "auto" (triton on
    CUDA tensors when importable, else torch).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is invalid; allowed: {', '.join(BACKENDS)}")
    keys, exclude = _check_inputs(anchors, positives, keys, temperature, exclude_diagonal)
    if backend == "auto":
        backend = "triton" if anchors.is_cuda and HAS_TRITON else "torch"
    if backend == "torch":
        return reference_infonce(anchors, positives, keys, temperature, exclude, positive_in_denominator)
    _require_triton()
    tensors = (anchors, positives, *keys)
    if any(t.device != anchors.device for t in tensors):
        raise ConfigError(f"devices={sorted({str(t.device) for t in tensors})} is invalid; allowed: one device")
    dtype = anchors.dtype
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"dtype={dtype} is invalid; allowed: torch.float32, torch.bfloat16, torch.float16")
    # a differentiable cast, so mixed inputs still get gradients in their own dtype
    anchors, positives, *keys = (t.to(dtype) for t in tensors)
    return InfoNCEFunction.apply(anchors, positives, float(temperature), exclude, bool(positive_in_denominator),
                                 *keys)

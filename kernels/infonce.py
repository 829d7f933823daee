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

The Triton path never builds an N x M logits tensor: the forward streams key tiles with an online max / sum-exp per
row and keeps only ``lse`` and the positive logits (2N floats); the backward recomputes tile logits from ``lse``.
Everything is deterministic (no atomics): one launch per key block, each accumulating into its own rows.
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
    # Kernels only exist when triton imports. Masked logits are -inf (exp gives exactly 0); the running max starts
    # at a finite -1e30 instead of -inf so that exp(m_old - m_new) is never exp(-inf + inf) = nan.

    @triton.jit
    def _infonce_fwd_kernel(
        A, P, K, POS, LSE,
        n_rows, n_keys, dim, stride_a, stride_p, stride_k, scale,
        FIRST: tl.constexpr, POS_IN_DENOM: tl.constexpr, EXCLUDE_DIAG: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """One program per BLOCK_N anchor rows; folds key block K into the running LSE of those rows.

        FIRST: also compute the positive logits (stored in POS) and start the sum from them (or from nothing);
        otherwise resume from the LSE the previous block's launch stored.
        """
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < n_rows
        tile_ok = row_ok[:, None] & (cols[None, :] < dim)
        a = tl.load(A + rows[:, None].to(tl.int64) * stride_a + cols[None, :], mask=tile_ok, other=0.0)
        if FIRST:
            p = tl.load(P + rows[:, None].to(tl.int64) * stride_p + cols[None, :], mask=tile_ok, other=0.0)
            pos = tl.sum(a.to(tl.float32) * p.to(tl.float32), axis=1) * scale
            tl.store(POS + rows, pos, mask=row_ok)
            if POS_IN_DENOM:
                m = pos
                s = tl.full([BLOCK_N], 1.0, tl.float32)
            else:
                m = tl.full([BLOCK_N], -1.0e30, tl.float32)
                s = tl.zeros([BLOCK_N], tl.float32)
        else:
            lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
            m = tl.maximum(lse, -1.0e30)                 # lse = -inf (nothing summed yet) -> empty sum
            s = tl.where(lse > -1.0e30, 1.0, 0.0)
        for start in range(0, n_keys, BLOCK_M):
            keys = start + tl.arange(0, BLOCK_M)
            key_ok = keys < n_keys
            k = tl.load(K + keys[:, None].to(tl.int64) * stride_k + cols[None, :],
                        mask=key_ok[:, None] & (cols[None, :] < dim), other=0.0)
            x = tl.dot(a, tl.trans(k), input_precision=INPUT_PRECISION) * scale
            valid = key_ok[None, :]
            if EXCLUDE_DIAG:
                valid = valid & (keys[None, :] != rows[:, None])
            x = tl.where(valid, x, float("-inf"))
            m_new = tl.maximum(m, tl.max(x, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
            m = m_new
        tl.store(LSE + rows, m + tl.log(s), mask=row_ok)  # s == 0 (everything excluded) gives -inf, as the spec

    @triton.jit
    def _infonce_bwd_anchor_kernel(
        A, K, LSE, COEF, DA,
        n_rows, n_keys, dim, stride_a, stride_k, stride_da, scale,
        EXCLUDE_DIAG: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """One program per BLOCK_N anchor rows: DA (float32) += COEF * sum_k softmax weight(i, k) * K_k."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < n_rows
        tile_ok = row_ok[:, None] & (cols[None, :] < dim)
        a = tl.load(A + rows[:, None].to(tl.int64) * stride_a + cols[None, :], mask=tile_ok, other=0.0)
        lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start in range(0, n_keys, BLOCK_M):
            keys = start + tl.arange(0, BLOCK_M)
            key_ok = keys < n_keys
            k = tl.load(K + keys[:, None].to(tl.int64) * stride_k + cols[None, :],
                        mask=key_ok[:, None] & (cols[None, :] < dim), other=0.0)
            x = tl.dot(a, tl.trans(k), input_precision=INPUT_PRECISION) * scale
            valid = row_ok[:, None] & key_ok[None, :]
            if EXCLUDE_DIAG:
                valid = valid & (keys[None, :] != rows[:, None])
            # mask before exp: an excluded diagonal can sit far above lse and would overflow to inf
            w = tl.exp(tl.where(valid, x, float("-inf")) - lse[:, None])
            # bf16 inputs: the weights go to bf16 for the tensor-core dot, as flash attention does
            acc += tl.dot(w.to(k.dtype), k, input_precision=INPUT_PRECISION)
        da_ptrs = DA + rows[:, None].to(tl.int64) * stride_da + cols[None, :]
        da = tl.load(da_ptrs, mask=tile_ok, other=0.0) + acc * tl.load(COEF)
        tl.store(da_ptrs, da, mask=tile_ok)

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
            valid = key_ok[:, None] & row_ok[None, :]
            if EXCLUDE_DIAG:
                valid = valid & (keys[:, None] != rows[None, :])
            w = tl.exp(tl.where(valid, x, float("-inf")) - lse[None, :])
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


def _launch_config(device: torch.device, dim: int, dtype: torch.dtype) -> dict:
    """Tile sizes (constexpr) and launch options. The CPU interpreter runs numpy per tile op: small tiles keep the
    tests fast and still cover several tiles; on GPU, tiles sized so the fp32 accumulators fit in registers."""
    block_d = max(16, triton.next_power_of_2(dim))  # tl.dot needs every dimension >= 16
    cfg = dict(BLOCK_D=block_d, INPUT_PRECISION="ieee" if dtype == torch.float32 else "tf32")
    if device.type != "cuda":
        return dict(cfg, BLOCK_N=16, BLOCK_M=16)
    if block_d <= 128:
        return dict(cfg, BLOCK_N=64, BLOCK_M=64, num_warps=4, num_stages=3)
    if block_d <= 256:
        return dict(cfg, BLOCK_N=64, BLOCK_M=32, num_warps=8, num_stages=2)
    return dict(cfg, BLOCK_N=32, BLOCK_M=32, num_warps=8, num_stages=1)


def _require_triton():
    if not HAS_TRITON:
        raise ImportError('backend="triton" needs triton, which is not importable; pip install triton')


def _lastdim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _infonce_forward(anchors, positives, keys, scale, exclude, pos_in_denom):
    """Launch the forward per key block; return ``(pos, lse)``, each (N,) float32."""
    n, d = anchors.shape
    cfg = _launch_config(anchors.device, d, anchors.dtype)
    kernel = _kernel(_infonce_fwd_kernel, anchors.device)
    pos = torch.empty(n, dtype=torch.float32, device=anchors.device)
    lse = torch.empty(n, dtype=torch.float32, device=anchors.device)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
    for b, (k, e) in enumerate(zip(keys, exclude)):
        kernel[grid](anchors, positives, k, pos, lse, n, k.shape[0], d,
                     anchors.stride(0), positives.stride(0), k.stride(0), scale,
                     FIRST=b == 0, POS_IN_DENOM=pos_in_denom, EXCLUDE_DIAG=e, **cfg)
    return pos, lse


def _infonce_backward(anchors, positives, keys, pos, lse, coef, scale, exclude, pos_in_denom, need):
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
        da = pos_coef * positives.float()  # float32 accumulator across key blocks, cast once at the end
        kernel = _kernel(_infonce_bwd_anchor_kernel, anchors.device)
        grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
        for k, e in zip(keys, exclude):
            kernel[grid](anchors, k, lse, coef, da, n, k.shape[0], d,
                         anchors.stride(0), k.stride(0), da.stride(0), scale, EXCLUDE_DIAG=e, **cfg)
        d_anchors = da.to(anchors.dtype)
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
        pos, lse = _infonce_forward(anchors, positives, keys, scale, exclude, pos_in_denom)
        ctx.save_for_backward(anchors, positives, pos, lse, *keys)
        ctx.scale, ctx.exclude, ctx.pos_in_denom = scale, exclude, pos_in_denom
        return (lse - pos).mean()

    @staticmethod
    def backward(ctx, grad_output):
        anchors, positives, pos, lse, *keys = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], *ctx.needs_input_grad[5:])
        # a tensor, never .item(): no host sync, so the step stays CUDA-graph capturable
        coef = (grad_output.float() * (ctx.scale / anchors.shape[0])).reshape(1)
        d_a, d_p, d_keys = _infonce_backward(anchors, positives, keys, pos, lse, coef, ctx.scale,
                                             ctx.exclude, ctx.pos_in_denom, need)
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

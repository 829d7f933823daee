import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import multi_block_infonce
from tests.losses._ref import assert_close, assert_values_and_grads, dot, log_sum_exp, mean, one_line, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


def ref_infonce(a, p, blocks, t, exclude, pos_in_denom):
    rows = []
    for i in range(a.shape[0]):
        pos = dot(a[i], p[i]) / t
        terms = [pos] if pos_in_denom else []
        for block, ex in zip(blocks, exclude):
            for k in range(block.shape[0]):
                if not (ex and k == i):
                    terms.append(dot(a[i], block[k]) / t)
        rows.append(-pos + log_sum_exp(terms))
    return mean(rows)


@pytest.mark.parametrize("n,sizes,exclude,pos_in_denom", [
    (5, [5, 7], [True, False], True),
    (5, [5, 7], [True, False], False),
    (7, [7, 7], [True, True], False),
    (7, [3], None, True),
])
def test_matches_loop_reference(n, sizes, exclude, pos_in_denom):
    a, p = rand(n, 6, seed=1), rand(n, 6, seed=2)
    blocks = [rand(k, 6, seed=10 + b) for b, k in enumerate(sizes)]
    ours = multi_block_infonce(a, p, blocks, 0.7, exclude_diagonal=exclude, positive_in_denominator=pos_in_denom)
    flags = exclude or [False] * len(blocks)
    ref = ref_infonce(a, p, blocks, 0.7, flags, pos_in_denom)
    assert_values_and_grads(ours, ref, [a, p, *blocks], **TOL)


def test_single_tensor_is_one_block():
    a, p, k = rand(5, 4, seed=1), rand(5, 4, seed=2), rand(9, 4, seed=3)
    assert_close(multi_block_infonce(a, p, k, 0.3), multi_block_infonce(a, p, [k], 0.3, exclude_diagonal=[False]))


def test_excluded_diagonal_is_dropped():
    """One row, its only key excluded: the denominator is the positive alone, so the loss is 0 whatever the key."""
    a, p, k = rand(1, 4, seed=1), rand(1, 4, seed=2), rand(1, 4, seed=3, scale=50.0)
    loss = multi_block_infonce(a, p, [k], 0.5, exclude_diagonal=[True], positive_in_denominator=True)
    assert_close(loss, torch.zeros((), dtype=torch.float64), **TOL)
    assert_close(torch.autograd.grad(loss, k)[0], torch.zeros_like(k), **TOL)


def test_stable_for_large_logits_in_float32():
    """t = 0.01 on unit vectors gives logits ~100, where a naive exp overflows in float32."""
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=1)
    k = torch.nn.functional.normalize(torch.randn(11, 8, generator=g), dim=1)
    ours = multi_block_infonce(a, a, [k, a], 0.01, exclude_diagonal=[False, True], positive_in_denominator=True)
    ref = ref_infonce(a.double(), a.double(), [k.double(), a.double()], 0.01, [False, True], True)
    assert torch.isfinite(ours)
    assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)


def test_other_backend_dispatches_to_kernel(fake_kernel):
    a, p, k = rand(5, 4, seed=1), rand(5, 4, seed=2), rand(5, 4, seed=3)
    out = multi_block_infonce(a, p, k, 0.2, exclude_diagonal=[True], positive_in_denominator=False, backend="triton")
    assert out.item() == 1.0 and len(fake_kernel) == 1
    call = fake_kernel[0]
    assert call["anchors"] is a and call["positives"] is p and len(call["keys"]) == 1 and call["keys"][0] is k
    assert call["temperature"] == 0.2 and list(call["exclude_diagonal"]) == [True]
    assert call["positive_in_denominator"] is False and call["backend"] == "triton"


def test_torch_backend_does_not_import_kernel(fake_kernel):
    multi_block_infonce(rand(3, 2, seed=1), rand(3, 2, seed=2), [rand(4, 2, seed=3)], 0.2)
    assert fake_kernel == []


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.0),
    dict(temperature=-1.0),
    dict(keys=[torch.zeros(4, 6)], exclude_diagonal=[True]),    # excluded block needs N rows
    dict(keys=[torch.zeros(5, 3)]),                               # wrong D
    dict(keys=[torch.zeros(5, 6)], exclude_diagonal=[True, False]),
    dict(positives=torch.zeros(4, 6)),
    dict(anchors=torch.zeros(5)),
])
def test_bad_arguments_raise_one_line(kwargs):
    args = dict(anchors=torch.zeros(5, 6), positives=torch.zeros(5, 6), keys=[torch.zeros(5, 6)], temperature=0.1)
    args.update(kwargs)
    with pytest.raises(ConfigError) as exc:
        multi_block_infonce(**args)
    assert one_line(exc)

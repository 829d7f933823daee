import sys
import types

import pytest


@pytest.fixture
def fake_kernel(monkeypatch):
    """Install a stand-in ``kernels`` module whose ``infonce`` records its call and returns a marker value."""
    calls = []

    def infonce(anchors, positives, keys, temperature, exclude_diagonal=None, positive_in_denominator=True,
                backend="torch"):
        calls.append(dict(anchors=anchors, positives=positives, keys=keys, temperature=temperature,
                          exclude_diagonal=exclude_diagonal, positive_in_denominator=positive_in_denominator,
                          backend=backend))
        return anchors.new_tensor(float(len(calls)))

    module = types.ModuleType("kernels")
    module.infonce = infonce
    monkeypatch.setitem(sys.modules, "kernels", module)
    return calls

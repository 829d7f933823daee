"""Run the Triton kernels in Triton's interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is imported: triton decorates ``tl.sum`` and friends at import time.
This conftest loads before the kernel tests import ``kernels``; if an earlier test module of the same session
already imported triton without it, drop those modules so the kernel tests import a fresh, interpreted triton
(triton's compiled extension ``triton._C`` is kept: it does not depend on the flag).
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    _tl = sys.modules.get("triton.language")
    if _tl is not None and type(getattr(_tl, "sum", None)).__name__ != "InterpretedFunction":
        for _name in [m for m in sys.modules if m.split(".")[0] in ("triton", "kernels")
                      and not m.startswith("triton._C")]:
            del sys.modules[_name]

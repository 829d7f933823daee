"""ER and LUMP: the replay strategies, fine-tuning plus a reservoir buffer (``fastpnr/regularizers/replay_loader.py`` does the work).

- ``er``, experience replay: every step a batch of buffered images (freshly augmented views) joins the current batch,
  and the SSL loss sees both (mammoth's ER, the standard replay baseline of the continual-SSL papers).
- ``lump``, Lifelong Unsupervised Mixup (Madaan et al., ICLR 2022; divyam3897/UCL models/mixup.py): every view is
  mixed with the same view of a buffer batch, x~ = lam x_cur + (1 - lam) x_buf, lam ~ Beta(0.4, 0.4) once per batch,
  and the SSL loss sees the mixed views only.

Replay combines with every other strategy through ``regularizer.replay`` (``--regularizer cassle --regularizer.replay
er``: CaSSLe + ER, the frozen model then sees the same extended or mixed batch); ``er`` and ``lump`` are fine-tuning
with it set.
"""
from __future__ import annotations


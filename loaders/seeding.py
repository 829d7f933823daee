"""Seeds and orders that are a pure function of (seed, epoch): what makes a resumed run see the same batches."""
from __future__ import annotations

import numpy as np
import torch

PERMUTATION, AUGMENTATION = 0, 1  # independent random streams of one epoch


def epoch_seed(seed: int, epoch: int, stream: int, *more: int) -> int:
    """A 63-bit seed mixed from the integers (numpy SeedSequence), for `torch.Generator.manual_seed`."""
    words = np.random.SeedSequence([int(seed), int(epoch), int(stream), *map(int, more)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def epoch_generator(seed: int, epoch: int, stream: int, device) -> torch.Generator:
    """A fresh generator on `device` seeded from (seed, epoch, stream)."""
    return torch.Generator(device=torch.device(device)).manual_seed(epoch_seed(seed, epoch, stream))

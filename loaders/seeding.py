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


class EpochBatches:
    """What every loader shares: ``set_epoch`` (epoch e's batches are a function of (seed, e)) and ``len()``
    over ``self.subset`` with ``self.batch_size`` and ``self.drop_last``."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        from fastpnr.errors import require

        require(isinstance(epoch, int) and epoch >= 0, "epoch", epoch, "an int >= 0")
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = len(self.subset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

"""Independent random streams: training functions, validation functions and test functions never overlap."""

from __future__ import annotations

import numpy as np
import torch

STREAMS = {"train": 0, "validation": 1, "test": 2, "init": 3}


def stream_seed(seed: int, stream: str, index: int = 0) -> int:
    """A 63-bit seed for ``stream``, derived with numpy's SeedSequence so different streams are independent."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(STREAMS[stream], index)).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def generator(seed: int, stream: str, index: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(seed, stream, index))
    return gen

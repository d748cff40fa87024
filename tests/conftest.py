"""Shared test configuration: a small hypothesis profile for CI and a seeded ``generator`` fixture."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Small and deadline-free: solver calls (SVDs, a few Adam steps) have jittery first-call timings.
settings.register_profile("ci", max_examples=25, deadline=None)
settings.register_profile("stress", max_examples=400, deadline=None)  # HYPOTHESIS_PROFILE=stress, locally
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests use tiny tensors, where intra-op threads only add synchronisation; on a shared 2-core machine
# that spinning made the suite ~30x slower. One thread keeps it fast and the timings stable.
torch.set_num_threads(1)


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator seeded 0: the only source of randomness a test should need."""
    return torch.Generator().manual_seed(0)

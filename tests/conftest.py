"""Shared test helpers: one torch thread per test process, and scripts run in-process."""

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from threads, and on a shared 2-core machine two OpenMP threads
    # can be ten times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(module, argv):
    """`module.main(argv)` in a fresh Accelerate state, as a new process would have it."""
    try:
        return module.main([str(a) for a in argv])
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()

"""VLM tests run on one thread (tiny tensors; the machine is shared)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread_here(one_thread):  # tests/conftest.py
    yield

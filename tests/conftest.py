"""Test-session setup.

Without CUDA, Triton kernels can only run in the interpreter, which must be chosen before anything
imports triton (lightning does): set it here, first.
"""

import os

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

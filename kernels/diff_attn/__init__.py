"""Fused differential attention (Diff Transformer) in Triton.

``diff_attention`` (autograd), ``diff_attention_decode`` (split-K, one query token) and ``supports``
are the contract used by ``zoo.nn.functional.diff_attention(backend="triton")``;
``diff_attention_reference`` is the naive fp32 reference the kernels are tested against.

Supported: fp16 / bf16 / fp32 inputs (fp32 accumulation), q/k head dim <= 128 and v head dim <= 256
(any size; padded to a power of two >= 16 inside), GQA/MQA by index, bottom-right causal masks with
Tq != Tk, bool key-padding masks, lambda broadcastable to [B, H, Tq, 1] (differentiable), any
last-dim-contiguous strides (int64 addressing: offsets past 2^31 elements are fine). A kernel that
does not fit the GPU runs the call on the caller's ``fallback``, else raises named (see ``ops``).
Not supported (``supports`` says why, functional falls back to SDPA): attention dropout, larger head
dims, more than 65535 heads (a CUDA grid axis), float64, devices other than CUDA (CPU only under
``TRITON_INTERPRET=1``, set before triton is imported), bf16 under the interpreter.
"""

from .ops import DiffAttentionFunction, diff_attention, diff_attention_decode, interpret_requested, supports
from .reference import diff_attention_reference

__all__ = [
    "DiffAttentionFunction", "diff_attention", "diff_attention_decode", "diff_attention_reference",
    "interpret_requested", "supports",
]

"""Adapt a pretrained softmax model with differential attention: DEX, DiffLoRA, OpAmp.

``apply_adapter(model, method, ...)`` wraps attention layers of any zoo model in place. A wrapper
adopts the base layer's submodules and parameters under their original names and keeps its own
weights under ``<layer>.adapter.*``, so

* the base state dict is unchanged (``model.state_dict()`` minus ``*.adapter.*`` loads into the plain
  model), and :func:`adapter_state_dict` is exactly the new weights;
* :func:`save_adapter` / :func:`load_adapter` move adapter weights only, with a fingerprint of the base
  (config + checksums of a few base tensors) that refuses the wrong base by name.

Methods (METHODS.md section 2):

* ``dex``: ``O_h = A_h V_h - lambda_t A_h (V_h W_n)`` on selected heads, computed on the output side
  (``(A V) W_n = A (V W_n)``), so it works on any attention type and the base op is unchanged.
  ``lambda_t = anneal(step) * lambda``; paper leaves the schedule open; we use a linear ramp of
  ``anneal`` from 0 to 1 over ``anneal_steps`` (advanced by :func:`step_adapters`, which the LM
  task calls every training step) times a learnable ``lambda`` (init ``lambda_max``). At step 0
  the model is exactly the pretrained one.
* ``difflora``: positive map from the pretrained Q, K plus LoRA; negative map from low-rank
  ``Q2 = X A_q B_q``, ``K2 = X A_k B_k``; learnable scalar lambda per layer, init ``lambda_init``
  (default 0, so the start is the pretrained function; paper says "near 0").
  :func:`merge_adapters` folds the LoRA into ``q_proj``/``k_proj`` for inference.
* ``opamp``: two adapted maps ``A1``, ``A2`` (pretrained Q, K plus their own LoRA each) combined as
  ``g_d (A1 - A2) + g_c (A1 + A2) / 2`` with ``g_c = common_gain`` and ``g_d = cmrr * g_c``.
  Paper leaves the gains' parametrization open; we fix them (CMRR is a hyper-parameter) and
  zero-init the LoRA up-projections, so the start is ``g_c * A``: the pretrained map for
  ``common_gain=1``.

``difflora`` and ``opamp`` run on :func:`zoo.nn.diff_attention` (fused kernel where it applies:
OpAmp's output is ``c1 * (A1 V - (c2/c1) A2 V)``); ``dex`` keeps the base layer's op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from zoo.hub import tensor_problems
from zoo.nn.attention import AttentionBase, KVCache
from zoo.nn.functional import diff_attention

METHODS = ("dex", "difflora", "opamp")
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
def is_adapter_key(name: str) -> bool:
    """True for state-dict / parameter names of adapter weights (``...adapter.*``)."""
    return ".adapter." in f".{name}"


_RUNTIME_FIELDS = {"dropout", "attn_dropout", "attn_backend", "max_seq_len", "drop_path"}


def _check_int(method: str, name: str, value: Any, minimum: int) -> None:
    """Raise a ValueError naming ``method``'s setting ``name`` unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{method} {name} must be an integer >= {minimum}, got {value!r}")


# ------------------------------------------------------------------------------------- wrappers


class AdaptedAttention(nn.Module):
    """Wraps a base attention layer; subclasses add ``self.adapter`` and implement ``forward``.

    The base layer's children and direct parameters are registered here under their own names, so
    state-dict keys of the base stay as they were (``...attn.q_proj.weight``).
    """

    method = "base"

    def __init__(self, base: AttentionBase) -> None:
        super().__init__()
        object.__setattr__(self, "base", base)  # not a submodule: its tensors are adopted below
        for name, mod in base.named_children():
            self.add_module(name, mod)
        for name, p in base.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in base.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.n_heads, self.n_kv_heads, self.head_dim = base.n_heads, base.n_kv_heads, base.head_dim

    def _sync(self) -> AttentionBase:
        """The base layer, pointed at the wrapper's current submodules and tensors: a load that replaces
        Parameter objects (``load_state_dict(assign=True)``) rebinds them on the wrapper only."""
        base = self.base
        base.training = self.training
        for store in ("_modules", "_parameters", "_buffers"):
            ours, theirs = getattr(self, store), getattr(base, store)
            for name in theirs:
                if name in ours:
                    theirs[name] = ours[name]
        return base

    def _finish(self, out: Tensor) -> Tensor:
        B, H, tq, dv = out.shape
        return self.base.o_proj(out.transpose(1, 2).reshape(B, tq, H * dv))


class DexAdapter(nn.Module):
    """DEX weights of one layer: ``W_n`` per selected head, learnable lambda, annealing factor."""

    def __init__(self, n_sel: int, head_dim: int, lambda_max: float, init_std: float) -> None:
        super().__init__()
        self.w_n = nn.Parameter(torch.randn(n_sel, head_dim, head_dim) * init_std)
        self.lam = nn.Parameter(torch.tensor(float(lambda_max)))
        self.register_buffer("anneal", torch.tensor(0.0))  # saved: the schedule's position travels


class DexAttention(AdaptedAttention):
    """DEX on the selected heads of a pretrained layer (see module docstring)."""

    method = "dex"

    def __init__(self, base: AttentionBase, heads: Optional[Sequence[int]] = None, lambda_max: float = 0.5,
                 anneal_steps: int = 1000, init_std: float = 0.02) -> None:
        super().__init__(base)
        sel = list(range(base.n_heads)) if heads is None else sorted(int(h) for h in heads)
        bad = [h for h in sel if not 0 <= h < base.n_heads]
        if bad or not sel:
            raise ValueError(f"dex heads {bad or sel} out of range for a layer with {base.n_heads} heads")
        if len(set(sel)) != len(sel):
            raise ValueError(f"dex heads {list(heads)} name a head twice; list each head once")
        if isinstance(anneal_steps, float) and anneal_steps.is_integer():
            anneal_steps = int(anneal_steps)  # a YAML `1e4` is the float 10000.0
        _check_int("dex", "anneal_steps", anneal_steps, 0)
        self.register_buffer("heads", torch.tensor(sel, dtype=torch.long), persistent=False)
        self.anneal_steps = int(anneal_steps)
        self.adapter = DexAdapter(len(sel), base.head_dim, lambda_max, init_std)
        self.set_step(0)  # 0 (the pretrained function), or 1 for anneal_steps 0

    def lambda_t(self) -> Tensor:
        return self.adapter.anneal * self.adapter.lam

    def set_step(self, step: int) -> None:
        # anneal_steps 0: no ramp, the full lambda from the first step
        self.adapter.anneal.fill_(min(1.0, step / self.anneal_steps) if self.anneal_steps > 0 else 1.0)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, *, key_mask: Optional[Tensor] = None,
                cache: Optional[KVCache] = None, query_mask: Optional[Tensor] = None) -> Tensor:
        base = self._sync()
        base._check_cache(x, context, key_mask, cache)
        base._check_query_mask(x, query_mask)
        start = cache.pos if cache is not None else 0
        q, k, v = base._project(x, context)
        extra = {} if query_mask is None else {"query_mask": query_mask}  # as the base layer's forward passes it
        out = base._attend(q, k, v, x, start, context is None, key_mask, cache, **extra)  # [B, H, Tq, hd]
        sel = out[:, self.heads]
        noise = torch.einsum("bhtd,hde->bhte", sel, self.adapter.w_n.to(sel.dtype))
        out = out.index_copy(1, self.heads, sel - self.lambda_t().to(sel.dtype) * noise)
        return self._finish(out)


class LoRA(nn.Module):
    """Low-rank map ``x -> (x A^T) B^T * scale``; ``A`` random, ``B`` zero (or random if asked)."""

    def __init__(self, inp: int, out: int, rank: int, scale: float = 1.0, zero_b: bool = True) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, inp) / math.sqrt(inp))
        self.b = nn.Parameter(torch.zeros(out, rank) if zero_b else torch.randn(out, rank) / math.sqrt(rank))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.a.T.to(x.dtype)) @ self.b.T.to(x.dtype) * self.scale

    def delta(self) -> Tensor:
        """The dense weight update ``scale * B A`` (``[out, in]``), in float32 at least (bf16 factors would round their
        product, then the scaled product, before the merge rounds the sum; float64 factors keep float64)."""
        wide = torch.promote_types(self.b.dtype, torch.float32)
        return (self.b.to(wide) @ self.a.to(wide)) * self.scale


def _need_vanilla(base: AttentionBase, method: str) -> None:
    if base.attn_type != "vanilla":
        raise ValueError(
            f"{method} adapts softmax (vanilla) attention; this layer is {base.attn_type!r}. "
            "Use method 'dex' (works on any type) or start from a vanilla model"
        )


def _heads(t: Tensor, n: int, hd: int) -> Tensor:
    B, T, _ = t.shape
    return t.view(B, T, n, hd).transpose(1, 2)


class DiffLoRAAdapter(nn.Module):
    def __init__(self, base: AttentionBase, rank: int, alpha: float, neg_rank: int, lambda_init: float) -> None:
        super().__init__()
        hd, H, Hkv = base.head_dim, base.n_heads, base.n_kv_heads
        self.q_lora = LoRA(base.dim, H * hd, rank, alpha / rank)
        self.k_lora = LoRA(base.kv_dim, Hkv * hd, rank, alpha / rank)
        self.q_neg = LoRA(base.dim, H * hd, neg_rank, 1.0, zero_b=False)
        self.k_neg = LoRA(base.kv_dim, Hkv * hd, neg_rank, 1.0, zero_b=False)
        self.lam = nn.Parameter(torch.tensor(float(lambda_init)))


class DiffLoRAAttention(AdaptedAttention):
    """DiffLoRA (arXiv 2507.23588) on a pretrained vanilla layer (see module docstring)."""

    method = "difflora"

    def __init__(self, base: AttentionBase, rank: int = 8, alpha: float = 16.0, neg_rank: Optional[int] = None,
                 lambda_init: float = 0.0) -> None:
        _need_vanilla(base, "difflora")
        _check_int("difflora", "rank", rank, 1)
        if neg_rank is not None:
            _check_int("difflora", "neg_rank", neg_rank, 1)
        super().__init__(base)
        self.adapter = DiffLoRAAdapter(base, rank, alpha, rank if neg_rank is None else neg_rank, lambda_init)
        self.merged = False
        self._premerge: dict[int, tuple[Tensor, int]] = {}  # half-precision q/k weights before a merge

    def merge(self) -> None:
        """Fold the positive-term LoRA into ``q_proj``/``k_proj`` (inference speed, same outputs).

        The sum is taken in float32 (float64 weights: float64) and rounded once to the weights' dtype (bf16 weights:
        the fp32 merge cast to bf16). Half-precision weights keep their pre-merge values (one copy of
        ``q_proj``/``k_proj``), which :meth:`unmerge` puts back exactly: subtracting the delta again would move about a
        third of a bf16 base's entries by one rounding step, and the export after an unmerge would not hold the base
        it started from."""
        if not self.merged:
            self._sync()
            self._premerge = {}
            with torch.no_grad():
                for w, lora in self._merge_pairs():
                    # (an inference tensor has no version counter to tell a later change by: unmerge subtracts)
                    keep = torch.finfo(w.dtype).bits < 32 and not w.is_inference()
                    original = w.detach().clone() if keep else None
                    w.copy_(w + lora.delta())  # in the wider of the two dtypes (float32 at least)
                    if original is not None:
                        self._premerge[id(w)] = (original, w._version)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._sync()
            with torch.no_grad():
                for w, lora in self._merge_pairs():
                    original, version = self._premerge.get(id(w), (None, None))
                    # untouched since the merge: put it back (an inference tensor tracks no version)
                    if original is not None and not w.is_inference() and w._version == version:
                        w.copy_(original)
                    else:  # changed since (trained, loaded into): take the delta out of what it is now
                        w.copy_(w - lora.delta())
            self._premerge = {}
            self.merged = False

    def _merge_pairs(self) -> list[tuple[Tensor, LoRA]]:
        return [(self.base.q_proj.weight, self.adapter.q_lora), (self.base.k_proj.weight, self.adapter.k_lora)]

    def forward(self, x: Tensor, context: Optional[Tensor] = None, *, key_mask: Optional[Tensor] = None,
                cache: Optional[KVCache] = None, query_mask: Optional[Tensor] = None) -> Tensor:
        base, ad = self._sync(), self.adapter
        base._check_cache(x, context, key_mask, cache)
        base._check_query_mask(x, query_mask)  # row-wise outputs: nothing to leave out
        src = x if context is None else context
        start, is_self = (cache.pos if cache is not None else 0), context is None
        q, k, v = base._project(x, context)
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if not self.merged:
            q = q + _heads(ad.q_lora(x), H, hd)
            k = k + _heads(ad.k_lora(src), Hkv, hd)
        q2, k2 = _heads(ad.q_neg(x), H, hd), _heads(ad.k_neg(src), Hkv, hd)
        q, q2 = base._rope(q, start, is_self), base._rope(q2, start, is_self)
        k, k2 = base._rope(k, start, is_self), base._rope(k2, start, is_self)
        if cache is not None:
            k, k2, v = cache.update(k, k2, v)
        out = diff_attention(q, q2, k, k2, v, ad.lam, **base._op_kwargs(key_mask))
        return self._finish(out)


class OpAmpAdapter(nn.Module):
    def __init__(self, base: AttentionBase, rank: int, alpha: float) -> None:
        super().__init__()
        hd, H, Hkv = base.head_dim, base.n_heads, base.n_kv_heads
        s = alpha / rank
        self.q1, self.q2 = LoRA(base.dim, H * hd, rank, s), LoRA(base.dim, H * hd, rank, s)
        self.k1, self.k2 = LoRA(base.kv_dim, Hkv * hd, rank, s), LoRA(base.kv_dim, Hkv * hd, rank, s)


class OpAmpAttention(AdaptedAttention):
    """OpAmp adaptation: ``g_d (A1 - A2) + g_c (A1 + A2)/2`` with ``g_d = cmrr * g_c`` (module docstring)."""

    method = "opamp"

    def __init__(self, base: AttentionBase, rank: int = 8, alpha: float = 16.0, cmrr: float = 8.0,
                 common_gain: float = 1.0) -> None:
        _need_vanilla(base, "opamp")
        _check_int("opamp", "rank", rank, 1)
        if cmrr < 0 or common_gain <= 0:
            raise ValueError(f"opamp needs cmrr >= 0 and common_gain > 0, got cmrr={cmrr}, common_gain={common_gain}")
        super().__init__(base)
        self.cmrr, self.common_gain = float(cmrr), float(common_gain)
        self.adapter = OpAmpAdapter(base, rank, alpha)

    def gains(self) -> tuple[float, float]:
        """(coefficient of A1 V, coefficient of A2 V) = (g_d + g_c/2, g_d - g_c/2)."""
        gc = self.common_gain
        gd = self.cmrr * gc
        return gd + gc / 2, gd - gc / 2

    def forward(self, x: Tensor, context: Optional[Tensor] = None, *, key_mask: Optional[Tensor] = None,
                cache: Optional[KVCache] = None, query_mask: Optional[Tensor] = None) -> Tensor:
        base, ad = self._sync(), self.adapter
        base._check_cache(x, context, key_mask, cache)
        base._check_query_mask(x, query_mask)  # row-wise outputs: nothing to leave out
        src = x if context is None else context
        start, is_self = (cache.pos if cache is not None else 0), context is None
        q, k, v = base._project(x, context)
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q1, q2 = q + _heads(ad.q1(x), H, hd), q + _heads(ad.q2(x), H, hd)
        k1, k2 = k + _heads(ad.k1(src), Hkv, hd), k + _heads(ad.k2(src), Hkv, hd)
        q1, q2 = base._rope(q1, start, is_self), base._rope(q2, start, is_self)
        k1, k2 = base._rope(k1, start, is_self), base._rope(k2, start, is_self)
        if cache is not None:
            k1, k2, v = cache.update(k1, k2, v)
        c1, c2 = self.gains()
        # a Python float: diff_attention keeps it in the maps' precision (a float32 tensor rounded a float64 layer's)
        return self._finish(c1 * diff_attention(q1, q2, k1, k2, v, c2 / c1, **base._op_kwargs(key_mask)))


_WRAPPERS: dict[str, type[AdaptedAttention]] = {"dex": DexAttention, "difflora": DiffLoRAAttention, "opamp": OpAmpAttention}


# ------------------------------------------------------------------------------- model-level API


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every attention layer (base or adapted) in forward order."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, AdaptedAttention) or (isinstance(m, AttentionBase) and not _inside_adapted(model, name)):
            out.append((name, m))
    return out


def _inside_adapted(model: nn.Module, name: str) -> bool:
    parent = name.rpartition(".")[0]
    while parent:
        if isinstance(model.get_submodule(parent), AdaptedAttention):
            return True
        parent = parent.rpartition(".")[0]
    return False


def _config_dict(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return {}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUNTIME_FIELDS}


# Half-precision copies of a base (model.to(torch.bfloat16)) must still match an adapter trained on
# the fp32 base: a fingerprint also records each tensor's checksums after rounding to these dtypes.
_HALF_DTYPES = (torch.bfloat16, torch.float16)


def _stats(t: Tensor) -> dict[str, float]:
    t = t.detach().double()
    return {"sum": float(t.sum()), "sumsq": float((t * t).sum())}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def base_fingerprint(model: nn.Module, n_tensors: int = 4) -> dict[str, Any]:
    """Identify the base a set of adapter weights belongs to: class, config, checksums of a few tensors.

    The checksummed tensors skip ``q_proj``/``k_proj`` (DiffLoRA's merge edits them) and adapter
    weights; they are picked evenly over the state dict (embeddings, middle layers, final norm).
    Each records its dtype, its sum and sum of squares as stored, and (``"rounded"``) the same after
    rounding to each coarser half dtype, so :func:`check_base` compares a bf16/fp16 copy of the base
    exactly instead of with a tolerance loose enough to pass a different base.
    """
    state = model.state_dict()
    names = [k for k in state if not is_adapter_key(k) and not k.endswith(("q_proj.weight", "k_proj.weight"))
             and state[k].is_floating_point()]
    pick = sorted({names[round(i * (len(names) - 1) / max(n_tensors - 1, 1))] for i in range(n_tensors)}) if names else []
    sums = {}
    for k in pick:
        t = state[k].detach()
        eps = torch.finfo(t.dtype).eps
        rounded = {_dtype_name(d): _stats(t.to(d)) for d in _HALF_DTYPES if torch.finfo(d).eps > eps}
        sums[k] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype), **_stats(t), "rounded": rounded}
    cfg = _config_dict(model)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()
    cls = _class_of(model)
    return {"model_class": f"{cls.__module__}.{cls.__qualname__}", "config": cfg,
            "config_sha256": digest, "checksums": sums}


def _checksum_problem(name: str, t: Tensor, ref: Mapping[str, Any]) -> Optional[str]:
    """Why tensor ``t`` (as the model holds it) is not the adapter base's tensor ``name``, or None.

    Exact comparison (up to float64 summation order) at a common dtype when the fingerprint allows
    it: the model's dtype among the recorded roundings, or the fingerprint's own coarser dtype (a
    float32 model, adapter trained on its bf16 copy). Otherwise (fingerprints without dtypes, or
    bf16 against fp16) a bound on rounding: every element may move by ``eps`` of its size, so the
    sum by ``eps * sum|x|`` and the sum of squares by ``2 * eps * sum x^2``, eps the coarser dtype's.
    """
    ours_dtype = _dtype_name(t.dtype)
    ref_name = ref.get("dtype", "float32")  # fingerprints before dtypes were recorded came from fp32 bases
    ref_dtype = getattr(torch, str(ref_name), None)
    ref_dtype = ref_dtype if isinstance(ref_dtype, torch.dtype) and ref_dtype.is_floating_point else None
    candidates = {ref_name: ref, **ref.get("rounded", {})}
    exact = {"sum": 0.0, "sumsq": 0.0}
    if ours_dtype in candidates:
        target, ours, tol = candidates[ours_dtype], _stats(t), exact
    elif ref_dtype is not None and torch.finfo(ref_dtype).eps > torch.finfo(t.dtype).eps:
        target, ours, tol = ref, _stats(t.to(ref_dtype)), exact
    else:
        finfo = [torch.finfo(t.dtype)] + ([torch.finfo(ref_dtype)] if ref_dtype is not None else [])
        eps = max(f.eps for f in finfo)
        tiny = max(f.smallest_normal for f in finfo) * t.numel()  # subnormals round absolutely, not relatively
        x = t.detach().double()
        target, ours = ref, _stats(t)
        tol = {"sum": eps * (float(x.abs().sum()) + tiny), "sumsq": 2 * eps * (float((x * x).sum()) + tiny)}
    for stat in ("sum", "sumsq"):
        if not math.isclose(ours[stat], target[stat], rel_tol=1e-5, abs_tol=1e-6 + tol[stat]):
            # a wider copy of the base's half-precision rounding (the export of a bf16-true run, read back in
            # float32) holds exactly the rounding's values
            for half, stats in ref.get("rounded", {}).items():
                dtype = getattr(torch, half, None)
                if (isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype != t.dtype
                        and torch.equal(t.to(dtype).to(t.dtype), t)
                        and all(math.isclose(_stats(t)[k], stats[k], rel_tol=1e-5, abs_tol=1e-6) for k in ("sum", "sumsq"))):
                    return None
            return (f"tensor {name}: checksum {stat} adapter base={target[stat]:.6g} "
                    f"model={ours[stat]:.6g} ({ours_dtype})")
    return None


def check_base(model: nn.Module, fingerprint: Mapping[str, Any], source: str = "adapter") -> None:
    """Raise ``ValueError`` naming the first differences between ``model`` and the adapter's base.

    The base may be held in another float dtype than the one the adapter was trained on (see
    :func:`_checksum_problem`).
    """
    ours = base_fingerprint(model)
    problems = []
    if fingerprint.get("model_class") != ours["model_class"]:
        problems.append(f"model class: adapter base={fingerprint.get('model_class')} model={ours['model_class']}")
    theirs_cfg = fingerprint.get("config", {})
    diffs = [f"{k}: adapter base={theirs_cfg.get(k)!r} model={ours['config'].get(k)!r}"
             for k in sorted(set(theirs_cfg) | set(ours["config"])) if theirs_cfg.get(k) != ours["config"].get(k)]
    if diffs:
        problems.append("config " + "; ".join(diffs[:8]))
    if not problems:
        state = model.state_dict()
        for k, ref in fingerprint.get("checksums", {}).items():
            if k not in state:
                problems.append(f"tensor {k} of the adapter's base is missing from the model")
                continue
            t = state[k].detach()
            if list(t.shape) != ref["shape"]:
                problems.append(f"tensor {k}: adapter base shape {tuple(ref['shape'])} vs model {tuple(t.shape)}")
                continue
            problem = _checksum_problem(k, t, ref)
            if problem:
                problems.append(problem)
    if problems:
        raise ValueError(
            f"{source} was trained on a different base model: " + "; ".join(problems)
            + ". Load it onto the base it was trained on (same config and weights)"
        )


def apply_adapter(
    model: nn.Module,
    method: str,
    layers: Optional[Sequence[int]] = None,
    freeze_base: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Wrap attention layers of ``model`` in place with ``method`` (``dex`` | ``difflora`` | ``opamp``).

    ``layers``: indices into the model's attention layers in forward order (default all).
    ``kwargs`` go to the wrapper: dex ``heads, lambda_max, anneal_steps, init_std``; difflora
    ``rank, alpha, neg_rank, lambda_init``; opamp ``rank, alpha, cmrr, common_gain``.
    With ``freeze_base`` only adapter weights train. Returns ``model``.
    """
    if method not in _WRAPPERS:
        raise ValueError(f"unknown adapter method {method!r}; choose one of {list(METHODS)}")
    if getattr(model, "adapter_config", None):
        raise ValueError(
            f"model already carries a {model.adapter_config['method']!r} adapter; use a fresh base model"
        )
    found = attention_layers(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no zoo attention layers to adapt")
    if layers is not None and any(isinstance(i, bool) or int(i) != i for i in layers):
        raise ValueError(f"adapter layers must be integer indices, got {list(layers)}")
    idx = list(range(len(found))) if layers is None else [int(i) for i in layers]
    bad = [i for i in idx if not 0 <= i < len(found)]
    if bad:
        raise ValueError(f"adapter layers {bad} out of range: the model has {len(found)} attention layers")
    twice = sorted({i for i in idx if idx.count(i) > 1})
    if twice:  # a second wrap of one layer replaced the first adapter's weights, silently
        raise ValueError(f"adapter layers {twice} listed more than once in {idx}")
    fingerprint = base_fingerprint(model)
    for i in idx:
        name, base = found[i]
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = _WRAPPERS[method](base, **kwargs)
        ref = next(base.parameters())
        wrapped.to(device=ref.device)  # the adapter and the wrapper's own buffers (DEX's head index)
        setattr(parent, attr, wrapped)
    model.adapter_config = {"method": method, "layers": idx, "kwargs": _jsonable(kwargs), "base": fingerprint}
    if freeze_base:
        mark_only_adapters_trainable(model)
    return model


def _jsonable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, (tuple, range)) else v) for k, v in kwargs.items()}


def adapted_layers(model: nn.Module) -> list[AdaptedAttention]:
    return [m for m in model.modules() if isinstance(m, AdaptedAttention)]


def mark_only_adapters_trainable(model: nn.Module) -> None:
    """``requires_grad`` on adapter weights only (``*.adapter.*``); everything else frozen."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_key(name))


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights (and DEX's annealing position) only, keyed as in ``model.state_dict()``."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if is_adapter_key(k)}


def base_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The base weights only, loadable into the plain model; refuses merged DiffLoRA layers."""
    if any(getattr(m, "merged", False) for m in adapted_layers(model)):
        raise ValueError("DiffLoRA adapters are merged into q_proj/k_proj; call unmerge_adapters(model) first")
    return {k: v for k, v in model.state_dict().items() if not is_adapter_key(k)}


def step_adapters(model: nn.Module, step: int) -> None:
    """Advance step-dependent schedules (DEX's lambda annealing) to ``step``."""
    for m in adapted_layers(model):
        if hasattr(m, "set_step"):
            m.set_step(step)


def merge_adapters(model: nn.Module) -> None:
    """Fold DiffLoRA's positive-term LoRA into the base projections (outputs unchanged)."""
    layers = adapted_layers(model)
    if not layers or any(not hasattr(m, "merge") for m in layers):
        raise ValueError("merge_adapters needs DiffLoRA adapters (dex and opamp have nothing to fold)")
    for m in layers:
        m.merge()


def unmerge_adapters(model: nn.Module) -> None:
    """Undo :func:`merge_adapters`."""
    for m in adapted_layers(model):
        if hasattr(m, "unmerge"):
            m.unmerge()


def remove_adapters(model: nn.Module) -> nn.Module:
    """Put the base attention layers back (unmerging first); returns ``model``."""
    unmerge_adapters(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, AdaptedAttention):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, m._sync())
    model.adapter_config = None
    return model


def save_adapter(model: nn.Module, folder: Union[str, Path], overwrite: bool = False) -> Path:
    """Write ``adapter.safetensors`` + ``adapter_config.json`` (method, layers, kwargs, base fingerprint).

    The folder may hold other files (an export's base weights); an adapter already there is replaced only with
    ``overwrite=True``."""
    from zoo.hub import save_safetensors

    cfg = getattr(model, "adapter_config", None)
    if not cfg:
        raise ValueError("the model has no adapter; call apply_adapter first")
    folder = Path(folder)
    held = [n for n in (ADAPTER_FILE, ADAPTER_CONFIG_FILE) if (folder / n).exists()]
    if held and not overwrite:
        raise FileExistsError(f"{folder} already holds an adapter ({held}); choose another folder or pass overwrite=True")
    view = _BaseView(model)
    try:
        check_base(view, cfg["base"])
    except ValueError:
        # the base changed since apply_adapter (trained along with freeze_base=False, or other weights loaded):
        # these adapter weights belong to the base as it is now, which is what an export writes beside them
        cfg = {**cfg, "base": base_fingerprint(view)}
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(cfg, indent=2)
    save_safetensors(adapter_state_dict(model), folder / ADAPTER_FILE, metadata={"adapter_config": text})
    (folder / ADAPTER_CONFIG_FILE).write_text(text + "\n")
    return folder


def read_adapter(source: Union[str, Path]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state)`` from an adapter folder or ``adapter.safetensors`` file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(source)
    file = path / ADAPTER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: save adapters with zoo.nn.adapters.save_adapter")
    try:
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read {file}: {exc}; the adapter file is corrupt or truncated") from exc
    if "adapter_config" not in meta:
        raise ValueError(f"{file} carries no adapter_config metadata: it was not written by save_adapter")
    return json.loads(meta["adapter_config"]), state


def load_adapter(model: nn.Module, source: Union[str, Path, Mapping[str, Tensor]]) -> nn.Module:
    """Load adapter weights onto ``model``.

    ``source``: a folder / ``adapter.safetensors`` from :func:`save_adapter` (the adapter is applied
    first if the model has none, after checking the base fingerprint), or a state dict from
    :func:`adapter_state_dict` for a model that already carries the same adapter. Missing,
    unexpected or mis-shaped keys are named.
    """
    if isinstance(source, Mapping):
        if not getattr(model, "adapter_config", None):
            raise ValueError("a bare adapter state dict needs a model with the adapter applied; pass the folder instead")
        cfg, state, name = None, dict(source), "adapter state dict"
    else:
        cfg, state = read_adapter(source)
        name = str(source)
        check_base(model if not getattr(model, "adapter_config", None) else _BaseView(model), cfg["base"], name)
        if getattr(model, "adapter_config", None):
            ours = {k: model.adapter_config[k] for k in ("method", "layers", "kwargs")}
            theirs = {k: cfg[k] for k in ("method", "layers", "kwargs")}
            if ours != theirs:
                raise ValueError(f"{name} holds adapter {theirs} but the model carries {ours}; use a fresh base")
        else:
            apply_adapter(model, cfg["method"], layers=cfg["layers"], **cfg["kwargs"])
    own = {k: v for k, v in model.state_dict().items() if is_adapter_key(k)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = tensor_problems(
        ("missing adapter tensors", missing), ("unexpected tensors", unexpected), ("shape mismatches", shapes)
    )
    if problems:
        raise ValueError(f"{name} does not fit this model's adapter: " + "; ".join(problems))
    merged = [m for m in adapted_layers(model) if getattr(m, "merged", False)]
    for m in merged:  # the folded LoRA delta must be the one of the weights loaded now
        m.unmerge()
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    for m in merged:
        m.merge()
    return model


class _BaseView(nn.Module):
    """The fingerprint view of an adapted model: same class/config, state dict without adapters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_m", model)
        self.config = getattr(model, "config", None)

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        # merged DiffLoRA layers need no refusal here: fingerprints skip q_proj / k_proj, which a merge edits
        return {k: v for k, v in self._m.state_dict().items() if not is_adapter_key(k)}


def _class_of(view: nn.Module) -> type:
    return type(view._m) if isinstance(view, _BaseView) else type(view)


__all__ = [
    "ADAPTER_CONFIG_FILE", "ADAPTER_FILE", "METHODS", "AdaptedAttention", "DexAttention", "DiffLoRAAttention",
    "OpAmpAttention", "adapter_state_dict", "apply_adapter", "attention_layers", "base_fingerprint",
    "base_state_dict", "check_base", "is_adapter_key", "load_adapter",
    "mark_only_adapters_trainable", "merge_adapters", "read_adapter", "remove_adapters", "save_adapter",
    "step_adapters", "unmerge_adapters",
]

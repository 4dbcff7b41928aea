"""Triton kernels of fused differential attention: forward, backward (FlashAttention-2 style), decode.

Math (per query row ``i``, ``Pk = softmax(qk_i Kk^T * scale)``)::

    O1 = P1 V,  O2 = P2 V,  O = O1 - lam_i * O2
    dV  = (P1 - lam P2)^T dO                         one dot for both maps
    dPV = dO V^T                                     shared: dP1 = dPV, dP2 = -lam * dPV
    dS1 = P1 * (dPV - delta1),   delta1 = rowsum(dO * O1) = rowsum(dO * O) + lam * delta2
    dS2 = -lam * P2 * (dPV - delta2),  delta2 = rowsum(dO * O2)
    dQk = scale * dSk Kk,  dKk = scale * dSk^T Qk,  dlam_i = -delta2_i

Kernel-internal conventions: scores are in the log2 domain (``qk_scale = scale * log2(e)``) and the
stored log-sum-exps are log2 too. A forward query row with no visible key stores ``LSE = +inf`` so
that every probability recomputed in the backward is exactly 0 (its output and gradients are 0).
Head dims are padded to powers of two (``BLOCK_D``/``BLOCK_DV``) with masked loads. Batch and head
indices are int64 (cast at ``tl.program_id``). Query rows (``rows``) and keys (``keys``) meet their
strides in int32, whose product wraps past 2^31 elements (524k tokens at a token stride of 4096) to a
wrong address: a tensor that reaches that far is launched with ``I64=True`` (see ``ops._needs_i64``),
which casts them to int64; every other call runs the int32 arithmetic the GPU timings were measured on.

Whether the kernels are compiled or interpreted (``TRITON_INTERPRET=1``) is fixed when this module
is imported (see ``ops.interpreter_state``).
"""

import triton
import triton.language as tl

INTERPRET = bool(triton.knobs.runtime.interpret)


@triton.jit
def _addr(idx, I64: tl.constexpr):
    """``idx`` (query rows or keys) as it meets a stride: int64 for tensors past 2^31 elements."""
    if I64:
        return idx.to(tl.int64)
    else:
        return idx


@triton.jit
def _kv_range(start_m, TQ, TK, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Key range of a query block: [0, full_hi) needs no masking, [full_hi, hi) is masked."""
    if CAUSAL:
        shift = TK - TQ
        # Row i sees keys <= i + shift; the block's first row bounds the fully visible prefix.
        hi = tl.minimum(tl.maximum(start_m + BLOCK_M + shift, 0), TK)
        full_hi = tl.minimum(tl.maximum(start_m + shift + 1, 0), TK) // BLOCK_N * BLOCK_N
    else:
        hi = TK
        full_hi = TK // BLOCK_N * BLOCK_N
    return full_hi, hi


@triton.jit
def _visible(offs_m, offs_n, shift, TK, KMp, s_kmt, BOUNDS: tl.constexpr, CAUSAL: tl.constexpr,
             HAS_KM: tl.constexpr, I64: tl.constexpr):
    """Visibility ``[M, N]`` (or ``[1, N]``) of keys ``offs_n`` for query rows ``offs_m``."""
    vis = offs_n[None, :] < TK
    if BOUNDS and CAUSAL:
        vis = vis & (offs_n[None, :] <= offs_m[:, None] + shift)
    if HAS_KM:
        km = tl.load(KMp + _addr(offs_n, I64) * s_kmt, mask=offs_n < TK, other=0)
        vis = vis & (km[None, :] != 0)
    return vis


@triton.jit
def _online_update(s, m, l):
    """One online-softmax step on log2-domain scores ``s``: probabilities, rescale factor, new m, l."""
    m_new = tl.maximum(m, tl.max(s, 1))
    # A row that has seen only masked keys keeps m = -inf; exponentiate against 0 to avoid NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m - m_safe)
    return p, alpha, m_new, l * alpha + tl.sum(p, 1)


@triton.jit
def _fwd_tile(acc1, acc2, l1, l2, m1, m2, q1, q2, K1p, K2p, Vp, KMp, start_n, offs_m, shift, TK,
              s_k1t, s_k2t, s_vt, s_kmt, qk_scale,
              D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr, BOUNDS: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_KM: tl.constexpr, DOT_PREC: tl.constexpr, I64: tl.constexpr):
    """Both maps' online softmax over one key tile; the V tile is loaded once for both."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    keys = _addr(offs_n, I64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if BOUNDS:
        kt_mask = (offs_d[:, None] < D) & (offs_n[None, :] < TK)
        v_mask = (offs_n[:, None] < TK) & (offs_dv[None, :] < DV)
    else:
        kt_mask = offs_d[:, None] < D
        v_mask = offs_dv[None, :] < DV
    k1t = tl.load(K1p + keys[None, :] * s_k1t + offs_d[:, None], mask=kt_mask, other=0.0)
    k2t = tl.load(K2p + keys[None, :] * s_k2t + offs_d[:, None], mask=kt_mask, other=0.0)
    s1 = tl.dot(q1, k1t, input_precision=DOT_PREC) * qk_scale
    s2 = tl.dot(q2, k2t, input_precision=DOT_PREC) * qk_scale
    if BOUNDS or HAS_KM:
        vis = _visible(offs_m, offs_n, shift, TK, KMp, s_kmt, BOUNDS, CAUSAL, HAS_KM, I64)
        s1 = tl.where(vis, s1, float("-inf"))
        s2 = tl.where(vis, s2, float("-inf"))
    p1, a1, m1, l1 = _online_update(s1, m1, l1)
    p2, a2, m2, l2 = _online_update(s2, m2, l2)
    v = tl.load(Vp + keys[:, None] * s_vt + offs_dv[None, :], mask=v_mask, other=0.0)
    acc1 = tl.dot(p1.to(v.dtype), v, acc1 * a1[:, None], input_precision=DOT_PREC)
    acc2 = tl.dot(p2.to(v.dtype), v, acc2 * a2[:, None], input_precision=DOT_PREC)
    return acc1, acc2, l1, l2, m1, m2


@triton.jit
def _fwd_kernel(Q1, Q2, K1, K2, V, LAM, KM, O, O2, LSE1, LSE2,
                s_q1b, s_q1h, s_q1t, s_q2b, s_q2h, s_q2t,
                s_k1b, s_k1h, s_k1t, s_k2b, s_k2h, s_k2t, s_vb, s_vh, s_vt,
                s_lb, s_lh, s_lt, s_kmb, s_kmt, s_ob, s_oh, s_ot,
                H, N_REP, TQ, TK, qk_scale, TUNE_TQ, TUNE_TK,
                D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_KM: tl.constexpr, STORE_STATS: tl.constexpr,
                DOT_PREC: tl.constexpr, I64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    g = h // N_REP
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = _addr(offs_m, I64)
    m_ok = offs_m < TQ
    q_mask = m_ok[:, None] & (offs_d[None, :] < D)
    q1 = tl.load(Q1 + b * s_q1b + h * s_q1h + rows[:, None] * s_q1t + offs_d[None, :], mask=q_mask, other=0.0)
    q2 = tl.load(Q2 + b * s_q2b + h * s_q2h + rows[:, None] * s_q2t + offs_d[None, :], mask=q_mask, other=0.0)
    K1p = K1 + b * s_k1b + g * s_k1h
    K2p = K2 + b * s_k2b + g * s_k2h
    Vp = V + b * s_vb + g * s_vh
    KMp = KM + b * s_kmb
    shift = TK - TQ

    acc1 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    l1 = tl.zeros([BLOCK_M], dtype=tl.float32)
    l2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    m1 = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    m2 = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    full_hi, hi = _kv_range(start_m, TQ, TK, BLOCK_M, BLOCK_N, CAUSAL)
    for start_n in range(0, full_hi, BLOCK_N):
        acc1, acc2, l1, l2, m1, m2 = _fwd_tile(
            acc1, acc2, l1, l2, m1, m2, q1, q2, K1p, K2p, Vp, KMp, start_n, offs_m, shift, TK,
            s_k1t, s_k2t, s_vt, s_kmt, qk_scale, D, DV, BLOCK_N, BLOCK_D, BLOCK_DV,
            False, CAUSAL, HAS_KM, DOT_PREC, I64)
    for start_n in range(full_hi, hi, BLOCK_N):
        acc1, acc2, l1, l2, m1, m2 = _fwd_tile(
            acc1, acc2, l1, l2, m1, m2, q1, q2, K1p, K2p, Vp, KMp, start_n, offs_m, shift, TK,
            s_k1t, s_k2t, s_vt, s_kmt, qk_scale, D, DV, BLOCK_N, BLOCK_D, BLOCK_DV,
            True, CAUSAL, HAS_KM, DOT_PREC, I64)

    l1s = tl.where(l1 == 0.0, 1.0, l1)  # l == 0 only for rows without any visible key
    l2s = tl.where(l2 == 0.0, 1.0, l2)
    o1 = acc1 / l1s[:, None]
    o2 = acc2 / l2s[:, None]
    lam = tl.load(LAM + b * s_lb + h * s_lh + rows * s_lt, mask=m_ok, other=0.0)
    o_off = b * s_ob + h * s_oh + rows[:, None] * s_ot + offs_dv[None, :]
    o_mask = m_ok[:, None] & (offs_dv[None, :] < DV)
    tl.store(O + o_off, (o1 - lam[:, None] * o2).to(O.dtype.element_ty), mask=o_mask)
    if STORE_STATS:
        tl.store(O2 + o_off, o2.to(O2.dtype.element_ty), mask=o_mask)
        row = (b * H + h) * TQ + offs_m
        tl.store(LSE1 + row, tl.where(l1 == 0.0, float("inf"), m1 + tl.log2(l1s)), mask=m_ok)
        tl.store(LSE2 + row, tl.where(l2 == 0.0, float("inf"), m2 + tl.log2(l2s)), mask=m_ok)


@triton.jit
def _bwd_preprocess_kernel(O, O2, DO, LAM, DELTA1, DELTA2,
                           s_ob, s_oh, s_ot, s_dob, s_doh, s_dot, s_lb, s_lh, s_lt, H, TQ,
                           DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, I64: tl.constexpr):
    """delta2 = rowsum(dO * O2), delta1 = rowsum(dO * O) + lam * delta2 (= rowsum(dO * O1))."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = _addr(offs_m, I64)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < TQ
    mask = m_ok[:, None] & (offs_dv[None, :] < DV)
    o_off = b * s_ob + h * s_oh + rows[:, None] * s_ot + offs_dv[None, :]
    o = tl.load(O + o_off, mask=mask, other=0.0).to(tl.float32)
    o2 = tl.load(O2 + o_off, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * s_dob + h * s_doh + rows[:, None] * s_dot + offs_dv[None, :],
                 mask=mask, other=0.0).to(tl.float32)
    lam = tl.load(LAM + b * s_lb + h * s_lh + rows * s_lt, mask=m_ok, other=0.0)
    r2 = tl.sum(do * o2, 1)
    row = (b * H + h) * TQ + offs_m
    tl.store(DELTA1 + row, tl.sum(do * o, 1) + lam * r2, mask=m_ok)
    tl.store(DELTA2 + row, r2, mask=m_ok)


@triton.jit
def _bwd_kv_tile(dk1, dk2, dv, k1, k2, v, km_ok, Q1p, Q2p, DOp, LAMp, LSE1p, LSE2p, D1p, D2p,
                 start_m, offs_n, shift, TQ, s_q1t, s_q2t, s_dot, s_lt, qk_scale,
                 D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_DV: tl.constexpr, CAUSAL_MASK: tl.constexpr, HAS_KM: tl.constexpr,
                 DOT_PREC: tl.constexpr, I64: tl.constexpr):
    """dK1, dK2, dV contributions of one query tile (scores kept transposed: [keys, queries])."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    rows = _addr(offs_m, I64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < TQ
    q_mask = m_ok[:, None] & (offs_d[None, :] < D)
    q1 = tl.load(Q1p + rows[:, None] * s_q1t + offs_d[None, :], mask=q_mask, other=0.0)
    q2 = tl.load(Q2p + rows[:, None] * s_q2t + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DOp + rows[:, None] * s_dot + offs_dv[None, :],
                 mask=m_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    # Padded query rows get LSE = +inf, hence zero probabilities.
    lse1 = tl.load(LSE1p + offs_m, mask=m_ok, other=float("inf"))
    lse2 = tl.load(LSE2p + offs_m, mask=m_ok, other=float("inf"))
    d1 = tl.load(D1p + offs_m, mask=m_ok, other=0.0)
    d2 = tl.load(D2p + offs_m, mask=m_ok, other=0.0)
    lam = tl.load(LAMp + rows * s_lt, mask=m_ok, other=0.0)

    p1t = tl.exp2(tl.dot(k1, tl.trans(q1), input_precision=DOT_PREC) * qk_scale - lse1[None, :])
    p2t = tl.exp2(tl.dot(k2, tl.trans(q2), input_precision=DOT_PREC) * qk_scale - lse2[None, :])
    if CAUSAL_MASK:
        vis = offs_n[:, None] <= offs_m[None, :] + shift
        if HAS_KM:
            vis = vis & km_ok[:, None]
        p1t = tl.where(vis, p1t, 0.0)
        p2t = tl.where(vis, p2t, 0.0)
    elif HAS_KM:
        p1t = tl.where(km_ok[:, None], p1t, 0.0)
        p2t = tl.where(km_ok[:, None], p2t, 0.0)
    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
    dv = tl.dot((p1t - lam[None, :] * p2t).to(do.dtype), do, dv, input_precision=DOT_PREC)
    ds1t = p1t * (dpt - d1[None, :])
    ds2t = (lam[None, :] * p2t) * (d2[None, :] - dpt)
    dk1 = tl.dot(ds1t.to(q1.dtype), q1, dk1, input_precision=DOT_PREC)
    dk2 = tl.dot(ds2t.to(q2.dtype), q2, dk2, input_precision=DOT_PREC)
    return dk1, dk2, dv


@triton.jit
def _bwd_dkdv_kernel(Q1, Q2, K1, K2, V, DO, LAM, KM, LSE1, LSE2, DELTA1, DELTA2, DK1, DK2, DVo,
                     s_q1b, s_q1h, s_q1t, s_q2b, s_q2h, s_q2t,
                     s_k1b, s_k1h, s_k1t, s_k2b, s_k2h, s_k2t, s_vb, s_vh, s_vt,
                     s_dob, s_doh, s_dot, s_lb, s_lh, s_lt, s_kmb, s_kmt,
                     s_dkb, s_dkh, s_dkt, s_dvb, s_dvh, s_dvt,
                     H, N_REP, TQ, TK, sm_scale, qk_scale, TUNE_TQ, TUNE_TK,
                     D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                     CAUSAL: tl.constexpr, HAS_KM: tl.constexpr, DOT_PREC: tl.constexpr, I64: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key tile of one KV group; loops over the group's query heads, so no atomics (GQA)."""
    pid_n = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    keys = _addr(offs_n, I64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    n_ok = offs_n < TK
    k_mask = n_ok[:, None] & (offs_d[None, :] < D)
    v_mask = n_ok[:, None] & (offs_dv[None, :] < DV)
    k1 = tl.load(K1 + b * s_k1b + g * s_k1h + keys[:, None] * s_k1t + offs_d[None, :], mask=k_mask, other=0.0)
    k2 = tl.load(K2 + b * s_k2b + g * s_k2h + keys[:, None] * s_k2t + offs_d[None, :], mask=k_mask, other=0.0)
    v = tl.load(V + b * s_vb + g * s_vh + keys[:, None] * s_vt + offs_dv[None, :], mask=v_mask, other=0.0)
    if HAS_KM:
        km_ok = tl.load(KM + b * s_kmb + keys * s_kmt, mask=n_ok, other=0) != 0
    else:
        km_ok = n_ok
    dk1 = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dk2 = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    shift = TK - TQ
    if CAUSAL:
        # Query i sees key n iff n <= i + shift: rows before lo see nothing of this tile, rows from
        # full_lo on see all of it; the tiles in between need the causal mask.
        lo = tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M
        full_lo = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M
        mid = tl.minimum(full_lo, TQ)
    else:
        lo = 0
        full_lo = 0
        mid = 0
    for r in range(N_REP):
        h = g * N_REP + r
        Q1p = Q1 + b * s_q1b + h * s_q1h
        Q2p = Q2 + b * s_q2b + h * s_q2h
        DOp = DO + b * s_dob + h * s_doh
        LAMp = LAM + b * s_lb + h * s_lh
        row0 = (b * H + h) * TQ
        for start_m in range(lo, mid, BLOCK_M):
            dk1, dk2, dv = _bwd_kv_tile(
                dk1, dk2, dv, k1, k2, v, km_ok, Q1p, Q2p, DOp, LAMp, LSE1 + row0, LSE2 + row0,
                DELTA1 + row0, DELTA2 + row0, start_m, offs_n, shift, TQ, s_q1t, s_q2t, s_dot, s_lt,
                qk_scale, D, DV, BLOCK_M, BLOCK_D, BLOCK_DV, True, HAS_KM, DOT_PREC, I64)
        for start_m in range(full_lo, TQ, BLOCK_M):
            dk1, dk2, dv = _bwd_kv_tile(
                dk1, dk2, dv, k1, k2, v, km_ok, Q1p, Q2p, DOp, LAMp, LSE1 + row0, LSE2 + row0,
                DELTA1 + row0, DELTA2 + row0, start_m, offs_n, shift, TQ, s_q1t, s_q2t, s_dot, s_lt,
                qk_scale, D, DV, BLOCK_M, BLOCK_D, BLOCK_DV, False, HAS_KM, DOT_PREC, I64)

    dk_off = b * s_dkb + g * s_dkh + keys[:, None] * s_dkt + offs_d[None, :]
    tl.store(DK1 + dk_off, (dk1 * sm_scale).to(DK1.dtype.element_ty), mask=k_mask)
    tl.store(DK2 + dk_off, (dk2 * sm_scale).to(DK2.dtype.element_ty), mask=k_mask)
    tl.store(DVo + b * s_dvb + g * s_dvh + keys[:, None] * s_dvt + offs_dv[None, :],
             dv.to(DVo.dtype.element_ty), mask=v_mask)


@triton.jit
def _bwd_q_tile(dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, lam, K1p, K2p, Vp, KMp, start_n, offs_m,
                shift, TK, s_k1t, s_k2t, s_vt, s_kmt, qk_scale,
                D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr, BOUNDS: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_KM: tl.constexpr, DOT_PREC: tl.constexpr, I64: tl.constexpr):
    """dQ1, dQ2 contributions of one key tile."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    keys = _addr(offs_n, I64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if BOUNDS:
        kt_mask = (offs_d[:, None] < D) & (offs_n[None, :] < TK)
        vt_mask = (offs_dv[:, None] < DV) & (offs_n[None, :] < TK)
    else:
        kt_mask = offs_d[:, None] < D
        vt_mask = offs_dv[:, None] < DV
    k1t = tl.load(K1p + keys[None, :] * s_k1t + offs_d[:, None], mask=kt_mask, other=0.0)
    k2t = tl.load(K2p + keys[None, :] * s_k2t + offs_d[:, None], mask=kt_mask, other=0.0)
    vt = tl.load(Vp + keys[None, :] * s_vt + offs_dv[:, None], mask=vt_mask, other=0.0)
    p1 = tl.exp2(tl.dot(q1, k1t, input_precision=DOT_PREC) * qk_scale - lse1[:, None])
    p2 = tl.exp2(tl.dot(q2, k2t, input_precision=DOT_PREC) * qk_scale - lse2[:, None])
    if BOUNDS or HAS_KM:
        vis = _visible(offs_m, offs_n, shift, TK, KMp, s_kmt, BOUNDS, CAUSAL, HAS_KM, I64)
        p1 = tl.where(vis, p1, 0.0)
        p2 = tl.where(vis, p2, 0.0)
    dp = tl.dot(do, vt, input_precision=DOT_PREC)
    ds1 = p1 * (dp - d1[:, None])
    ds2 = (lam[:, None] * p2) * (d2[:, None] - dp)
    dq1 = tl.dot(ds1.to(q1.dtype), tl.trans(k1t), dq1, input_precision=DOT_PREC)
    dq2 = tl.dot(ds2.to(q2.dtype), tl.trans(k2t), dq2, input_precision=DOT_PREC)
    return dq1, dq2


@triton.jit
def _bwd_dq_kernel(Q1, Q2, K1, K2, V, DO, LAM, KM, LSE1, LSE2, DELTA1, DELTA2, DQ1, DQ2,
                   s_q1b, s_q1h, s_q1t, s_q2b, s_q2h, s_q2t,
                   s_k1b, s_k1h, s_k1t, s_k2b, s_k2h, s_k2t, s_vb, s_vh, s_vt,
                   s_dob, s_doh, s_dot, s_lb, s_lh, s_lt, s_kmb, s_kmt, s_dqb, s_dqh, s_dqt,
                   H, N_REP, TQ, TK, sm_scale, qk_scale, TUNE_TQ, TUNE_TK,
                   D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_KM: tl.constexpr, DOT_PREC: tl.constexpr, I64: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    g = h // N_REP
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = _addr(offs_m, I64)
    m_ok = offs_m < TQ
    q_mask = m_ok[:, None] & (offs_d[None, :] < D)
    q1 = tl.load(Q1 + b * s_q1b + h * s_q1h + rows[:, None] * s_q1t + offs_d[None, :], mask=q_mask, other=0.0)
    q2 = tl.load(Q2 + b * s_q2b + h * s_q2h + rows[:, None] * s_q2t + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + b * s_dob + h * s_doh + rows[:, None] * s_dot + offs_dv[None, :],
                 mask=m_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    row = (b * H + h) * TQ + offs_m
    lse1 = tl.load(LSE1 + row, mask=m_ok, other=float("inf"))
    lse2 = tl.load(LSE2 + row, mask=m_ok, other=float("inf"))
    d1 = tl.load(DELTA1 + row, mask=m_ok, other=0.0)
    d2 = tl.load(DELTA2 + row, mask=m_ok, other=0.0)
    lam = tl.load(LAM + b * s_lb + h * s_lh + rows * s_lt, mask=m_ok, other=0.0)
    K1p = K1 + b * s_k1b + g * s_k1h
    K2p = K2 + b * s_k2b + g * s_k2h
    Vp = V + b * s_vb + g * s_vh
    KMp = KM + b * s_kmb
    shift = TK - TQ
    dq1 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq2 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    full_hi, hi = _kv_range(start_m, TQ, TK, BLOCK_M, BLOCK_N, CAUSAL)
    for start_n in range(0, full_hi, BLOCK_N):
        dq1, dq2 = _bwd_q_tile(dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, lam, K1p, K2p, Vp, KMp,
                               start_n, offs_m, shift, TK, s_k1t, s_k2t, s_vt, s_kmt, qk_scale,
                               D, DV, BLOCK_N, BLOCK_D, BLOCK_DV, False, CAUSAL, HAS_KM, DOT_PREC, I64)
    for start_n in range(full_hi, hi, BLOCK_N):
        dq1, dq2 = _bwd_q_tile(dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, lam, K1p, K2p, Vp, KMp,
                               start_n, offs_m, shift, TK, s_k1t, s_k2t, s_vt, s_kmt, qk_scale,
                               D, DV, BLOCK_N, BLOCK_D, BLOCK_DV, True, CAUSAL, HAS_KM, DOT_PREC, I64)

    dq_off = b * s_dqb + h * s_dqh + rows[:, None] * s_dqt + offs_d[None, :]
    tl.store(DQ1 + dq_off, (dq1 * sm_scale).to(DQ1.dtype.element_ty), mask=q_mask)
    tl.store(DQ2 + dq_off, (dq2 * sm_scale).to(DQ2.dtype.element_ty), mask=q_mask)


@triton.jit
def _decode_split_kernel(Q1, Q2, K1, K2, V, KM, PO1, PO2, PLSE1, PLSE2,
                         s_q1b, s_q1h, s_q2b, s_q2h,
                         s_k1b, s_k1h, s_k1t, s_k2b, s_k2h, s_k2t, s_vb, s_vh, s_vt, s_kmb, s_kmt,
                         H, N_REP, TK, CHUNK, NUM_SPLITS, qk_scale,
                         D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                         HAS_KM: tl.constexpr, DOT_PREC: tl.constexpr, I64: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """Flash-decoding pass 1: one KV split of one KV group, for all the group's query heads at once
    (GQA heads are the rows of the tile, so each K/V tile is read once per group)."""
    split = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    r_ok = offs_r < N_REP
    h = g * N_REP + offs_r
    q_mask = r_ok[:, None] & (offs_d[None, :] < D)
    q1 = tl.load(Q1 + b * s_q1b + h[:, None] * s_q1h + offs_d[None, :], mask=q_mask, other=0.0)
    q2 = tl.load(Q2 + b * s_q2b + h[:, None] * s_q2h + offs_d[None, :], mask=q_mask, other=0.0)
    K1p = K1 + b * s_k1b + g * s_k1h
    K2p = K2 + b * s_k2b + g * s_k2h
    Vp = V + b * s_vb + g * s_vh
    KMp = KM + b * s_kmb
    acc1 = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    l1 = tl.zeros([BLOCK_R], dtype=tl.float32)
    l2 = tl.zeros([BLOCK_R], dtype=tl.float32)
    m1 = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    m2 = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    lo = split * CHUNK  # CHUNK is a multiple of BLOCK_N: tiles never straddle two splits
    hi = tl.minimum(lo + CHUNK, TK)
    for start_n in range(lo, hi, BLOCK_N):
        acc1, acc2, l1, l2, m1, m2 = _fwd_tile(
            acc1, acc2, l1, l2, m1, m2, q1, q2, K1p, K2p, Vp, KMp, start_n, offs_r, 0, TK,
            s_k1t, s_k2t, s_vt, s_kmt, qk_scale, D, DV, BLOCK_N, BLOCK_D, BLOCK_DV,
            True, False, HAS_KM, DOT_PREC, I64)
    l1s = tl.where(l1 == 0.0, 1.0, l1)
    l2s = tl.where(l2 == 0.0, 1.0, l2)
    part = ((b * H + h) * NUM_SPLITS + split)  # [BLOCK_R]
    o_mask = r_ok[:, None] & (offs_dv[None, :] < DV)
    tl.store(PO1 + part[:, None] * DV + offs_dv[None, :], acc1 / l1s[:, None], mask=o_mask)
    tl.store(PO2 + part[:, None] * DV + offs_dv[None, :], acc2 / l2s[:, None], mask=o_mask)
    # An empty split (all keys masked) gets weight exp2(-inf) = 0 in the reduction.
    tl.store(PLSE1 + part, tl.where(l1 == 0.0, float("-inf"), m1 + tl.log2(l1s)), mask=r_ok)
    tl.store(PLSE2 + part, tl.where(l2 == 0.0, float("-inf"), m2 + tl.log2(l2s)), mask=r_ok)


@triton.jit
def _combine_splits(PO, PLSE, base, NUM_SPLITS, offs_s, offs_dv, DV: tl.constexpr):
    s_ok = offs_s < NUM_SPLITS
    lse = tl.load(PLSE + base + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))
    den = tl.sum(w, 0)
    po = tl.load(PO + (base + offs_s[:, None]) * DV + offs_dv[None, :],
                 mask=s_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    return tl.sum(w[:, None] * po, 0) / tl.where(den == 0.0, 1.0, den)


@triton.jit
def _decode_reduce_kernel(PO1, PO2, PLSE1, PLSE2, LAM, O, s_lb, s_lh, s_ob, s_oh, H, NUM_SPLITS,
                          DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_S: tl.constexpr):
    """Flash-decoding pass 2: merge the splits of each map by their LSEs, then O = O1 - lam O2."""
    h = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_dv = tl.arange(0, BLOCK_DV)
    base = (b * H + h) * NUM_SPLITS
    o1 = _combine_splits(PO1, PLSE1, base, NUM_SPLITS, offs_s, offs_dv, DV)
    o2 = _combine_splits(PO2, PLSE2, base, NUM_SPLITS, offs_s, offs_dv, DV)
    lam = tl.load(LAM + b * s_lb + h * s_lh)
    tl.store(O + b * s_ob + h * s_oh + offs_dv, (o1 - lam * o2).to(O.dtype.element_ty), mask=offs_dv < DV)

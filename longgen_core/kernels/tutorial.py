"""Host side of notebook 02's teaching kernels: the notebook writes each ``@triton.jit`` kernel in
the cell that explains it; these functions launch such a kernel on one head at toy size, give the
dense reference to check it against, and read what the library's kernels measured.

A kernel is passed in, so that a reader can change it in the notebook and run it again. One head,
``q, k, v: (N, D)`` contiguous; ``N`` need not be a multiple of the tile. The arguments each
launcher passes, in order (``<pattern>`` = ``SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND``,
the parameters of :func:`~longgen_core.kernels.common.pattern_keep` from
:func:`~longgen_core.kernels.api.pattern_args`; upper-case names after ``sm_scale`` are
``tl.constexpr``):

- :func:`scores`, grid (tiles, tiles): ``Q, K, S, N, HEAD_DIM, TILE``
- :func:`dense_forward`, grid (tiles,): ``Q, K, V, Out, LSE, N, sm_scale, HEAD_DIM, TILE``
- :func:`csr_forward`, grid (tiles,): ``Q, K, V, Out, LSE, ROW_PTR, COL_IDX, ROW_MASK, N,
  sm_scale, <pattern>, HEAD_DIM, TILE`` (and any extra compile-time arguments given)
- :func:`csr_dq`, grid (tiles,): ``Q, K, V, DO, LSE, DELTA, DQ, ROW_PTR, COL_IDX, ROW_MASK, N,
  sm_scale, <pattern>, HEAD_DIM, TILE``
- :func:`csc_dkdv`, grid (tiles,): ``Q, K, V, DO, LSE, DELTA, DK, DV, COL_PTR, ROW_IDX, COL_MASK,
  N, sm_scale, <pattern>, HEAD_DIM, TILE``
- :func:`decode`, grid (1,): ``Q, K, V, POS, Out, L, q_pos, sm_scale, <pattern>, HEAD_DIM, BLOCK``

The LSE is natural-log, ``(N,)`` float32; ``DELTA = rowsum(O * dO)``; ``POS`` the position of each
cache slot (-1: empty); the layout tensors are int32. :func:`reference` and
:func:`reference_grads` give the float64 answers, :func:`online_softmax_trace` the recurrence on a
plain vector, :func:`library_steps` what each step from these kernels to the library's
(``forward.py``, ``backward.py``, ``decode.py``) measured on the GPU.

Example (CPU, with ``TRITON_INTERPRET=1`` set before the kernel is defined)::

    out, lse = csr_forward(csr_kernel, q, k, v, sink_window(2, 8), tile=16)  # (N, D), (N,)
    rel_err(out, reference(q, k, v, sink_window(2, 8))[0])                   # ~1e-7
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import torch
import triton

from ..patterns import Pattern, full_causal
from .api import pattern_args
from .reference import reference_attention

__all__ = ["scores", "dense_forward", "csr_forward", "csr_dq", "csc_dkdv", "decode", "reference",
           "reference_grads", "rel_err", "online_softmax_trace", "library_steps"]

NOTES = Path(__file__).with_name("NOTES.md")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``|out - ref| / |ref|`` (Frobenius), in float64 on the CPU; ``inf`` where ``out`` holds a NaN
    or an inf (so that ``rel_err(...) > tol`` and ``max(...)`` catch a value a kernel never wrote)."""
    out, ref = (t.detach().double().cpu() for t in (out, ref))
    err = float((out - ref).norm() / ref.norm())
    return err if math.isfinite(err) else math.inf


def _unwritten(shape, dtype, device) -> torch.Tensor:
    """An output buffer filled with NaN: an element the reader's kernel forgets to store fails
    every comparison instead of passing on whatever the memory held."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


# ----------------------------------------------------------------------------------- references
def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | None = None):
    """``(out (N, D), lse (N,))`` of one head in float64: :func:`reference_attention` of ``pattern``
    (default: full causal)."""
    out, lse = reference_attention(*(t.double().cpu()[None, None] for t in (q, k, v)),
                                   pattern or full_causal(), return_lse=True)
    return out[0, 0], lse[0, 0]


def reference_grads(q, k, v, do, pattern: Pattern | None = None) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv)`` of ``sum(out * do)`` through the float64 reference."""
    leaves = [t.double().cpu().requires_grad_() for t in (q, k, v)]
    out, _ = reference(*leaves, pattern)
    return torch.autograd.grad(out, leaves, do.double().cpu())


# ----------------------------------------------------------------------------------- launchers
def _tiles(n: int, tile: int) -> int:
    return triton.cdiv(n, tile)


@functools.lru_cache(maxsize=16)  # so that a timed launch measures the kernel, not the layout
def _pattern(pattern: Pattern, n: int, tile: int, device: torch.device) -> tuple[dict, dict]:
    """The kernel arguments of ``pattern`` and its layout's head-0 tensors on ``device``."""
    lay = pattern.block_layout(n, tile)
    t = {name: getattr(lay, name)[0].to(device=device, dtype=torch.int32)
         for name in ("row_ptr", "col_idx", "row_mask", "col_ptr", "row_idx", "col_mask")}
    return pattern_args(pattern), t


def scores(kernel, q: torch.Tensor, k: torch.Tensor, tile: int = 16) -> torch.Tensor:
    """``S = q @ k.T`` ``(N, N)`` float32, one program per (query tile, key tile)."""
    n, d = q.shape
    s = torch.empty(n, n, dtype=torch.float32, device=q.device)
    kernel[(_tiles(n, tile), _tiles(n, tile))](q, k, s, n, HEAD_DIM=d, TILE=tile)
    return s


def dense_forward(kernel, q, k, v, tile: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention ``(out (N, D), lse (N,))``, one program per query tile, every key tile up
    to the diagonal."""
    n, d = q.shape
    o = _unwritten((n, d), q.dtype, q.device)
    lse = _unwritten((n,), torch.float32, q.device)
    kernel[(_tiles(n, tile),)](q, k, v, o, lse, n, 1.0 / math.sqrt(d), HEAD_DIM=d, TILE=tile)
    return o, lse


def csr_forward(kernel, q, k, v, pattern: Pattern, tile: int = 16, **meta) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``pattern`` ``(out (N, D), lse (N,))``: a query tile walks its CSR row
    (``meta``: more compile-time arguments of the kernel, e.g. ``BLOCK_N=16``)."""
    n, d = q.shape
    args, lay = _pattern(pattern, n, tile, q.device)
    o = _unwritten((n, d), q.dtype, q.device)
    lse = _unwritten((n,), torch.float32, q.device)
    kernel[(_tiles(n, tile),)](q, k, v, o, lse, lay["row_ptr"], lay["col_idx"], lay["row_mask"], n,
                               1.0 / math.sqrt(d), **args, HEAD_DIM=d, TILE=tile, **meta)
    return o, lse


def csr_dq(kernel, q, k, v, do, lse, delta, pattern: Pattern, tile: int = 16) -> torch.Tensor:
    """``dq (N, D)``: a query tile walks its CSR row (``lse``, ``delta``: ``(N,)`` float32)."""
    n, d = q.shape
    args, lay = _pattern(pattern, n, tile, q.device)
    dq = _unwritten(q.shape, q.dtype, q.device)
    kernel[(_tiles(n, tile),)](q, k, v, do, lse, delta, dq, lay["row_ptr"], lay["col_idx"], lay["row_mask"],
                               n, 1.0 / math.sqrt(d), **args, HEAD_DIM=d, TILE=tile)
    return dq


def csc_dkdv(kernel, q, k, v, do, lse, delta, pattern: Pattern, tile: int = 16) -> tuple[torch.Tensor, ...]:
    """``(dk, dv)``, each ``(N, D)``: a key tile walks its CSC column."""
    n, d = q.shape
    args, lay = _pattern(pattern, n, tile, q.device)
    dk, dv = _unwritten(k.shape, k.dtype, k.device), _unwritten(v.shape, v.dtype, v.device)
    kernel[(_tiles(n, tile),)](q, k, v, do, lse, delta, dk, dv, lay["col_ptr"], lay["row_idx"],
                               lay["col_mask"], n, 1.0 / math.sqrt(d), **args, HEAD_DIM=d, TILE=tile)
    return dk, dv


def decode(kernel, q: torch.Tensor, k_cache, v_cache, positions: torch.Tensor, q_pos: int,
           pattern: Pattern, block: int = 16) -> torch.Tensor:
    """One new query ``q (D,)`` at position ``q_pos`` against a cache of slots ``(L, D)``,
    ``positions (L,)`` the position each slot holds (-1: empty); returns ``(D,)``."""
    length, d = k_cache.shape
    o = _unwritten((d,), q.dtype, q.device)
    kernel[(1,)](q, k_cache, v_cache, positions.to(device=q.device, dtype=torch.int32), o, length, q_pos,
                 1.0 / math.sqrt(d), **pattern_args(pattern), HEAD_DIM=d, BLOCK=block)
    return o


# ----------------------------------------------------------------------------------- the recurrence
def online_softmax_trace(x: torch.Tensor, chunk: int) -> list[tuple[float, float]]:
    """The online softmax on a vector read ``chunk`` entries at a time (pure PyTorch).

    Keeps the running max ``m`` and the running sum ``l = sum exp(x_i - m)``; when a chunk raises
    the max, the old sum is rescaled by ``exp(m_old - m_new)``. Returns ``(m, l)`` after each
    chunk; at the end ``m + log(l) == logsumexp(x)``.

    Example: ``online_softmax_trace(torch.tensor([1., 3., 2., 5.]), 2)`` ->
    ``[(3.0, 1.135...), (5.0, 1.203...)]``.
    """
    m, l, trace = float("-inf"), 0.0, []
    for start in range(0, x.numel(), chunk):
        block = x[start:start + chunk]
        m_new = max(m, float(block.max()))
        l = l * math.exp(m - m_new) + float(torch.exp(block - m_new).sum())
        m = m_new
        trace.append((m, l))
    return trace


# ----------------------------------------------------------------------------------- measured steps
def _table(text: str, header: str) -> dict[str, dict[str, str]]:
    """The markdown table of ``text`` whose header line starts with ``header``: row name ->
    {column header -> cell}."""
    lines = text[text.index(header):].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def _ms(cell: str) -> float:
    """The first ``<number> ms`` of a table cell (or a bare leading number)."""
    return float(re.match(r"\s*([\d.]+)", cell).group(1))


def library_steps(versus: dict, notes: str | None = None) -> list[dict]:
    """What each step from the teaching kernels to the library's measured on the GPU, read from
    ``NOTES.md`` (``notes``: its text) and ``versus`` (``figures/kernels_versus_*.json``). One row
    per change: ``change``, ``where`` (file:function), ``before``, ``after`` (ms), ``what`` (what
    the two numbers are)."""
    notes = NOTES.read_text() if notes is None else notes
    versions = _table(notes, "| version |")
    v1, v2 = versions["v1 (run 1)"], versions["v2 (run 2)"]
    run4 = _table(notes, "| 128K, sink 64 + window 4096 |")["backward alone, median of 18"]
    launch = re.search(r"Forward, tile 128: \(BLOCK_M, BLOCK_N, warps, stages\) = (.*?)needs", notes, re.S).group(1)
    settings = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\(\d+, \d+, \d+, \d+\)) ([\d.]+)", launch)}
    fused = _table(notes, "| | keys per program step |")["128-key blocks, 8 warps"]
    plain = [r for r in versus["rows"] if r["pattern"] == "sink_window" and r["n"] == 131072]
    by_pass = {r["pass"]: r for r in plain}
    return [
        dict(change="scale folded into the exp2 argument (one FMA per score)", where="forward.py:forward_kernel",
             before=_ms(v1["fwd"]), after=_ms(v2["fwd"]),
             what="forward at 128K, v1 -> v2 (v2 was also re-tuned at 128K)"),
        dict(change="launch settings: 128 x 128 sub-blocks, 8 warps, 3 stages (against 64 x 64, 4 warps)",
             where="api.py:TUNED", before=settings["(64, 64, 4, 3)"], after=settings["(128, 128, 8, 3)"],
             what="forward at 128K, tile 128"),
        dict(change="delta = rowsum(O * dO) inside the dQ kernel (no preprocess launch)",
             where="backward.py:dq_kernel", before=_ms(run4["v3 (HEAD)"]),
             after=_ms(run4["v4, delta only (dK/dV on 128-tiles)"]), what="backward at 128K, v3 -> v4"),
        dict(change="dK/dV on a 64-token CSC (no empty 64 x 64 corners)", where="backward.py:dkdv_kernel",
             before=_ms(run4["v4, delta only (dK/dV on 128-tiles)"]), after=_ms(run4["v4"]),
             what="backward at 128K"),
        dict(change="dQ and dK/dV as two kernels (7 tile products), not dQ inside the dK/dV walk",
             where="backward.py", before=_ms(fused["time"]), after=_ms(run4["v4"]),
             what="backward at 128K: dQ inside the dK/dV walk (prototype) -> two kernels"),
        dict(change="decode plan (visible chunks listed once per step, reused by every layer)",
             where="api.py:sparse_decode", before=by_pass["decode"]["ms_this"], after=by_pass["decode_plan"]["ms_this"],
             what="decode at 128K, batch 8, full cache: without -> with the plan"),
    ]


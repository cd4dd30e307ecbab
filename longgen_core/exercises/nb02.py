"""The checkers of notebook 02 (the Triton kernels): the reader's online-softmax, dilated-mask and
sub-block kernels, each launched at toy size and compared with the float64 reference."""

from __future__ import annotations

import torch


# The answers are @triton.jit kernels written in notebook 02; each checker launches one at toy
# size through longgen_core.kernels.tutorial (imported here, so that 01's checks need no Triton)
# and compares it with the float64 reference: on the GPU when there is one (the notebook then
# compiles its kernels), where tl.dot rounds float32 inputs to tf32, hence the looser tolerance.
def _kernel_tol() -> float:
    return 1e-2 if torch.cuda.is_available() else 1e-4


def _toy_qkv(n: int, d: int = 32, seed: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return [torch.randn(n, d, generator=gen).to(device) for _ in range(3)]


def _launch(run) -> tuple[object, str]:
    """``run()``, or the reason the reader's kernel did not run."""
    try:
        return run(), ""
    except Exception as e:  # noqa: BLE001 -- the reader's kernel: say what went wrong, do not raise
        return None, f"the kernel did not run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _bad_tiles(out, ref, tile: int) -> list[int]:
    """Query tiles whose rows differ from the reference (relative error over the tolerance)."""
    from ..kernels.tutorial import rel_err

    return [i for i in range(-(-ref.shape[0] // tile)) if rel_err(out[i * tile:(i + 1) * tile],
                                                                  ref[i * tile:(i + 1) * tile]) > _kernel_tol()]


def online_rescale(kernel) -> tuple[bool, str]:
    """02.1: a dense causal online-softmax kernel (``tutorial.dense_forward``'s signature)."""
    from ..kernels import tutorial as T

    q, k, v = _toy_qkv(70)
    got, why = _launch(lambda: T.dense_forward(kernel, q, k, v, tile=16))
    if why:
        return False, why
    (out, lse), (ref, ref_lse) = got, T.reference(q, k, v)
    bad = _bad_tiles(out, ref, 16)
    if bad == [1, 2, 3, 4]:
        return False, ("query tile 0 is right, tiles 1-4 are not: the error starts where a program adds a "
                       "second key tile under a new running max; rescale what it summed before")
    if bad:
        return False, f"the output differs from the reference in query tiles {bad}"
    if T.rel_err(lse, ref_lse) > _kernel_tol():
        return False, "the output is right but the LSE is not: store m_i + log(l_i)"
    return True, "every query tile agrees with the reference: out and LSE"


def _dilated_attention(q, k, v) -> torch.Tensor:
    """Attention over the keys at distances 0, 2, ..., 14 behind each query, in float64."""
    q, k, v = (t.double().cpu() for t in (q, k, v))
    dist = torch.arange(q.shape[0])[:, None] - torch.arange(q.shape[0])[None, :]
    keep = (dist >= 0) & (dist % 2 == 0) & (dist < 16)
    s = (q @ k.T / q.shape[1] ** 0.5).masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


def dilated_kernel(kernel) -> tuple[bool, str]:
    """02.2: the online-softmax kernel with the dilated-window mask of exercise 01.2."""
    from ..kernels import tutorial as T

    q, k, v = _toy_qkv(70)
    got, why = _launch(lambda: T.dense_forward(kernel, q, k, v, tile=16))
    if why:
        return False, why
    ref = _dilated_attention(q, k, v)
    rows = [i for i in range(70) if T.rel_err(got[0][i], ref[i]) > _kernel_tol()]
    if rows:
        return False, f"{len(rows)} of 70 query rows differ from the dilated window, the first is row {rows[0]}"
    return True, "8 keys per query at distances 0, 2, ..., 14, as exercise 01.2's mask_mod"


def sub_blocks(kernel) -> tuple[bool, str]:
    """02.3: a CSR kernel stepping through each kept key tile in sub-blocks of ``BLOCK_N`` keys."""
    from ..kernels import tutorial as T
    from ..patterns import sink_window

    q, k, v = _toy_qkv(100)
    pattern = sink_window(4, 24)
    ref = T.reference(q, k, v, pattern)[0]
    for block_n in (16, 32):
        got, why = _launch(lambda: T.csr_forward(kernel, q, k, v, pattern, tile=32, BLOCK_N=block_n))
        if why:
            return False, why
        bad = _bad_tiles(got[0], ref, 32)
        if bad:
            return False, (f"TILE = 32, BLOCK_N = {block_n}: query tiles {bad} differ from the reference; "
                           f"each kept tile takes {32 // block_n} steps of {block_n} keys")
    if _names_in_body(kernel).isdisjoint({"BLOCK_N"}):
        # a kernel that loads whole tiles is right at every BLOCK_N: the values cannot tell
        return False, "right values, but the kernel never uses BLOCK_N: step through each tile BLOCK_N keys at a time"
    return True, "TILE = 32 with BLOCK_N = 16 and 32: the tile and the step are separate choices"


def _names_in_body(kernel) -> set[str]:
    """The names a kernel's body uses (its signature and comments left out), read from its source;
    ``{"BLOCK_N"}`` where the source cannot be read (then only the values were checked)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(kernel, "fn", kernel))))
    except (OSError, TypeError, SyntaxError):
        return {"BLOCK_N"}
    body = tree.body[0].body
    return {node.id for stmt in body for node in ast.walk(stmt) if isinstance(node, ast.Name)}

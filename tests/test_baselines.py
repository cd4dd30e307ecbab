"""The benchmark's baselines on the CPU: what FA4 is asked for (layout, window, alignment) against
the dense reference through a stand-in that follows FA4's documented arguments, which pattern
it runs instead of ours, why a row cannot run, and how the table reads rows that could not.
The real FA4 and FlexAttention FLASH run only on a Hopper GPU (`bench kernels`, checked there
against FlexAttention before anything is timed)."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from longgen_core.bench import baselines
from longgen_core.bench import cli as bench_cli
from longgen_core.bench import kernels as bench
from longgen_core.kernels import reference_attention
from longgen_core.patterns import full_causal, sink_window, sliding_window, strided


def _fa4_semantics(q, k, v, causal=False, window_size=(None, None), num_splits=1, return_lse=False,
                   softmax_scale=None, **_):
    """FA4's ``flash_attn_func`` as its docstring states it, densely: ``(B, N, H, D)`` tensors,
    query ``i`` aligned to key ``i + Nk - Nq`` (bottom right), keys within ``window_size`` =
    (left, right) of it, ``causal`` = right 0; GQA by head groups. Returns ``(out, lse)``."""
    b, nq, h, d = q.shape
    nk, hk = k.shape[1], k.shape[2]
    left, right = window_size
    right = 0 if causal else right
    i = torch.arange(nq)[:, None] + nk - nq
    j = torch.arange(nk)[None, :]
    keep = torch.ones(nq, nk, dtype=torch.bool)
    if left is not None:
        keep &= j >= i - left
    if right is not None:
        keep &= j <= i + right
    qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))
    kh, vh = (t.repeat_interleave(h // hk, dim=1) for t in (kh, vh))
    s = (qh @ kh.transpose(-1, -2)) * (softmax_scale if softmax_scale is not None else 1 / math.sqrt(d))
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = (torch.softmax(s, dim=-1) @ vh).to(q.dtype).transpose(1, 2).contiguous()
    return out, lse.float()


@pytest.fixture
def fake_fa4(monkeypatch):
    """``flash_attn.cute`` replaced by :func:`_fa4_semantics`, recording each call's arguments."""
    calls = []

    def flash_attn_func(q, k, v, **kwargs):
        calls.append({"shapes": [tuple(t.shape) for t in (q, k, v)], **kwargs})
        return _fa4_semantics(q, k, v, **kwargs)

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = flash_attn_func
    package = types.ModuleType("flash_attn")
    package.cute = cute
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    baselines._fa4_causal.cache_clear()  # built on the stand-in of this test, not an earlier one
    yield calls
    baselines._fa4_causal.cache_clear()


@pytest.mark.parametrize("pattern", [sliding_window(40), full_causal()], ids=lambda p: p.name)
@pytest.mark.parametrize("n_q", [150, 3])  # prefill, and decode-style queries at the end
def test_fa4_runs_our_pattern_in_its_layout(fake_fa4, pattern, n_q):
    torch.manual_seed(0)
    n, heads, kv_heads, d = 150, 4, 2, 16
    q = torch.randn(2, heads, n_q, d, dtype=torch.float64)
    k, v = (torch.randn(2, kv_heads, n, d, dtype=torch.float64) for _ in range(2))
    o, lse = baselines.fa4(pattern)(q, k, v, return_lse=True)
    assert fake_fa4[-1]["shapes"] == [(2, n_q, heads, d), (2, n, kv_heads, d), (2, n, kv_heads, d)]
    assert fake_fa4[-1]["causal"] is True
    ref, ref_lse = reference_attention(q, k, v, pattern, return_lse=True) if n_q == n else _tail(q, k, v, pattern)
    assert o.shape == q.shape and lse.shape == (2, heads, n_q)
    torch.testing.assert_close(o, ref)
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-5, rtol=1e-5)


def _tail(q, k, v, pattern):
    """The reference for queries at the last positions: full-length queries, the tail kept."""
    n_q, n = q.shape[2], k.shape[2]
    full_q = torch.cat([torch.zeros(q.shape[0], q.shape[1], n - n_q, q.shape[3], dtype=q.dtype), q], dim=2)
    o, lse = reference_attention(full_q, k, v, pattern, return_lse=True)
    return o[:, :, -n_q:], lse[:, :, -n_q:]


def test_fa4_window_excludes_the_key_one_past_the_window(fake_fa4):
    baselines.fa4(sliding_window(4096))(*(torch.randn(1, 1, 4, 8) for _ in range(3)))
    assert fake_fa4[-1]["window_size"] == (4095, 0)  # q - kv < 4096: keys q - 4095 .. q
    baselines.fa4(full_causal(), num_splits=0)(*(torch.randn(1, 1, 4, 8) for _ in range(3)))
    assert fake_fa4[-1]["window_size"] == (None, None) and fake_fa4[-1]["num_splits"] == 0


def test_fa4_refuses_what_it_cannot_express():
    with pytest.raises(ValueError, match="fa4_counterpart"):
        baselines._fa4_window(sink_window(64, 4096))


def test_the_pattern_fa4_runs_instead():
    assert baselines.fa4_counterpart(sliding_window(128)) == (sliding_window(128), "")
    window, note = baselines.fa4_counterpart(sink_window(64, 4096))
    assert window.name == "sliding_window_4096" and "sink" in note
    none, why = baselines.fa4_counterpart(strided(64, 16, 8, homo_head=False, num_heads=4))
    assert none is None and "strided" in why


def test_why_an_implementation_cannot_run(monkeypatch):
    with pytest.raises(ValueError, match="choose from longgen, flex, flex_flash, fa4, sdpa_full"):
        baselines.unavailable("fa3")
    if not torch.cuda.is_available():
        assert baselines.unavailable("longgen") == "needs a CUDA GPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(baselines, "_fa4_missing", lambda: None)
    assert "9.0 or newer, this GPU has 8.0" in baselines.unavailable("fa4")
    assert baselines.unavailable("flex") is None
    monkeypatch.setattr(baselines, "_fa4_missing", lambda: "flash-attn-4 (flash_attn.cute) is not installed")
    assert baselines.unavailable("flex_flash") == "flash-attn-4 (flash_attn.cute) is not installed"


@pytest.mark.parametrize("broken, why", [
    (None, "flash-attn-4 (flash_attn.cute) is not installed"),
    ("missing dependency", "flash-attn-4 cannot be imported: ModuleNotFoundError: No module named 'cutlass'")])
def test_why_fa4_cannot_be_imported(monkeypatch, broken, why):
    if broken is None:
        monkeypatch.setitem(sys.modules, "flash_attn", None)  # as if not installed
    else:  # installed, but one of its own imports fails
        def failing_import(name, *args, _real=__import__, **kwargs):
            if name == "flash_attn.cute":
                raise ModuleNotFoundError("No module named 'cutlass'", name="cutlass")
            return _real(name, *args, **kwargs)

        monkeypatch.setattr("builtins.__import__", failing_import)
    baselines._fa4_missing.cache_clear()
    try:
        assert baselines._fa4_missing() == why
    finally:
        baselines._fa4_missing.cache_clear()


def test_flex_backend_is_checked():
    with pytest.raises(ValueError, match="'TRITON' or 'FLASH'"):
        baselines.flex(full_causal(), backend="CUTE")


def test_rows_of_what_cannot_run_say_why():
    sweep = bench._Sweep([], ["fwd", "fwdbwd", "decode"], ["fa4", "flex"], 4, 4, 16, 8, float("inf"))
    monkey_reason = baselines.unavailable("fa4")  # on this CPU machine: no CUDA GPU
    if monkey_reason is None:
        pytest.skip("this machine can run FA4")
    assert not sweep.wants("fa4", "full_causal", 1024)
    assert not sweep.wants("longgen", "full_causal", 1024)  # not asked for: no row
    assert not sweep.wants("fa4", "full_causal", 1024, cache="full", batch=8)
    assert [(r["impl"], r["pass"], r["unavailable"]) for r in sweep.rows] == [
        ("fa4", "fwd", monkey_reason), ("fa4", "fwdbwd", monkey_reason), ("fa4", "decode", monkey_reason)]
    assert sweep.rows[-1]["batch"] == 8 and all(r["ms"] is None for r in sweep.rows)


def test_the_table_compares_with_fa4_on_the_window_it_ran_and_lists_what_did_not_run():
    rows = [{"impl": "longgen", "pattern": "sink_window_64_4096", "n": 32768, "pass": "fwd", "ms": 4.0},
            {"impl": "fa4", "pattern": "sliding_window_4096", "n": 32768, "pass": "fwd", "ms": 3.0,
             "instead_of": "sink_window_64_4096"},
            {"impl": "longgen", "pattern": "sliding_window_4096", "n": 32768, "pass": "fwd", "ms": 3.9},
            {"impl": "flex_flash", "pattern": "sink_window_64_4096", "n": 32768, "pass": "fwd", "ms": 5.0},
            {"impl": "fa4", "pattern": "strided_64_16_8_hetero", "n": 32768, "pass": "fwd", "ms": None,
             "unavailable": "FA4's arguments cannot express the strided pattern"}]
    lines = bench.results_table({"rows": rows}).splitlines()
    speedups = {" ".join(line.split()[:-1]): line.split()[-1] for line in lines if " vs " in line}
    assert speedups["sink_window_64_4096 fwd vs fa4 on sliding_window_4096"] == "0.75x"
    assert speedups["sink_window_64_4096 fwd vs flex_flash"] == "1.25x"
    assert speedups["sliding_window_4096 fwd vs fa4"] == "0.77x"  # like for like
    assert lines[-2:] == ["not run:",
                          "  fa4 strided_64_16_8_hetero: FA4's arguments cannot express the strided pattern"]


def test_unknown_implementations_are_refused_before_the_gpu_is_looked_for(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_cli.main(["kernels", "--impls", "longgen,fa3"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("python -m longgen_core.bench kernels: error: argument --impls: unknown fa3; "
                                       "choose from longgen,flex,flex_flash,fa4,sdpa_full\n")


def test_a_full_model_on_fa4_equals_sdpa_in_prefill_and_decoding(fake_fa4, monkeypatch):
    from longgen_core.models.base import tiny_llama

    monkeypatch.setattr(baselines, "_fa4_missing", lambda: None)  # the stand-in is "installed"
    sdpa = tiny_llama().double().eval()
    on_fa4 = tiny_llama().double().eval()
    on_fa4.set_attn_implementation(baselines.register_fa4_attention())
    ids = torch.randint(3, 500, (1, 50), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(on_fa4(ids).logits, sdpa(ids).logits)
        tokens = on_fa4.generate(ids, max_new_tokens=12, do_sample=False)
        assert torch.equal(tokens, sdpa.generate(ids, max_new_tokens=12, do_sample=False))
    assert {c["shapes"][0][1] for c in fake_fa4} == {50, 1}  # prefill, then one query per step
    assert all(c["causal"] and c["softmax_scale"] == pytest.approx(16 ** -0.5) for c in fake_fa4)


def test_bench_model_says_why_full_attention_on_fa4_was_not_measured():
    from longgen_core.bench.model import run_model_bench
    from longgen_core.models.base import tiny_llama

    res = run_model_bench([48], device="cpu", dtype=torch.float32, config=tiny_llama().config,
                          pattern=sink_window(4, 16), reps=1, decode_steps=2, decode_batch=2,
                          metrics=("prefill_ms",))
    assert {r["attention"] for r in res["rows"]} == {"full", "hybrid"} and "ratios_full_fa4" not in res
    assert any(n.startswith("full attention through FlashAttention-4 not measured: needs a CUDA GPU")
               for n in res["notes"])


def test_bench_model_times_the_full_model_on_fa4_where_it_runs(fake_fa4, monkeypatch):
    from longgen_core.bench.model import results_table, run_model_bench
    from longgen_core.models.base import tiny_llama

    monkeypatch.setattr(baselines, "unavailable", lambda impl, device="cuda": None)  # as on a Hopper GPU
    res = run_model_bench([48], device="cpu", dtype=torch.float32, config=tiny_llama().config,
                          pattern=sink_window(4, 16), reps=1, decode_steps=2, decode_batch=2,
                          metrics=("prefill_ms", "decode_ms_b1"))
    rows = {(r["attention"], r["metric"]) for r in res["rows"] if r["value"] is not None}
    assert rows == {(a, m) for a in ("full", "hybrid", "full_fa4") for m in ("prefill_ms", "decode_ms_b1")}
    assert set(res["ratios_full_fa4"]) == {"prefill_ms", "decode_ms_b1"} and fake_fa4
    assert any(line.split()[1] == "full_fa4" for line in results_table(res).splitlines()[1:])


def test_the_sweep_names_the_pattern_fa4_runs_or_says_why_not(monkeypatch):
    sweep = bench._Sweep([], ["fwd", "fwdbwd"], ["fa4"], 4, 4, 16, 8, float("inf"))
    stripes = strided(64, 16, 8, homo_head=False, num_heads=4)
    assert sweep.fa4_pattern(stripes, 1024) is None
    assert [(r["pattern"], r["pass"], r["unavailable"]) for r in sweep.rows] == [
        (stripes.name, p, "FA4's arguments cannot express the strided pattern") for p in ("fwd", "fwdbwd")]
    monkeypatch.setattr(bench, "unavailable", lambda impl, device="cuda": None)  # as on a Hopper GPU
    assert sweep.fa4_pattern(sink_window(64, 4096), 1024, cache="full", batch=8) == sliding_window(4096)
    assert bench._Sweep([], ["fwd"], ["longgen"], 4, 4, 16, 8, float("inf")).fa4_pattern(stripes, 1024) is None

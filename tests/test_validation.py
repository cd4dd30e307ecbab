"""Input checks of issue #19 (items 6 and 7): one validation of ``config.longgen`` for conversion and
loading, range limits of pattern sizes and FLOP counts, and the decode input checks.

Every bad input raises the named error with a message that names the field; one good input per
function shows that nothing valid is refused. CPU only: the Triton kernels run under the
interpreter (conftest.py sets TRITON_INTERPRET=1 before longgen_core is imported).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from longgen_core.kernels import reference_attention, reference_decode, sparse_decode
from longgen_core.models.base import tiny_llama
from longgen_core.models.convert import load_longgen, looks_local, to_longgen, to_posthoc_streaming
from longgen_core.models.settings import check_settings, make_settings
from longgen_core.patterns import Pattern, attention_flops, full_causal, sink_window, sliding_window, strided

TOO_BIG = 2**31  # one past the largest pattern size


# ---------------------------------------------------------------------- pattern sizes
@pytest.mark.parametrize("call, field", [
    (lambda: sink_window(4, 2**63), "window_tokens"),
    (lambda: sink_window(TOO_BIG, 4), "sink_tokens"),
    (lambda: sliding_window(TOO_BIG), "window_tokens"),
    (lambda: strided(block_size=TOO_BIG), "block_size"),
    (lambda: strided(local_blocks=TOO_BIG), "local_blocks"),
    (lambda: strided(vert_stride=TOO_BIG), "vert_stride"),
    (lambda: Pattern.from_dict({"kind": "sink_window", "sink_tokens": 4, "window_tokens": 2**63}), "window_tokens"),
    (lambda: Pattern.from_dict({"kind": "strided", "block_size": 16, "local_blocks": 1, "vert_stride": 4,
                                "homo_head": False, "head_sliding_step": 5}), "head_sliding_step"),
], ids=["sink_window-2**63", "sink", "sliding", "block_size", "local_blocks", "vert_stride", "from_dict",
        "head_step"])
def test_pattern_sizes_out_of_range_name_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_largest_pattern_size_is_accepted_and_exact():
    """A window of 2**31 - 1 is full causal attention at any small length, in the mask, the counts
    and the dense reference (the int64 arithmetic that 2**63 overflowed)."""
    wide, full = sink_window(4, 2**31 - 1), full_causal()
    assert torch.equal(wide.dense_mask(9), full.dense_mask(9))
    assert torch.equal(wide.row_counts(9), full.row_counts(9))
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    assert torch.equal(reference_attention(q, k, v, wide), reference_attention(q, k, v, full))
    assert strided(16, 1, 2**31 - 1, homo_head=False).vert_stride == 2**31 - 1


@pytest.mark.parametrize("kwargs, field", [
    ({"num_heads": -1}, "num_heads"), ({"num_heads": 0}, "num_heads"), ({"num_heads": 2.0}, "num_heads"),
    ({"head_dim": 0}, "head_dim"), ({"batch": -2}, "batch"), ({"n": 0}, "n"),
])
def test_attention_flops_rejects_non_positive_counts(kwargs, field):
    with pytest.raises(ValueError, match=field):
        attention_flops(full_causal(), **{"n": 16, "num_heads": 2, "head_dim": 8, "batch": 1, **kwargs})


def test_attention_flops_good_counts():
    assert attention_flops(full_causal(), 16, 2, 8, batch=3) == 4 * (16 * 17 / 2) * 8 * 2 * 3


# ---------------------------------------------------------------------- settings: one validation
@pytest.fixture(scope="module")
def saved_hybrid(tmp_path_factory):
    """A tiny hybrid saved with save_pretrained, and its settings."""
    folder = tmp_path_factory.mktemp("hybrid")
    model = to_longgen(tiny_llama(), pattern=sink_window(4, 32))
    model.save_pretrained(folder)
    return folder, dict(model.config.longgen)


def edited_copy(saved: Path, dest: Path, longgen) -> Path:
    """A copy of the saved model whose config.json holds ``longgen`` instead of its settings."""
    shutil.copytree(saved, dest)
    config = json.loads((dest / "config.json").read_text())
    config["longgen"] = longgen
    (dest / "config.json").write_text(json.dumps(config))
    return dest


GOOD = {"version": 1, "mode": "hybrid", "full_layers": [2, 3],
        "pattern": {"kind": "sink_window", "sink_tokens": 4, "window_tokens": 32}, "positions": "original"}
BAD_SETTINGS = {
    "reindex in hybrid": ({**GOOD, "positions": "reindex"}, "positions"),
    "full pattern": ({**GOOD, "pattern": {"kind": "full"}}, "pattern"),
    "bogus mode": ({**GOOD, "mode": "bogus"}, r"mode.*'hybrid', 'posthoc'"),
    "bogus positions": ({**GOOD, "positions": "shifted"}, r"positions.*'original', 'reindex'"),
    "missing key": ({k: v for k, v in GOOD.items() if k != "mode"}, r"missing \['mode'\]"),
    "unknown key": ({**GOOD, "window": 8}, r"unknown \['window'\]"),
    "string": ("sink_window_4_32", "must be a dict"),
    "list": ([2, 3], "must be a dict"),
    "version": ({**GOOD, "version": 2}, "version"),
    "full_layers string": ({**GOOD, "full_layers": "2,3"}, "full_layers"),
    "full_layers float": ({**GOOD, "full_layers": [2.0]}, "full_layers"),
    "full_layers range": ({**GOOD, "full_layers": [9]}, "full_layers"),
    "full_layers twice": ({**GOOD, "full_layers": [2, 2]}, "full_layers"),
    "pattern string": ({**GOOD, "pattern": "sink_window_4_32"}, "pattern"),
    "pattern key": ({**GOOD, "pattern": {"kind": "sink_window", "sink_tokens": 4}}, "pattern"),
    "pattern too big": ({**GOOD, "pattern": {"kind": "sink_window", "sink_tokens": 4, "window_tokens": 2**63}},
                        "window_tokens"),
    "pattern reach": ({**GOOD, "pattern": {"kind": "sliding_window", "window_tokens": 8192}},
                      "max_position_embeddings"),
    "reindex strided": ({**GOOD, "mode": "posthoc", "positions": "reindex",
                         "pattern": strided(16, 2, 2).to_dict()}, "strided"),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_load_longgen_refuses_edited_settings_naming_the_field(saved_hybrid, tmp_path, name):
    longgen, message = BAD_SETTINGS[name]
    folder = edited_copy(saved_hybrid[0], tmp_path / "edited", longgen)
    with pytest.raises(ValueError, match=message) as err:
        load_longgen(folder)
    assert "config.longgen" in str(err.value)


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_check_settings_refuses_the_same_dicts(name):
    longgen, message = BAD_SETTINGS[name]
    with pytest.raises(ValueError, match=message):
        check_settings(tiny_llama().config, longgen)


def test_conversion_and_loading_share_one_validation(saved_hybrid, tmp_path):
    """The same bad pattern gives the same message through to_longgen and through load_longgen."""
    with pytest.raises(ValueError) as converting:
        to_longgen(tiny_llama(), pattern=sink_window(64, 8192))
    folder = edited_copy(saved_hybrid[0], tmp_path / "edited", {**GOOD, "pattern": sink_window(64, 8192).to_dict()})
    with pytest.raises(ValueError) as loading:
        load_longgen(folder)
    assert str(converting.value) == str(loading.value)


def test_good_settings_pass_and_load(saved_hybrid):
    folder, settings = saved_hybrid
    assert settings == GOOD
    assert check_settings(tiny_llama().config, {**GOOD, "full_layers": [3, 2]})["full_layers"] == [2, 3]
    posthoc = make_settings(tiny_llama().config, [2, 3], sink_window(4, 32), mode="posthoc", positions="reindex")
    assert check_settings(tiny_llama().config, posthoc) == posthoc
    streaming = to_posthoc_streaming(tiny_llama(), pattern=sink_window(4, 32), positions="reindex")
    assert streaming.config.longgen == posthoc
    assert load_longgen(folder).config.longgen == GOOD


def test_load_longgen_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    for path in (missing, str(missing), "./no-such-model-longgen"):
        with pytest.raises(FileNotFoundError, match="no-such-model"):
            load_longgen(path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_longgen(tmp_path)  # a directory, but not one save_pretrained wrote


def test_looks_local_keeps_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert not looks_local("HuggingFaceTB/SmolLM2-135M") and not looks_local("gpt2")
    assert looks_local("runs/hybrid")  # its first part is a local folder
    assert looks_local("a/b/c") and looks_local("/abs") and looks_local("./rel") and looks_local("~/x")
    assert looks_local(Path("hybrid"))


# ---------------------------------------------------------------------- decode input checks
def cache(slots=12, m=1, heads=2, kv_heads=1, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, heads, m, dim, generator=gen), torch.randn(1, kv_heads, slots, dim, generator=gen),
            torch.randn(1, kv_heads, slots, dim, generator=gen))


def positions(*values):
    return torch.tensor(values, dtype=torch.int64)


HETERO = strided(16, local_blocks=1, vert_stride=2, homo_head=False, num_heads=2)  # head 1 skips block 0
BAD_DECODE = {
    "all empty": (cache(4), positions(-1, -1, -1, -1), sink_window(2, 8), None, "no filled slot"),
    "window misses": (cache(4), positions(0, 1, 2, 3), sliding_window(8), positions(40), r"q_positions\[0\] = 40"),
    "head misses": (cache(4), positions(0, 1, -1, -1), HETERO, positions(40), "of head 1"),
    "duplicate": (cache(4), positions(0, 1, 1, 3), sink_window(2, 8), None, r"position\(s\) \[1\]"),
    "below -1": (cache(4), positions(0, 1, -2, 3), sink_window(2, 8), None, "cache_positions"),
    "m = 0": (cache(4, m=0), positions(0, 1, 2, 3), sink_window(2, 8), None, r"m = q.shape\[2\] = 0"),
}
DECODERS = {
    "triton": lambda *a, **kw: sparse_decode(*a, **kw),
    "reference backend": lambda *a, **kw: sparse_decode(*a, backend="reference", **kw),
    "reference_decode": lambda *a, **kw: reference_decode(*a, **kw),
}


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("name", list(BAD_DECODE))
def test_decode_bad_positions_raise_named_errors(name, decoder):
    (q, k, v), pos, pattern, q_pos, message = BAD_DECODE[name]
    with pytest.raises(ValueError, match=message):
        DECODERS[decoder](q, k, v, pos, pattern, q_positions=q_pos)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN itself
def test_decode_check_false_skips_the_value_checks():
    """check=False (what CUDA tensors get by default) runs none of the checks that read values: an
    all-empty cache then gives the NaN the check exists to prevent."""
    q, k, v = cache(4)
    out = sparse_decode(q, k, v, positions(-1, -1, -1, -1), sink_window(2, 8), check=False)
    assert torch.isnan(out).all()


def test_decode_head_shift_past_int32_is_refused():
    pattern = strided(16, 1, 2**30, homo_head=False, num_heads=1)  # head_sliding_step = 2**30
    q, k, v = cache(4, heads=4, kv_heads=4)
    with pytest.raises(ValueError, match="head_sliding_step"):
        sparse_decode(q, k, v, positions(0, 1, 2, 3), pattern)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_decode_good_positions_pass(decoder):
    """Empty slots, shuffled slots, several queries, a per-head pattern: accepted, and the kernel
    equals the reference."""
    q, k, v = cache(12, m=2, heads=2, kv_heads=1, dim=16, seed=3)
    pos = positions(0, 1, 30, -1, 33, 31, 32, -1, 29, 34, 35, -1)
    for pattern in (sink_window(2, 8), HETERO, full_causal()):
        out = DECODERS[decoder](q, k, v, pos, pattern, check=True)
        assert torch.isfinite(out).all()
        ref = reference_decode(q.double(), k.double(), v.double(), pos, pattern)
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)

"""`model.compile` modes: parsed, refused where they can't work, applied in place to G and D."""

from __future__ import annotations

import pytest
from torch import nn

from dcgan_lightning.models.compile import MODES, check_compile, compile_mode, compile_nets


@pytest.mark.parametrize(
    ("value", "mode"),
    [(False, None), (None, None), ("false", None), (True, "default"), ("true", "default")]
    + [(m, m) for m in MODES],
)
def test_compile_mode_reads_bools_and_mode_names(value: object, mode: str | None) -> None:
    assert compile_mode(value) == mode


def test_unknown_mode_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="reduce-overhead, max-autotune; got 'fast'"):
        compile_mode("fast")


def test_cuda_graphs_are_refused_off_cuda_with_the_alternative() -> None:
    with pytest.raises(ValueError, match=r"needs a CUDA device.*model.compile=default"):
        check_compile("reduce-overhead", "cpu")
    check_compile("reduce-overhead", "cuda")
    check_compile("max-autotune", "cpu")


def test_compile_nets_compiles_both_in_place_or_neither() -> None:
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    compile_nets(g, d, False, "cpu")
    assert g._compiled_call_impl is None and d._compiled_call_impl is None
    compile_nets(g, d, "max-autotune", "cpu")  # lazy: nothing is compiled until the first call
    assert g._compiled_call_impl is not None and d._compiled_call_impl is not None
    with pytest.raises(ValueError, match="CUDA"):
        compile_nets(nn.Linear(2, 2), nn.Linear(2, 1), "reduce-overhead", "cpu")

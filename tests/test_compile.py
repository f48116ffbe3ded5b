"""`model.compile` modes: parsed, refused where they can't work, applied in place to G and D."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.utilities import AttributeDict
from torch import nn

from dcgan_lightning.callbacks.compiles import CompileReport
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


class RecordingLogger:
    def __init__(self) -> None:
        self.rows: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.rows.append((metrics, step))


def fit(report: CompileReport, compile_value: object) -> tuple[SimpleNamespace, RecordingLogger]:
    logger = RecordingLogger()
    trainer = SimpleNamespace(is_global_zero=True, current_epoch=0, global_step=0, loggers=[logger])
    trainer.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=0))
    report.on_fit_start(trainer, SimpleNamespace(hparams=AttributeDict(compile=compile_value)))
    return trainer, logger


def test_compile_report_logs_the_run_s_graphs_when_their_count_grows(caplog) -> None:
    torch._dynamo.reset()
    net = torch.compile(nn.Dropout(), backend="eager")  # dynamo's counting without inductor
    net(torch.zeros(1, 2))  # a graph compiled before the fit is not the run's
    report = CompileReport()
    trainer, logger = fit(report, "default")
    with caplog.at_level(logging.INFO, logger="dcgan_lightning.callbacks.compiles"):
        net(torch.zeros(3, 2))  # a new batch size: a recompile
        trainer.global_step, trainer.fit_loop.epoch_loop._batches_that_stepped = 8, 4
        report.on_train_epoch_end(trainer, None)
        trainer.current_epoch, trainer.global_step = 1, 16
        trainer.fit_loop.epoch_loop._batches_that_stepped = 8
        net(torch.zeros(5, 2))  # dynamic now: no new graph
        report.on_train_epoch_end(trainer, None)
        net.train(False)  # a guard on the mode: another graph
        net(torch.zeros(5, 2))
        trainer.current_epoch, trainer.global_step = 2, 24
        trainer.fit_loop.epoch_loop._batches_that_stepped = 12
        report.on_train_epoch_end(trainer, None)
    # On the batch axis, at the step of the epoch's `train/*_epoch` values (its last batch's).
    assert logger.rows == [({"train/compiled_graphs": 1}, 3), ({"train/compiled_graphs": 2}, 11)]
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("compiles")]
    assert len(messages) == 2
    assert "1 graphs compiled in this run by the end of epoch 0 (1 new)" in messages[0]
    assert "2 graphs compiled in this run by the end of epoch 2 (1 new)" in messages[1]


def test_compile_report_is_inert_when_the_nets_run_eagerly() -> None:
    torch._dynamo.reset()
    report = CompileReport()
    trainer, logger = fit(report, False)
    torch.compile(nn.Linear(2, 2), backend="eager")(torch.zeros(1, 2))  # someone else's graph
    report.on_train_epoch_end(trainer, None)
    assert logger.rows == []

"""The bench's own logic: timing windows, the overhead rows, `gpu_check` and its checks on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from dcgan_lightning.bench import __main__ as bench_main
from dcgan_lightning.bench import gpu_check, overhead, training, turns
from dcgan_lightning.bench.gpu_check import Result
from tests.conftest import REPO

CPU = torch.device("cpu")

TINY_CHECK = [  # a training check that runs in seconds on a CPU
    "trainer=cpu",
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=2",
    "model.generator.features=8",
    "model.discriminator.features=8",
    "model.num_fixed_samples=4",
    "data.num_images=32",
    "data.batch_size=16",
]


def test_window_is_a_mean_over_its_batches_timed_at_its_ends_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Batch starts at 0, 1, 2, 3, 4, 11 s: after 1 warm-up batch, 3 batches of 1 s and one of
    # 7 s (a logging batch): a median of batches would say 1 s.
    starts, synced, batch = [0.0, 1.0, 2.0, 3.0, 4.0, 11.0], [], 0
    monkeypatch.setattr(training, "now", lambda device: synced.append(device) or starts[batch])
    cpu = iter([100.0, 106.0])  # the process's CPU seconds at the window's two ends
    monkeypatch.setattr(training.time, "process_time", lambda: next(cpu))
    window = training.Window(warmup=1, n=4)
    for batch in range(len(starts)):
        window.mark(batch, torch.device("cpu"))
    assert window.seconds_per_batch == pytest.approx(2.5)
    assert window.timing() == {"wall": pytest.approx(2.5), "cpu": pytest.approx(1.5)}
    assert len(synced) == 2  # the device waits at the window's two ends, never in between
    with pytest.raises(RuntimeError, match="before batch 5 began"):
        _ = training.Window(warmup=1, n=4).seconds_per_batch


def test_gpu_cases_cover_every_size_eager_and_compiled() -> None:
    sized = {(c.image_size, c.compile) for c in training.cases("cuda") if c.channels_last}
    assert sized == {(s, c) for s in training.GPU_SIZES for c in (False, True)}
    assert all(c.batch == training.GPU_BATCH for c in training.cases("cuda"))
    assert next((c.precision, c.batch) for c in training.cases("cpu")) == ("32-true", 64)
    assert {(c.image_size, c.compile) for c in gpu_check.bench_cases()} == sized


def test_as_user_runs_like_a_terminal_and_restores_the_environment(capsys) -> None:
    before = {k: os.environ.get(k) for k in ("WANDB_MODE", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    with training.as_user():
        assert os.environ["WANDB_MODE"] == "offline"
        assert os.environ["TTY_COMPATIBLE"] == os.environ["TTY_INTERACTIVE"] == "1"
        print("progress bar output")
    assert {k: os.environ.get(k) for k in before} == before
    assert "progress bar output" not in capsys.readouterr().out


def test_overhead_rows_give_ms_and_ratios_to_raw_and_bare_by_wall_and_cpu_time() -> None:
    wall = {
        "raw": [0.008, 0.009, 0.0085],
        "bare": [0.010, 0.010, 0.020],  # round 3 ran slow throughout: its ratio is 0.6
        "bench": [0.011, 0.011, 0.011],
        "user": [0.012, 0.013, 0.012],
    }
    cpu = {loop: [t / 2 for t in ts] for loop, ts in wall.items()}
    rows = overhead.rows(overhead.TINY, torch.device("cpu"), {"wall": wall, "cpu": cpu})
    by_unit = {(r["case"].split(": ", 1)[1], r["unit"]): r for r in rows}
    assert by_unit[(overhead.LABELS["raw"], "ms/batch")]["value"] == pytest.approx(8.5)
    assert by_unit[(overhead.LABELS["raw"], "CPU ms/batch")]["value"] == pytest.approx(4.25)
    assert "1.41x raw, 1.20x bare" in by_unit[(overhead.LABELS["user"], "ms/batch")]["note"]
    for name in ("user default / bare Lightning", "user default / bare Lightning, CPU time"):
        target = by_unit[(name, "x")]
        assert target["value"] == pytest.approx(1.2)  # median of the rounds' ratios 1.2, 1.3, 0.6
        assert "0.60-1.30" in target["note"]


def test_training_ratio_is_the_median_of_each_repeats_own_ratio() -> None:
    case = training.Case("fp32", "32-true", False)
    # Repeat 2 ran slow on both sides: a ratio of medians would read 0.60, the pairs say 1.0.
    timings = {("fp32", "raw"): [0.10, 0.20, 0.12], ("fp32", "framework"): [0.10, 0.20, 0.20]}
    rows = training._rows(timings, [case], torch.device("cpu"), 3, 10)
    ratio = next(r for r in rows if r["case"] == "fp32: train(cfg) / raw")
    assert ratio["value"] == pytest.approx(1.0)
    assert "median of 3 repeats' ratios, 0.60-1.00" in ratio["note"]
    rate = next(r for r in rows if r["case"] == "fp32: train(cfg)")
    assert rate["value"] == pytest.approx(64 / 0.20)  # img/s from the median seconds


def test_each_overhead_round_runs_bare_and_user_back_to_back_in_turns() -> None:
    orders = [overhead.round_order(r) for r in range(4)]
    assert all(sorted(o) == sorted(overhead.LOOPS) for o in orders)
    assert all(set(o[2:]) == {"bare", "user"} for o in orders)
    assert [o[2] for o in orders] == ["bare", "user", "bare", "user"]
    assert {o[0] for o in orders} == {"raw", "bench"}


@pytest.mark.slow
def test_overhead_measures_all_four_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overhead, "window", lambda device, quick: (1, 2, 1))
    times = overhead.measure(overhead.TINY, torch.device("cpu"), quick=True)
    assert set(times) == {"wall", "cpu"}
    for by_loop in times.values():
        assert set(by_loop) == set(overhead.LOOPS)
        assert all(len(t) == 1 and 0 < t[0] < 10 for t in by_loop.values()), times


def test_gpu_check_table_puts_failures_first() -> None:
    results = [Result("train", "model=dcgan, 32-true", "ok"), Result("pytest", "-m gpu", "FAILED")]
    lines = gpu_check.table(results).splitlines()
    assert lines[0] == "| stage | case | result | note |"
    assert lines[2].startswith("| pytest | -m gpu | FAILED |")
    assert lines[3].startswith("| train | model=dcgan, 32-true | ok |")


def test_gpu_check_without_cuda_says_so_and_exits_0() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "dcgan_lightning.bench.gpu_check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == gpu_check.NO_GPU


def test_training_check_passes_a_healthy_run(tmp_path: Path) -> None:
    assert gpu_check.check_training(TINY_CHECK, tmp_path) == []
    assert (tmp_path / "samples" / "epoch_0000.png").is_file()


def test_training_check_names_frozen_parameters_and_a_missing_grid(tmp_path: Path) -> None:
    frozen = ["model.optimizer_g.lr=0", "model.optimizer_d.lr=0", "~callbacks.sample_grid"]
    problems = gpu_check.check_training([*TINY_CHECK, *frozen], tmp_path)
    assert len(problems) == 2, problems
    assert "parameters unchanged: generator." in problems[0]
    assert "no sample grid" in problems[1]


def test_tiled_shapes_repeat_the_drawn_ones() -> None:
    dm = training.TiledShapes(distinct=4, num_images=10, image_size=32)
    images = dm.load_images()
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[4:8], images[:4]) and torch.equal(images[8:], images[:2])
    assert not torch.equal(images[0], images[1])
    assert "tiled4" in dm.fingerprint


@pytest.mark.slow
def test_gpu_check_bench_stage_gives_both_sections_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overhead, "window", lambda device, quick: (1, 2, 1))
    monkeypatch.setattr(training, "window", lambda device, quick: (1, 2, 1))
    results = gpu_check.bench(torch.device("cpu"), [overhead.TINY])
    by_stage = {(r.stage, r.case): r for r in results}
    assert ("training", "tiny nets: train(cfg) / raw") in by_stage
    assert by_stage[("overhead", "tiny nets: user default / bare Lightning")].result.endswith(" x")
    assert not any(r.failed for r in results)


def test_a_section_runs_with_its_threads_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    seen = []
    fake = types.ModuleType("dcgan_lightning.bench.fake")
    fake.THREADS = 1
    fake.run = lambda quick: seen.append(torch.get_num_threads()) or []
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(bench_main, "sections", lambda: ["fake"])
    before = torch.get_num_threads()
    other = before + 1  # neither the section's THREADS nor the count before
    assert bench_main.main(["--only", "fake"]) == 0
    assert torch.get_num_threads() == before
    assert bench_main.main(["--only", "fake", "--threads", str(other)]) == 0
    assert seen == [1, other]
    assert torch.get_num_threads() == before
    assert "| section | case |" in capsys.readouterr().out


def _loop(rotation: turns.Turns, name: str, seconds: float, events: list, fail: bool = False):
    """A fake loop: `seconds` of sleep a batch, its turns' batches recorded in `events`."""

    def run() -> None:
        window = rotation.window(name)
        for i in range(rotation.warmup + rotation.n + 1):
            if fail and i == 1:
                raise ValueError(f"{name} broke")
            window.mark(i, torch.device("cpu"))
            timed = rotation.warmup <= i < rotation.warmup + rotation.n
            events.append((name, "timed" if timed else "untimed"))
            time.sleep(seconds)

    return run


def test_loops_take_turns_chunk_by_chunk_and_are_timed_only_in_their_turns() -> None:
    rotation, events = turns.Turns(["a", "b", "c"], warmup=2, n=6, chunk=2, device=CPU), []
    jobs = {name: _loop(rotation, name, s, events) for name, s in zip("abc", (0.01, 0.03, 0.02))}
    turns.run_in_turns(rotation, jobs)
    timed = [name for name, kind in events if kind == "timed"]
    assert timed == list("aabbccaabbccaabbcc")  # 2 batches a turn, in the rotation's order
    # After its window each loop waits for all, so its last batch runs after every timed one.
    assert sorted(events[-3:]) == [("a", "untimed"), ("b", "untimed"), ("c", "untimed")]
    for name, s in zip("abc", (0.01, 0.03, 0.02)):
        assert rotation.timing(name)["wall"] == pytest.approx(s, rel=0.3, abs=0.004), name


def test_a_loop_that_fails_leaves_the_rotation_and_its_error_is_raised() -> None:
    rotation, events = turns.Turns(["a", "b"], warmup=2, n=4, chunk=2, device=CPU), []
    jobs = {"a": _loop(rotation, "a", 0.001, events), "b": _loop(rotation, "b", 0.001, [], True)}
    with pytest.raises(ValueError, match="b broke"):
        turns.run_in_turns(rotation, jobs)
    assert [name for name, kind in events if kind == "timed"] == ["a"] * 4  # a ran alone


def test_every_models_row_composes_to_the_options_it_names(tmp_path: Path) -> None:
    from dcgan_lightning.bench import models
    from dcgan_lightning.compose import compose_train_config

    cfgs = {
        name: compose_train_config(models.overrides(extra, CPU, 4), tmp_path / str(i)).model
        for i, (name, extra) in enumerate(models.MODELS.items())
    }
    plain = cfgs["model=dcgan"]
    assert plain.ada is None and plain.ema is None and list(plain.diffaugment) == []
    rampup = next(cfg for name, cfg in cfgs.items() if "rampup" in name)
    assert list(rampup.diffaugment) == ["color", "translation", "cutout"]
    assert (rampup.ada.target, rampup.ema.decay, rampup.ema.rampup) == (0.6, 0.99, 0.05)
    assert rampup.loss == plain.loss == "bce" and not rampup.discriminator.spectral_norm


def test_small_set_rows_give_training_against_evaluation_time() -> None:
    from dcgan_lightning.bench import evaluation

    tiny = (
        "model.generator.features=8",
        "model.discriminator.features=8",
        "metrics.num_samples=32",
    )
    times = evaluation.small_set_times(images=64, size=32, batch=16, epochs=2, extra=tiny)
    assert times["batches"] == 6 and len(times["evaluations"]) == 2  # 58 images: 3 batches an epoch
    assert 0 < sum(times["evaluations"]) < times["wall"]
    training, evaluating = evaluation.small_set_rows(times)
    assert training["unit"] == "ms" and training["value"] > 0
    assert evaluating["unit"] == "s" and evaluating["value"] > 0
    assert "training batches" in evaluating["note"] and "% of the wall time" in evaluating["note"]

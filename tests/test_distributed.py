"""``torchrun --standalone --nproc_per_node=2 -m iqa_core batch`` on the CPU (gloo): the rows of one process, each
pair once, also after ``--stop-after`` or a ``kill -9`` of the whole run and a rerun with 1 or 2 processes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_engine import per_pair_loop, rows, write_set

from iqa_core.store import shard_files

ROOT = Path(__file__).resolve().parents[1]


def _command(pairs: Path, out: Path, nproc: int | None, *extra: str) -> list[str]:
    batch = ["-m", "iqa_core", "batch", "--metric", "deepssim", "--weights", "random", "--pairs", str(pairs),
             "--out", str(out), "--workers", "1", *extra]
    if nproc is None:
        return [sys.executable, *batch]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *batch]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _run(pairs: Path, out: Path, nproc: int | None, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(pairs, out, nproc, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _scores(out: Path) -> dict[tuple[str, str], float]:
    table = rows(out)
    keys = [(r["ref"], r["dist"]) for r in table]
    assert len(keys) == len(set(keys)), "a pair written twice"
    return {(r["ref"], r["dist"]): float(r["score"]) for r in table}


def _assert_complete(out: Path, pairs: Path) -> None:
    """Every pair once, with the per-pair API's value (to 1e-6), and no shard file left behind."""
    got = _scores(out)
    expected = per_pair_loop("deepssim", pairs)
    assert sorted(d for _, d in got) == sorted(expected)
    worst = max(abs(got[k] - expected[k[1]]) / abs(expected[k[1]]) for k in got)
    assert worst <= 1e-6, worst
    assert shard_files(out) == []


@pytest.fixture(scope="module")
def pair_set(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("dist") / "set", refs=5, dists=4, size=64)


def test_two_processes_write_the_rows_of_one(pair_set, tmp_path):
    _run(pair_set, tmp_path / "one.csv", None, "--batch-size", "2")
    proc = _run(pair_set, tmp_path / "two.csv", 2, "--batch-size", "2")
    assert "20 pairs, 0 already in" in proc.stderr and "on 2 processes" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("20 scored, 0 already in")
    _assert_complete(tmp_path / "two.csv", pair_set)
    one, two = _scores(tmp_path / "one.csv"), _scores(tmp_path / "two.csv")
    assert one.keys() == two.keys() and max(abs(one[k] - two[k]) / abs(one[k]) for k in one) <= 1e-6
    again = _run(pair_set, tmp_path / "two.csv", 2)
    assert "20 already in" in again.stderr and "0 to score" in again.stderr


@pytest.mark.parametrize("resume_with", [1, 2])
def test_stopped_two_process_run_resumes_with_any_world_size(pair_set, tmp_path, resume_with):
    out = tmp_path / "s.csv"
    _run(pair_set, out, 2, "--stop-after", "3", "--batch-size", "2")
    assert len(_scores(out)) == 6 and shard_files(out) == []  # 3 rows per rank, merged by rank 0
    _run(pair_set, out, None if resume_with == 1 else 2)
    _assert_complete(out, pair_set)


def _data_rows(paths: list[Path]) -> int:
    count = 0
    for path in paths:
        try:
            with open(path, newline="") as fh:
                count += max(0, sum(1 for _ in csv.reader(fh)) - 1)
        except FileNotFoundError:
            pass
    return count


@pytest.mark.parametrize("resume_with", [1, 2])
def test_killed_run_resumes_without_losing_or_doubling_a_row(tmp_path, resume_with):
    """kill -9 of torchrun and both workers once 4 rows are in the shard files, then a rerun."""
    pairs = write_set(tmp_path / "set", refs=8, dists=5, size=96, seed=1)
    out = tmp_path / "s.csv"
    proc = subprocess.Popen(_command(pairs, out, 2, "--batch-size", "1"), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _data_rows(shard_files(out)) >= 4:
                break
            time.sleep(0.02)  # polling for rows on disk, not waiting for a time to pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    left = shard_files(out)
    assert left and 4 <= _data_rows(left) < 40
    _run(pairs, out, None if resume_with == 1 else 2)
    got = _scores(out)
    assert len(got) == 40 and shard_files(out) == []
    expected = per_pair_loop("deepssim", pairs)
    assert max(abs(got[k] - expected[k[1]]) / abs(expected[k[1]]) for k in got) <= 1e-6


# ------------------------------------------------------------------------------------------------ the experiments

EXPERIMENTS = {
    "fm_layer_study": ("--quick",),
    "dps_analysis": ("--quick", "--backbones", "alexnet", "--repeats", "1", "--n-boot", "200"),
}
TABLES = {"fm_layer_study": ("layer_srcc.csv", ["srcc", "srcc_pooled", "n"]),
          "dps_analysis": ("grid.csv", ["accuracy", "robustness", "monotonicity", "srcc", "n_pairs"])}


def _experiment(script: str, out: Path, nproc: int | None, env: dict[str, str]) -> str:
    argv = [str(ROOT / "experiments" / f"{script}.py"), *EXPERIMENTS[script], "--out", str(out), "--device", "cpu"]
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run([sys.executable, *launcher, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.weights("alexnet")
@pytest.mark.parametrize("script", sorted(EXPERIMENTS))
def test_experiments_under_torchrun_write_the_rows_and_tables_of_one_process(tmp_path, weights_dir, script):
    """fm_layer_study and dps_analysis --quick with 2 processes: every (cell, pair) of the one-process run once, with
    its value (the units, hence the batches, depend on the pairs alone), no shard left, and rank 0's table equal."""
    import pandas as pd
    from conftest import hermetic_env

    env = dict(hermetic_env(tmp_path, weights_dir), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    _experiment(script, tmp_path / "one", None, env)
    assert " on 2 processes" in _experiment(script, tmp_path / "two", 2, env)  # rank 0's announcement
    stores = [pd.read_csv(tmp_path / run / "scores.csv") for run in ("one", "two")]
    key = [c for c in stores[0].columns if c != "score"]
    assert not stores[1].duplicated(key).any() and shard_files(tmp_path / "two" / "scores.csv") == []
    merged = stores[0].merge(stores[1], on=key, how="outer", suffixes=("_one", "_two"), indicator=True)
    assert (merged["_merge"] == "both").all()
    assert ((merged.score_one - merged.score_two).abs() <= 1e-6 * merged.score_one.abs()).all()
    name, columns = TABLES[script]
    tables = [pd.read_csv(tmp_path / run / name) for run in ("one", "two")]
    pd.testing.assert_frame_equal(tables[0][columns], tables[1][columns], rtol=1e-9)

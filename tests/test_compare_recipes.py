"""measure/compare_recipes.py: recipes parse, CPU time is read per process, arms stop at their CPU budget."""
import os
import time

import pytest

from clel.checkpoints import find_checkpoints, read_checkpoint_meta
from clel.trainer import TrainOptions, train
from conftest import load_script

cr = load_script("measure/compare_recipes.py", "compare_recipes")


def test_recipes_parse_and_bad_ones_are_refused():
    assert cr.parse_recipe("now=") == ("now", [])
    assert cr.parse_recipe('steps40=--sgld-steps 40 --lr "2e-4"') == ("steps40", ["--sgld-steps", "40", "--lr", "2e-4"])
    for bad in ("--sgld-steps 40", "=--lr 1"):
        with pytest.raises(SystemExit, match="NAME=ARGS"):
            cr.parse_recipe(bad)


def test_cpu_seconds_counts_this_process_work():
    before = cr.cpu_seconds(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.3:
        sum(range(10_000))
    assert cr.cpu_seconds(os.getpid()) - before >= 0.2


def test_arms_resume_one_checkpoint_with_their_overrides_and_stop_at_their_budget(tmp_path):
    from test_trainer import fake_cifar, small_cfg

    data = fake_cifar(tmp_path / "cifar", per_class=2)  # on disk: train.py runs as a subprocess
    train(small_cfg(), TrainOptions(out=str(tmp_path / "start"), data=str(data), max_iters=2, progress=False,
                                    tensorboard=False, prototypes=False))
    start = find_checkpoints(tmp_path / "start")[-1]
    long = ["--iters", "100000"]  # the tiny run would end at its 10 iterations long before the budget
    recipes = [("now", long), ("steps3", ["--sgld-steps", "3", "--batch-size", "4", *long]),
               ("broken", ["--lr", "not-a-number"])]
    arms = cr.run_arms(start, recipes, tmp_path / "arms", cpu_budget=8.0, nice=0, poll=0.2)
    assert set(arms) == {"now", "steps3", "broken"} and "failed" in arms["broken"]  # the others still ran
    for name, steps, batch in (("now", 2, 8), ("steps3", 3, 4)):
        assert "failed" not in arms[name]
        meta = read_checkpoint_meta(find_checkpoints(tmp_path / "arms" / name)[-1])
        assert meta["iteration"] > 2  # resumed, trained on
        assert (meta["config"]["sgld_steps"], meta["config"]["batch_size"]) == (steps, batch)
        assert 8.0 <= arms[name]["cpu_s"] < 40.0  # stopped soon after its budget, not at --iters


def test_table_prints_every_arm_and_the_other_seeds_without_their_lookalikes(capsys):
    start = {"checkpoint": "c", "iteration": 10, "fid": 100.0, "fd_judge": 150.0, "lookalike_agreement": 0.25}
    res = {"start": start, "start_other_seeds": [{"fid": 102.0, "fd_judge": 140.0}],  # look-alikes: start only
           "arms": {"a": {**start, "cpu_s": 1800.0, "iterations": 5, "batch_size": 64, "lookalike_agreement": 0.5},
                    "b": {"failed": "exit code 1"}}}
    cr.print_table(res)
    out = capsys.readouterr().out
    assert "other probe seed: fid 102, fd_judge 140" in out
    assert "0.5 (+0.5/h)" in out and "b            failed: exit code 1" in out

"""Task-distribution shifts (issue 23, item 2): each shift changes only what it names, no shift is the plain
evaluation exactly, and ``innerloop eval --shift`` reports in-distribution and shifted results with the change."""

import json
import math

import pytest
import torch
from cli_runner import cli

from innerloop.data import ImageDataset
from innerloop.data.episodes import EpisodicTasks
from innerloop.errors import ConfigError
from innerloop.models import MLP
from innerloop.rl.envs import Navigation2D
from innerloop.rl.tasks import RLTasks
from innerloop.tasks import SinusoidTasks
from innerloop.tasks.diversity import diversity_coefficient, task2vec_distance
from innerloop.tasks.shift import Shift, parse_shift, shift_source
from innerloop.training.builders import build_learner, build_tasks
from innerloop.training.config import load_config
from innerloop.training.evaluate import evaluate_config, evaluate_rl
from innerloop.training.shift_eval import changes, evaluate_shift, evaluate_shifts, shifted_config
from innerloop.training.trainer import Trainer

IDS = range(40)


def test_specs_parse_and_a_bad_one_is_one_line_naming_the_syntax():
    assert parse_shift("amplitude=5:10") == Shift("amplitude", (5.0, 10.0))
    assert parse_shift("rotation=90") == Shift("rotation", 90.0) and parse_shift("ways=20") == Shift("ways", 20)
    assert parse_shift("split=evaluation").value == "evaluation" and parse_shift("x_range=-10:10").size == 10.0
    for bad, says in (
        ("amplitude=5", "LO:HI"),
        ("amplitude=6:5", "LO:HI"),
        ("rotation=45", "DEG"),
        ("size=3", "one of"),
    ):
        with pytest.raises(ValueError, match=says) as err:
            parse_shift(bad)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, value, moved",
    [("amplitude", (5.0, 10.0), "amplitude"), ("phase", (3.0, 6.0), "phase"), ("x_range", (5.0, 10.0), "x")],
)
def test_a_sinusoid_shift_moves_only_what_it_names(name, value, moved):
    plain = SinusoidTasks(shots=5, queries=5, seed=3)
    shifted = shift_source(plain, Shift(name, value))
    a, b = plain.task_parameters(-1, IDS), shifted.task_parameters(-1, IDS)
    x_a, x_b = plain.sample(-1, IDS, torch.float64), shifted.sample(-1, IDS, torch.float64)
    for key in ("amplitude", "phase"):
        if key == moved:
            assert not torch.equal(a[key], b[key]) and bool(((b[key] >= value[0]) & (b[key] <= value[1])).all())
        else:
            assert torch.equal(a[key], b[key]), f"a {name} shift changed the {key}s"
    if moved == "x":
        assert bool((x_b.support_x >= 5).all()) and not torch.equal(x_a.support_x, x_b.support_x)
        truth = b["amplitude"][:, None, None] * torch.sin(x_b.query_x - b["phase"][:, None, None])
        assert torch.allclose(x_b.query_y, truth)  # the same functions, read at the new inputs
    else:
        assert torch.equal(x_a.support_x, x_b.support_x) and torch.equal(x_a.query_x, x_b.query_x)


def images(classes=6, per_class=4, side=6):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (classes * per_class, 1, side, side), generator=g, dtype=torch.uint8)
    return ImageDataset(
        data, torch.arange(classes).repeat_interleave(per_class), [f"a{c % 2}/c{c}" for c in range(classes)]
    )


def test_an_image_shift_changes_the_images_and_keeps_labels_and_classes():
    plain = EpisodicTasks(images(), 3, 1, 2, seed=5)
    a = plain.sample(-1, range(4))
    rotated = shift_source(plain, parse_shift("rotation=90")).sample(-1, range(4))
    assert torch.equal(rotated.support_y, a.support_y) and torch.equal(rotated.query_y, a.query_y)
    assert torch.equal(rotated.support_x, torch.rot90(a.support_x, 1, dims=(-2, -1)))
    noisy_source = shift_source(plain, parse_shift("noise=0.5"))
    noisy = noisy_source.sample(-1, range(4))
    assert torch.equal(noisy.query_y, a.query_y)
    residual = noisy.query_x - a.query_x
    assert 0.3 < float(residual.std()) < 0.7 and float(residual.mean()).__abs__() < 0.15
    alone = noisy_source.sample(-1, [2])  # a task's noise does not depend on the tasks drawn with it
    assert torch.equal(alone.support_x[0], noisy.support_x[2])
    assert noisy_source.ways == 3 and noisy_source.with_seed(9).seed == 9


def test_a_goal_shift_draws_goals_outside_the_training_square_only():
    plain = RLTasks(Navigation2D(), seed=7, split="test")
    shifted = shift_source(plain, parse_shift("goal=0.5:1.0"))
    goals = shifted.fixed(200)
    reach = goals.abs().amax(-1)
    assert goals.shape == (200, 2) and bool((reach >= 0.5).all()) and bool((reach <= 1.0).all())
    assert torch.equal(shifted.fixed(200), goals)  # fixed: the same goals every time
    assert float(plain.fixed(200).abs().max()) <= 0.5 and shifted.family.horizon == 100


def test_a_velocity_shift_rescales_the_same_draws():
    class Velocity(Navigation2D):  # a family of target velocities, without MuJoCo (HalfCheetahVelocity's draw)
        velocity_range = (0.0, 2.0)

        def sample_tasks(self, num_tasks, generator):
            low, high = self.velocity_range
            return low + (high - low) * torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64)

    plain = RLTasks(Velocity(), seed=1, split="test")
    shifted = shift_source(plain, parse_shift("velocity=2:4"))
    assert torch.allclose((shifted.fixed(50) - 2) / 2, plain.fixed(50) / 2)
    with pytest.raises(ValueError, match="halfcheetah-vel"):
        shift_source(RLTasks(Navigation2D(), 1, "test"), parse_shift("velocity=2:4"))


@pytest.fixture(scope="module")
def sine():
    config = load_config("maml-sine", ["eval.tasks=12", "eval.batch_size=5", "eval.steps=[0,2]", "eval.shots=[5]"])
    torch.manual_seed(0)
    return config, build_learner(config)


def test_no_shift_and_an_identity_shift_equal_the_plain_evaluation_exactly(sine):
    config, learner = sine
    plain = evaluate_config(learner, config, build_tasks)
    assert evaluate_shift(learner, config, None) == plain
    assert evaluate_shift(learner, config, parse_shift("amplitude=0.1:5")) == plain  # the training range
    table = evaluate_shifts(learner, config, [parse_shift("amplitude=5:10"), parse_shift("shots=2")])
    assert table["in-distribution"]["results"] == plain
    moved = table["amplitude=5:10"]
    assert moved["results"][5][2]["loss"]["mean"] > plain[5][2]["loss"]["mean"]
    c = moved["change"][5][2]["loss"]
    assert c["mean"] == pytest.approx(moved["results"][5][2]["loss"]["mean"] - plain[5][2]["loss"]["mean"])
    assert c["ci95"] == pytest.approx(math.hypot(moved["results"][5][2]["loss"]["ci95"], plain[5][2]["loss"]["ci95"]))
    assert list(table["shots=2"]["results"]) == [2] and 2 in table["shots=2"]["change"]  # against 5-shot


def test_changes_compare_the_same_shots_and_steps():
    s = lambda m, c: {"loss": {"mean": m, "ci95": c}}  # noqa: E731
    got = changes({5: {1: s(1.0, 0.3)}}, {5: {1: s(3.0, 0.4)}})
    assert got[5][1]["loss"] == {"mean": 2.0, "ci95": pytest.approx(0.5)}


def test_protocol_shifts_that_a_run_cannot_take_are_refused_in_one_line():
    maml = load_config("maml-omniglot-5w1s", [])
    with pytest.raises(ConfigError, match=r"head of task\.ways=5"):
        shifted_config(maml, parse_shift("ways=20"))
    assert shifted_config(load_config("protonet-omniglot-5w1s", []), parse_shift("ways=20")).eval.ways == 20
    with pytest.raises(ConfigError, match="image classification"):
        shifted_config(load_config("maml-sine", []), parse_shift("split=evaluation"))


def test_eval_shift_from_the_command_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    overrides = ["train.iterations=2", "train.val_every=2", "train.val_tasks=4", "train.progress=false"]
    Trainer(load_config("maml-sine", overrides, out_dir=str(run))).fit()
    args = ["eval", run, "--tasks", "6", "--steps", "1", "--shots", "5"]
    code, out, err = cli(monkeypatch, capsys, *args, "--shift", "amplitude=5:10", "--shift", "x_range=-10:10")
    assert code == 0, err
    assert "in-distribution" in out and "amplitude=5:10" in out
    (result,) = (run / "evals").glob("*-shift-amplitude=5_10-x_range=-10_10.json")
    payload = json.loads(result.read_text())
    assert list(payload["conditions"]) == ["in-distribution", "amplitude=5:10", "x_range=-10:10"]
    assert payload["conditions"]["x_range=-10:10"]["size"] == 10.0 and result.with_suffix(".png").is_file()
    code, _, err = cli(monkeypatch, capsys, *args, "--checkpoint", "best", "--shift", "amplitude=5:10")
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    (result,) = (run / "evals").glob("*-shift-amplitude=5_10.json")
    assert code == 0 and json.loads(result.read_text())["checkpoint"].endswith(best["checkpoint"])
    code, _, err = cli(monkeypatch, capsys, *args, "--shift", "rotation=90")
    assert code == 2 and err.count("\n") == 1 and "applies to image tasks" in err


def test_task2vec_distance_is_zero_for_one_task_and_symmetric():
    a, b = torch.rand(50, dtype=torch.float64), torch.rand(50, dtype=torch.float64)
    assert float(task2vec_distance(a, a)) == pytest.approx(0.0, abs=1e-12)
    assert (
        float(task2vec_distance(a, b)) == pytest.approx(float(task2vec_distance(b, a)))
        and float(task2vec_distance(a, b)) > 0
    )


def test_a_narrower_task_distribution_has_a_lower_diversity_coefficient():
    torch.manual_seed(0)
    probe = MLP(1, [16, 16], 1).double()
    wide = SinusoidTasks(shots=10, queries=60, seed=2)
    narrow = shift_source(shift_source(wide, parse_shift("amplitude=1:1.01")), parse_shift("phase=0:0.01"))
    d_wide, d_narrow = (diversity_coefficient(probe, s, 4, head_steps=20) for s in (wide, narrow))
    assert d_wide["n"] == 6 and d_narrow["mean"] < d_wide["mean"] - d_wide["ci95"]
    with pytest.raises(ValueError, match="pairs"):
        diversity_coefficient(probe, wide, 1)


def test_a_meta_rl_shift_evaluates_beside_the_plain_protocol_it_equals_without_shift():
    config = load_config("maml-trpo-nav2d", ["eval.tasks=2", "eval.steps=[0,1]", "rl.eval_episodes=2", "rl.horizon=10"])
    torch.manual_seed(0)
    learner = build_learner(config)
    table = evaluate_shifts(learner, config, [parse_shift("goal=1:2")])
    assert table["in-distribution"]["results"] == {"rl": evaluate_rl(learner, config)}
    far = table["goal=1:2"]
    assert far["results"]["rl"][0]["return"]["mean"] < table["in-distribution"]["results"]["rl"][0]["return"]["mean"]
    assert set(far["change"]["rl"]) == {0, 1}


def test_the_shift_table_counts_diverged_tasks_and_gives_their_median():
    from innerloop.stats import summarize
    from innerloop.training.shift_eval import format_shift_table

    ok, diverged = summarize(torch.tensor([1.0, 2.0, 3.0])), summarize(torch.tensor([1.0, float("nan"), 5.0, 7.0]))
    table = {
        "in-distribution": {"results": {5: {10: {"loss": ok}}}},
        "x_range=10:15": {
            "results": {5: {10: {"loss": diverged}}},
            "change": changes({5: {10: {"loss": ok}}}, {5: {10: {"loss": diverged}}}),
        },
    }
    lines = format_shift_table(table).splitlines()
    assert "non-finite" not in lines[1]
    assert lines[2].startswith("x_range=10:15") and "[1/4 non-finite, median 5.000]" in lines[2]

"""Learned optimizers through the registry, the one trainer and the CLI (issue 21 items 3-4): every estimator
trains from a config, a resumed run repeats the uninterrupted one, the tuned baselines pick the best rate,
``innerloop eval`` writes its table beside earlier ones, and a bad config is one line."""

import json

import pytest
import torch
from cli_runner import cli  # tests/cli_runner.py

from innerloop.algorithms.step import Shard
from innerloop.core import LearnedOptimizer
from innerloop.tasks.seeding import derive_seed
from innerloop.training.config import load_config
from innerloop.training.launch import make_trainer
from innerloop.unroll import QuadraticTasks
from innerloop.unroll.compare import optim_curves, tune

TINY = [
    "algorithm.name=lopt",
    "task.name=quadratic",
    "model.hidden=[4]",
    "algorithm.horizon=6",
    "algorithm.truncation=2",
    "algorithm.rule=lopt-mlp",
    "algorithm.inner_lr=0.01",
    "train.meta_batch_size=2",
    "train.meta_lr=0.01",
    "train.val_every=2",
    "train.val_tasks=2",
    "train.val_train_tasks=2",
    "train.checkpoint_every=1",
    "train.log_every=1",
    "train.progress=false",
    "eval.tasks=3",
    "eval.steps=[0,4]",
    "algorithm.tune_tasks=2",
    "algorithm.tune_lrs=[0.01,0.1]",
]


def config(tmp_path, *extra, name="run"):
    return load_config(None, [*TINY, *extra], out_dir=str(tmp_path / name))


def train_cli(monkeypatch, capsys, out, *extra):
    """``innerloop train --config lopt-mlp-sine --out OUT`` with the tiny settings and ``extra`` overrides."""
    tiny = [o for o in TINY if not o.startswith("algorithm.name")]
    return cli(monkeypatch, capsys, "train", "--config", "lopt-mlp-sine", "--out", out, *tiny, *extra)


@pytest.mark.parametrize("estimator", ["full", "tbptt", "es", "pes"])
def test_each_estimator_meta_trains_from_a_config_and_saves_a_loadable_optimizer(tmp_path, estimator):
    extra = ["algorithm.truncation=6"] if estimator == "full" else []
    cfg = config(tmp_path, f"algorithm.estimator={estimator}", "train.iterations=3", *extra)
    trainer = make_trainer(cfg)
    before = {k: v.clone() for k, v in trainer.learner.meta().items()}
    summary = trainer.fit()
    after = trainer.learner.meta()
    assert (
        type(trainer.learner.estimator).__name__
        == {
            "full": "FullBPTT",
            "tbptt": "TruncatedBPTT",
            "es": "AntitheticES",
            "pes": "PersistentES",
        }[estimator]
    )
    assert summary["train"]["iteration"] == 3 and torch.isfinite(torch.tensor(summary["train"]["meta_loss"]))
    assert any(not torch.equal(before[k], after[k]) for k in after), "the meta-parameters never moved"
    assert "loss_6" in summary["val"] and "loss_6" in summary["meta_train"]
    path = trainer.last_checkpoint / "meta.safetensors"
    model = torch.nn.Linear(3, 2)
    opt = LearnedOptimizer.from_file(model.parameters(), path)  # the README's one line
    assert all(torch.equal(opt.meta[k], after[k]) for k in after)
    model(torch.randn(5, 3)).pow(2).sum().backward()
    w = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(w, model.weight)


GUARDED = ["algorithm.rule=adam-correction", "algorithm.scale_mult=1.0", "algorithm.guard=0.5"]  # state in every entry


@pytest.mark.parametrize(
    "mix", [[], ["algorithm.mix_hidden=[[6]]"], GUARDED], ids=["one-family", "mixture", "loss-guard"]
)
@pytest.mark.parametrize("estimator", ["pes"])
def test_resume_mid_run_repeats_the_uninterrupted_run(tmp_path, estimator, mix):
    """4 iterations straight == 2, then a new process resumed from the checkpoint for 2 more (mid-run: step 4 of 6,
    PES's accumulated perturbations non-zero), bit for bit: meta-parameters, optimizer and inner runs (of every
    family of a mixture)."""
    straight = make_trainer(config(tmp_path, f"algorithm.estimator={estimator}", "train.iterations=4", *mix, name="a"))
    straight.fit()
    first = make_trainer(config(tmp_path, f"algorithm.estimator={estimator}", "train.iterations=2", *mix, name="b"))
    first.fit()
    families = 2 if any(o.startswith("algorithm.mix_hidden") for o in mix) else 1
    assert first.learner.states.step == 4 and len(first.learner.all_states) == families
    if estimator == "pes":
        assert all(s.extra["xi"] for s in first.learner.all_states)
    resumed = make_trainer(
        config(tmp_path, f"algorithm.estimator={estimator}", "train.iterations=4", *mix, name="b"), resume=True
    )
    assert resumed.start_iteration == 2 and all(s.step == 4 for s in resumed.learner.all_states)
    resumed.fit()
    a, b = straight.learner.state_dict(), resumed.learner.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("inner.") for k in a)
    assert any(k.startswith("inner.family1.") for k in a) == (families == 2)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert straight.learner.states.tasks == resumed.learner.states.tasks


def test_the_tuned_baseline_picks_the_rate_that_is_known_best():
    """Unit curvatures: gradient descent at rate 1 lands on the minimum in one step (loss 0); 0.3 converges
    slowly, 3 diverges (|1 - 3| > 1) and must score inf, not win by a NaN comparison."""
    family = QuadraticTasks(5, condition=1.0)
    sgd = lambda params, lr: torch.optim.SGD(params, lr=lr)  # noqa: E731
    best, scores = tune(family, [1, 2, 3], 8, sgd, [0.3, 1.0, 3.0, 1e6])
    assert best == 1.0 and scores[1] < 1e-10 < scores[0] and scores[3] == float("inf")
    curves = optim_curves(family, [1, 2], 3, sgd, 1.0)
    assert curves.shape == (2, 4) and curves[:, 1:].abs().max() < 1e-10 < curves[:, 0].min()


def test_eval_writes_its_table_and_figures_and_never_overwrites(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, _, err = train_cli(monkeypatch, capsys, run, "--no-evaluate", "train.iterations=2")
    assert code == 0, err
    code, out, err = cli(monkeypatch, capsys, "eval", run)
    assert code == 0, err
    assert "| in-distribution: quadratic [4] | 4 |" in out and "width x4: quadratic [16]" in out
    evals = run / "evals"
    first = sorted(evals.iterdir())
    assert {p.suffix for p in first} == {".json", ".md", ".png"} and len(first) == 4  # json, md, curves, response
    payload = json.loads(next(p for p in first if p.suffix == ".json").read_text())
    c = payload["conditions"][0]
    assert c["steps"] == 4 and c["optimizers"]["adam"]["final"]["n"] == 3 and set(c["lrs"]) == {"adam", "sgd-momentum"}
    stamps = {p: p.read_bytes() for p in first}
    code, _, err = cli(monkeypatch, capsys, "eval", run, "--tasks", "2", "--steps", "2")
    assert code == 0, err
    assert len(list(evals.iterdir())) == 8 and all(p.read_bytes() == b for p, b in stamps.items())
    code, _, err = cli(monkeypatch, capsys, "eval", run, "--output", next(p for p in first if p.suffix == ".json"))
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1


def test_a_chosen_condition_gives_the_numbers_of_the_full_comparison(tmp_path, monkeypatch, capsys):
    """compare_run(which=[i]) (benchmarks/lopt_seeds.py) runs condition i alone, with the full run's numbers."""
    from innerloop.analysis.lopt import compare_run
    from innerloop.training.builders import learner_from_checkpoint
    from innerloop.training.checkpoint import find_checkpoint, load_checkpoint

    run = tmp_path / "run"
    code, _, err = train_cli(monkeypatch, capsys, run, "--no-evaluate", "train.iterations=2")
    assert code == 0, err
    ckpt = load_checkpoint(find_checkpoint(run))
    learner = learner_from_checkpoint(ckpt)
    full = compare_run(learner, ckpt.config, echo=lambda _: None)["conditions"]
    for i in (0, 1):
        (alone,) = compare_run(learner, ckpt.config, echo=lambda _: None, which=[i])["conditions"]
        assert alone["condition"] == full[i]["condition"] and alone["optimizers"] == full[i]["optimizers"]
    assert full[0]["condition"].startswith("in-distribution") and full[1]["condition"].startswith("width x4")


def test_the_untrained_column_is_the_rule_the_run_started_from(tmp_path):
    from innerloop.analysis.lopt import initial_rule

    cfg = config(tmp_path, "train.seed=3")
    started = make_trainer(cfg).learner.rule.meta()  # before any meta-step
    torch.manual_seed(12345)  # the global random state does not matter
    untrained = initial_rule(cfg).meta()
    assert started.keys() == untrained.keys() and any(v.numel() for v in started.values())
    for name, value in started.items():
        assert torch.equal(value, untrained[name]), name
    other = initial_rule(config(tmp_path, "train.seed=4", name="other")).meta()
    assert any(not torch.equal(v, other[n]) for n, v in started.items())  # a random init: another seed differs


@pytest.mark.parametrize(
    "override, words",
    [
        ("algorithm.estimator=full", "algorithm.estimator=full backpropagates through whole runs"),
        ("algorithm.estimator=reinforce", "algorithm.estimator='reinforce' is not supported"),
        ("algorithm.truncation=20", "algorithm.truncation=20 exceeds algorithm.horizon=6"),
        ("algorithm.rule=sgd", "algorithm.rule='sgd' is not supported"),
        ("task.name=sinusoid", "algorithm.name=lopt meta-trains an optimizer on optimizer task families"),
        ("algorithm.scale_mult=-1", "algorithm.scale_mult must be zero or positive, got -1"),
        ("algorithm.scale_mult=1", "set it to 0 for algorithm.rule=lopt-mlp"),
        ("algorithm.max_scale=3", "algorithm.max_scale bounds the multiplier of Adam's step that algorithm.scale_mult"),
        ("algorithm.guard=0.5", "algorithm.guard gates the multiplier of Adam's step that algorithm.scale_mult"),
        ("algorithm.guard_decay=1", "algorithm.guard_decay must be in [0, 1), got 1"),
        ("algorithm.mix_hidden=[[4]]", "algorithm.mix_hidden must list networks other than model.hidden=[4]"),
        ("algorithm.mix_hidden=[[5],[6]]", "train.meta_batch_size=2 tasks per estimate do not split evenly over the 3"),
        ("algorithm.mix_hidden=[[5,5]]", "task.name=quadratic takes its dimension from algorithm.mix_hidden=[dim]"),
    ],
)
def test_a_bad_config_is_one_line(tmp_path, monkeypatch, capsys, override, words):
    code, _, err = train_cli(monkeypatch, capsys, tmp_path / "r", override)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "r").exists()


def test_other_algorithms_refuse_optimizer_families(tmp_path, monkeypatch, capsys):
    code, _, err = cli(
        monkeypatch, capsys, "train", "--config", "maml-sine", "--out", tmp_path / "r", "task.name=quadratic"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "task.name" in err, err


@pytest.mark.parametrize(("losses", "scale"), [([2.3, 0.5, 0.01], "log"), ([-0.25, -0.3, -0.41], "linear")])
def test_training_curves_use_a_log_axis_only_for_positive_losses(tmp_path, monkeypatch, losses, scale):
    """``objective=log`` makes the logged meta-loss negative: its curve is drawn on a linear axis, without a warning."""
    import warnings

    from innerloop import plots

    records = [{"iteration": i, "loss": v} for i, v in enumerate(losses)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    seen = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: seen.append(fig.axes[0].get_yscale()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.training_curves(tmp_path)
    assert seen == [scale]


def test_the_response_figures_adam_runs_at_the_learned_rules_own_rate():
    """AdamCorrection's ``lr`` attribute is the correction's scale (1e-3): the Adam beside it must use Adam's rate."""
    from innerloop.analysis.lopt import nominal_rate
    from innerloop.core.rules import AdamCorrection, MLPOptimizer

    rule = AdamCorrection(lr=0.03)
    with torch.no_grad():
        rule.log_lr.fill_(-3.0)  # as meta-training moves it
    assert nominal_rate(rule) == pytest.approx(torch.e**-3.0) and rule.lr == pytest.approx(1e-3)
    assert nominal_rate(AdamCorrection(lr=0.03, learn_lr=False)) == pytest.approx(0.03)
    assert nominal_rate(MLPOptimizer(lr=0.05)) == pytest.approx(0.05)


def test_a_mixture_averages_the_estimates_of_its_families_and_keeps_the_first_familys_runs(tmp_path):
    """With algorithm.mix_hidden the meta-gradient is the mean of each family's own estimate (its own runs and
    perturbations), and the first family's runs are exactly those of a run without the mixture."""
    alone = make_trainer(config(tmp_path, "train.iterations=1", "train.meta_batch_size=1", name="alone")).learner
    mixed = make_trainer(config(tmp_path, "train.iterations=1", "algorithm.mix_hidden=[[6]]", name="mixed")).learner
    assert [e.tasks for e in mixed.estimators] == [1, 1]
    assert [e.unroll.family.dim for e in mixed.estimators] == [4, 6] and "quadratic" in mixed.describe()
    assert torch.equal(alone.states.params["x"], mixed.all_states[0].params["x"])
    meta = mixed.meta()
    before = list(mixed.all_states)
    expected = [
        e.estimate(meta, s, seed) for e, s, seed in zip(mixed.estimators, before, [7, derive_seed(7, "family", 1)])
    ]
    optimizer = torch.optim.SGD(mixed.rule.meta().values(), lr=0.0)
    mixed.meta_step(None, optimizer, Shard(seed=7))
    for k, p in mixed.rule.meta().items():
        torch.testing.assert_close(p.grad, (expected[0][0][k] + expected[1][0][k]) / 2)
    assert not torch.equal(expected[0][0][next(iter(meta))], expected[1][0][next(iter(meta))])
    grad_alone, _, _ = alone.estimator.estimate(alone.meta(), alone.states, 7)
    assert all(torch.equal(grad_alone[k], expected[0][0][k]) for k in meta)  # the first family's part is unchanged
    assert torch.equal(mixed.all_states[1].params["x"], expected[1][1].params["x"])


def test_a_held_out_condition_the_mixture_trained_on_is_labelled_so(tmp_path):
    from innerloop.analysis.lopt import conditions

    labels = [label for label, _, _ in conditions(config(tmp_path, "algorithm.mix_hidden=[[16]]"))]
    assert labels[1] == "width x4: quadratic [16] (meta-trained on: algorithm.mix_hidden)"
    assert all("meta-trained on" not in label for label in labels[:1] + labels[2:])

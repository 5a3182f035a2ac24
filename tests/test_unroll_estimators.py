"""Meta-gradient estimators over long unrolls (issue 21): exactness, (un)biasedness, resume, learning."""

from __future__ import annotations

import pytest
import torch
from shared_data import SHARED, needs_omniglot
from torch import nn

from innerloop.core.rules import LearnedOptimizerLSTM, MetaSGDRates, MLPOptimizer, UpdateRule
from innerloop.errors import CheckpointError, ConfigError, TrainingDiverged
from innerloop.unroll import (
    AntitheticES,
    CharLMTasks,
    FullBPTT,
    ImageConvTasks,
    ImageMLPTasks,
    LinearRegressionTasks,
    MetaTraining,
    PersistentES,
    QuadraticTasks,
    SinusoidMLPTasks,
    TruncatedBPTT,
    Unroll,
    load_meta,
)

F64 = torch.float64


class LogRate(UpdateRule):
    """u = -exp(log_lr) g: the learning-rate tuning problem of Vicol et al. (2021), Fig. 1."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.log_lr = nn.Parameter(torch.tensor(float(lr), dtype=F64).log())

    def forward(self, grads, state, params, step, loss):
        return {n: -torch.exp(self.log_lr) * g for n, g in grads.items()}, state


class OneQuadratic(QuadraticTasks):
    """Every task seed is the same deterministic quadratic (so particles differ only by their perturbations)."""

    def inits(self, seeds):
        return {k: v.expand(len(seeds), *v.shape) for k, v in self.init(0).items()}

    def batches(self, seeds, start, count, split):
        return {k: v.expand(len(seeds), *v.shape) for k, v in self.stream(0, start, count, split).items()}


def full_objective(unroll: Unroll, meta, seed: int, tasks: int) -> torch.Tensor:
    """F(meta): the whole-horizon objective (truncation = horizon), mean over the tasks of ``seed``."""
    return unroll.run(meta, unroll.start(seed, tasks))[0].mean()


@pytest.mark.parametrize(
    ("objective", "rule_name"),
    [("mean", "lstm"), ("log", "lstm"), ("final", "lstm"), ("validation", "lstm"), ("mean", "mlp")],
)
def test_full_backprop_matches_finite_differences(objective, rule_name):
    torch.manual_seed(0)
    rule = LearnedOptimizerLSTM(0.1, hidden=3) if rule_name == "lstm" else MLPOptimizer(lr=0.05, hidden=4)
    unroll = Unroll(QuadraticTasks(3, noise=0.3, dtype=F64), rule, horizon=5, truncation=5, objective=objective)
    meta = {k: v.detach() + 0.1 * torch.randn_like(v) for k, v in rule.meta().items()}  # a live LSTM (W_out != 0)
    est = FullBPTT(unroll, tasks=2)
    grad, _, _ = est.estimate(meta, est.init_states(7), seed=0)
    direction = {k: torch.randn_like(v) for k, v in meta.items()}
    h = 1e-6
    plus = full_objective(unroll, {k: v + h * direction[k] for k, v in meta.items()}, 7, 2)
    minus = full_objective(unroll, {k: v - h * direction[k] for k, v in meta.items()}, 7, 2)
    numeric = (plus - minus) / (2 * h)
    analytic = sum((grad[k] * direction[k]).sum() for k in meta)
    assert abs(float(numeric)) > 1e-4
    assert torch.allclose(analytic, numeric, rtol=1e-6, atol=1e-9), (float(analytic), float(numeric))


def test_log_objective_is_the_mean_log_loss_and_splits_over_truncations():
    """``log``: F = 1/H sum_t log l_t, the same whether the run is one truncation or several."""
    rule = LogRate(0.3)
    whole = Unroll(QuadraticTasks(3, noise=0.3, dtype=F64), rule, horizon=6, truncation=6, objective="log")
    objective, losses, _, _ = whole.run(rule.meta(), whole.start(4, 2))
    assert torch.allclose(objective, losses.log().mean(1), rtol=1e-12)
    mean = Unroll(QuadraticTasks(3, noise=0.3, dtype=F64), rule, horizon=6, truncation=6, objective="mean")
    assert not torch.allclose(objective, mean.run(rule.meta(), mean.start(4, 2))[0])
    parts = Unroll(QuadraticTasks(3, noise=0.3, dtype=F64), rule, horizon=6, truncation=4, objective="log")
    states, total = parts.start(4, 2), torch.zeros(2, dtype=F64)
    for _ in range(2):
        piece, _, params, rule_state = parts.run(rule.meta(), states)
        total, states = total + piece, parts.advance(states, params, rule_state)
    assert torch.allclose(total, objective, rtol=1e-12)


def test_pes_is_unbiased_over_truncations_and_truncated_backprop_is_not():
    """Vicol et al. (2021) Fig. 1 setting: a learned log learning rate on a quadratic, H = 20, truncations of 4."""
    family, rule = OneQuadratic(2, condition=10.0, dtype=F64), LogRate(0.3)
    meta, H, T = rule.meta(), 20, 4
    full = FullBPTT(Unroll(family, rule, H, H), 1)
    exact = full.estimate(meta, full.init_states(0), 0)[0]["log_lr"]

    tbptt = TruncatedBPTT(Unroll(family, rule, H, T), 1)
    states, biased = tbptt.init_states(0), torch.zeros((), dtype=F64)
    for k in range(H // T):
        grad, states, _ = tbptt.estimate(meta, states, k)
        biased = biased + grad["log_lr"]
    assert states.step == 0 and states.resets == 1  # the run restarted at the horizon

    pes = PersistentES(Unroll(family, rule, H, T), tasks=500, sigma=1e-3)
    sums = []
    for r in range(8):  # independent PES runs over one whole inner run each
        states, total = pes.init_states(r), torch.zeros((), dtype=F64)
        for k in range(H // T):
            grad, states, _ = pes.estimate(meta, states, 1000 * r + k)
            total = total + grad["log_lr"]
        assert "xi" not in states.extra  # xi restarted with the runs
        sums.append(total)
    estimates = torch.stack(sums)
    mean, stderr = estimates.mean(), estimates.std() / len(sums) ** 0.5
    assert abs(mean - exact) < 4 * stderr, (float(mean), float(stderr), float(exact))
    assert abs(biased - exact) > 20 * stderr and abs(biased - exact) > 0.3 * abs(exact), (float(biased), float(exact))


def test_antithetic_es_matches_the_gradient_of_the_gaussian_smoothed_objective():
    """One step then the final loss: F(alpha) = 1/2 sum a (x0 - alpha g0 - c)^2 is quadratic in the rates alpha,
    so its Gaussian smoothing has the closed form F_sigma(alpha) = F(alpha) + sigma^2/2 sum a g0^2."""
    family, rule, sigma = OneQuadratic(3, condition=10.0, dtype=F64), MetaSGDRates(0.5), 0.2
    unroll = Unroll(family, rule, horizon=1, truncation=1, objective="final")
    meta = rule.meta()
    batch = family.stream(0, 0, 2, "train")
    a, c, x0 = batch["scale"][0], batch["target"][0], family.init(0)["x"]
    g0 = a * (x0 - c)

    def plain(alpha):
        return (0.5 * a * (x0 - alpha * g0 - c) ** 2).sum()

    def smoothed(alpha):
        return plain(alpha) + (0.5 * sigma**2 * a * g0**2).sum()

    alpha = meta["rates.x"].detach()
    assert torch.allclose(full_objective(unroll, {"rates.x": alpha}, 0, 1), plain(alpha))
    h = 1e-4
    eye = torch.eye(3, dtype=F64)
    numeric = torch.stack([(smoothed(alpha + h * e) - smoothed(alpha - h * e)) / (2 * h) for e in eye])

    es = AntitheticES(unroll, tasks=400, sigma=sigma)
    draws = torch.stack([es.estimate(meta, es.init_states(0), seed)[0]["rates.x"] for seed in range(10)])
    mean, stderr = draws.mean(0), draws.std(0) / 10**0.5
    assert (stderr > 0).all()
    assert ((mean - numeric).abs() < 4 * stderr).all(), (mean, stderr, numeric)


def pes_run(tmp_path, iterations: int, resume_at: int | None = None) -> MetaTraining:
    """PES meta-training of an LSTM optimizer on linear regression, optionally saved and resumed mid-run."""

    def fresh() -> MetaTraining:
        torch.manual_seed(0)
        unroll = Unroll(LinearRegressionTasks(4, batch_size=8, dtype=F64), LearnedOptimizerLSTM(0.05, hidden=3), 6, 2)
        return MetaTraining(PersistentES(unroll, tasks=2, sigma=0.01), lr=0.01, seed=3)

    run = fresh()
    if resume_at is None:
        run.run(iterations)
        return run
    run.run(resume_at)
    assert run.states.step == 4 and run.states.extra["xi"]  # mid inner run, PES accumulators live
    run.save(tmp_path / "ckpt")
    resumed = fresh()
    resumed.load(tmp_path / "ckpt")
    resumed.run(iterations - resume_at)
    return resumed


def test_resume_mid_meta_training_reproduces_the_uninterrupted_run(tmp_path):
    straight, resumed = pes_run(tmp_path, 5), pes_run(tmp_path, 5, resume_at=2)
    assert resumed.iteration == straight.iteration == 5
    for k, v in straight.meta.items():
        assert torch.equal(resumed.meta[k], v), k
    for k, v in straight.states.params.items():
        assert torch.equal(resumed.states.params[k], v), k
    exported = load_meta(tmp_path / "ckpt")
    assert set(exported) == set(straight.meta) and all(t.dtype == F64 for t in exported.values())


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    run = pes_run(tmp_path, 1)
    run.save(tmp_path / "ckpt")
    other = MetaTraining(TruncatedBPTT(run.estimator.unroll, tasks=2), seed=3)
    with pytest.raises(CheckpointError, match=r"PersistentES.*resume with the same settings"):
        other.load(tmp_path / "ckpt")


@pytest.mark.parametrize("estimator", ["tbptt", "pes"])
def test_short_meta_training_lowers_the_meta_loss(estimator):
    """A learning rate started 30x too small: meta-training over truncated runs raises it and the loss falls."""
    unroll = Unroll(QuadraticTasks(4, condition=10.0, noise=0.1, dtype=F64), LogRate(0.01), horizon=20, truncation=5)
    est = TruncatedBPTT(unroll, tasks=4) if estimator == "tbptt" else PersistentES(unroll, tasks=8, sigma=0.05)
    run = MetaTraining(est, lr=0.2, seed=0)
    before = run.evaluate(tasks=8)
    run.run(20)
    after = run.evaluate(tasks=8)
    assert after < 0.5 * before, (before, after)
    assert float(run.meta["log_lr"].exp()) > 0.05


@pytest.mark.parametrize("family", ["sine", "linear", "charlm"])
def test_vmap_and_loop_give_the_same_estimates(family):
    fam = {
        "sine": lambda: SinusoidMLPTasks((8,), batch_size=5, dtype=F64),
        "linear": lambda: LinearRegressionTasks(3, dtype=F64),
        "charlm": lambda: CharLMTasks(context=4, embed=3, hidden=(8,), batch_size=4, files=4, dtype=F64),
    }[family]()
    out = {}
    for strategy in ("vmap", "loop"):
        torch.manual_seed(0)
        unroll = Unroll(fam, LearnedOptimizerLSTM(0.05, hidden=3), 4, 2, "validation", strategy=strategy)
        est = PersistentES(unroll, tasks=2, sigma=0.01)
        meta = unroll.rule.meta()
        _, states, _ = est.estimate(meta, est.init_states(1), 0)
        grad2, _, _ = est.estimate(meta, states, 1)
        tb = TruncatedBPTT(unroll, tasks=2)
        out[strategy] = (grad2, tb.estimate(meta, tb.init_states(1), 0)[0])
    for a, b in zip(out["vmap"], out["loop"]):
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-10, atol=1e-12), k


def test_settings_are_checked_in_one_line():
    family, rule = QuadraticTasks(2, dtype=F64), LogRate(0.1)
    with pytest.raises(ConfigError, match="objective must be one of"):
        Unroll(family, rule, 10, 5, objective="last")
    with pytest.raises(ValueError, match="truncation=10"):
        FullBPTT(Unroll(family, LogRate(0.1), 10, 5), tasks=1)
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        Unroll(family, LogRate(0.1), 0, 5)


@needs_omniglot
def test_omniglot_mlp_family_trains_and_is_seeded():
    from innerloop.data import omniglot

    images = omniglot(SHARED, "vinyals-val")  # 28 x 28
    family = ImageMLPTasks(images, hidden=(16,), classes=5, batch_size=10, dtype=F64)
    a, b = family.batch(11, 3, "train"), family.batch(11, 3, "train")
    assert torch.equal(a["x"], b["x"]) and a["x"].shape == (10, 784) and int(a["y"].max()) < 5
    assert not torch.equal(a["x"], family.batch(11, 3, "val")["x"])
    for fam in (family, ImageConvTasks(images, (4, 4), classes=5, batch_size=10, dtype=F64)):
        unroll = Unroll(fam, MetaSGDRates(0.1), horizon=4, truncation=2, objective="validation")
        run = MetaTraining(TruncatedBPTT(unroll, tasks=2), lr=0.01)
        first, second = run.run(2)
        assert 0 < second["inner_loss"] < first["inner_loss"] * 1.5 < 1.5 * 5  # near ln 5 at the start, finite


def test_a_diverging_meta_training_stops_in_one_line(tmp_path):
    """A rule whose step explodes: the non-finite meta-loss is refused, naming the last checkpoint."""
    unroll = Unroll(QuadraticTasks(3, dtype=F64), LogRate(1e6), horizon=40, truncation=40)
    run = MetaTraining(TruncatedBPTT(unroll, tasks=1))
    run.save(tmp_path / "ckpt")
    with pytest.raises(TrainingDiverged, match=r"iteration 0: the meta-gradient or meta-loss is not finite.*ckpt"):
        run.step()

"""The evaluation of a meta-trained optimizer (``innerloop eval RUN`` on an ``algorithm.name=lopt`` run): loss after
N inner steps on held-out tasks of the meta-training family and on held-out families (width, depth, horizon,
data, architecture), against ``torch.optim.Adam`` and ``SGD(momentum=0.9)`` tuned on meta-training tasks
(:mod:`innerloop.unroll.compare`); the table, the loss-curve figure and the learned update's response curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..plots import plt, save_figure
from ..registry.builtin_lopt import IMAGE_FAMILIES, build_rule, optimizer_family
from ..tasks.seeding import split_seed
from ..unroll import TaskFamily
from ..unroll.compare import BASELINES, learned_curves, optim_curves, paired, summary, tune
from ..unroll.learner import OptimizerTasks
from .rules import response_curves

NAMES = {
    "learned": "learned",
    "untrained": "learned, untrained",
    "adam": "Adam (tuned)",
    "sgd-momentum": "SGD-m 0.9 (tuned)",
}


def conditions(cfg) -> list[tuple[str, TaskFamily, int]]:
    """``(label, family, N)``: the meta-training family (in-distribution), then its held-out variants."""
    name, hidden, n = cfg.task.name, list(cfg.model.hidden), max(cfg.eval.steps)
    mixed = [list(h) for h in cfg.algorithm.mix_hidden]

    def seen(widths: list[int]) -> str:  # a network the rule was also meta-trained on is not held out
        return " (meta-trained on: algorithm.mix_hidden)" if widths in mixed else ""

    out = [(f"in-distribution: {name} {hidden}", optimizer_family(cfg), n)]
    wide = [4 * h for h in hidden]
    out.append((f"width x4: {name} {wide}{seen(wide)}", optimizer_family(cfg, hidden=wide), n))
    if name not in ("quadratic", "linear", "omniglot-conv"):
        deep = [*hidden, hidden[-1]]
        out.append((f"depth +1: {name} {deep}{seen(deep)}", optimizer_family(cfg, hidden=deep), n))
    out.append((f"horizon x4: {name} {hidden}, N={4 * n}", optimizer_family(cfg), 4 * n))
    if name in IMAGE_FAMILIES:
        out.append((f"data: {cfg.task.test_split} alphabets", optimizer_family(cfg, split="test"), n))
    if name == "omniglot-mlp":
        out.append(("architecture: conv net [8, 8]", optimizer_family(cfg, hidden=[8, 8], name="omniglot-conv"), n))
    return out


def initial_rule(cfg):
    """The rule a run of ``cfg`` started meta-training from (the trainer seeds ``train.seed`` before building it), drawn
    without touching the global random state: the "untrained" column."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_rule(cfg)


def compare_run(learner, cfg, echo=print, which: Sequence[int] | None = None) -> dict:
    """Every condition's curves and summaries (``learner``: a ``LearnedOptimizerLearner``, meta-trained); ``which``:
    the indices of :func:`conditions` to run (default all; 0 is in-distribution)."""
    a, e = cfg.algorithm, cfg.eval
    test = OptimizerTasks(split_seed(cfg.train.seed, e.seed, "test")).task_seeds(range(e.tasks))
    seen = OptimizerTasks(learner.run_seed, cfg.train.meta_batch_size).task_seeds(range(a.tune_tasks))
    tuned: dict[tuple[str, int], tuple[float, list[float]]] = {}
    untrained = initial_rule(cfg)
    results = []
    chosen = conditions(cfg)
    for label, family, n in chosen if which is None else [chosen[i] for i in which]:
        echo(f"evaluating {label} ({e.tasks} tasks, {n} steps)")
        curves = {
            "learned": learned_curves(family, learner.rule, learner.meta(), test, n),
            "untrained": learned_curves(family, untrained, untrained.meta(), test, n),
        }
        lrs = {}
        for opt, make in BASELINES.items():
            if (opt, n) not in tuned:  # tuned once per horizon, on the meta-training family's own tasks
                tuned[opt, n] = tune(learner.family, seen, n, make, a.tune_lrs)
            lrs[opt] = tuned[opt, n][0]
            curves[opt] = optim_curves(family, test, n, make, lrs[opt])
        results.append(
            {
                "condition": label,
                "family": family.describe(),
                "steps": n,
                "lrs": lrs,
                "tuning_scores": {opt: tuned[opt, n][1] for opt in BASELINES},
                "optimizers": {k: summary(v) for k, v in curves.items()},
                "learned_vs_adam": paired(curves["learned"], curves["adam"]),
                "learned_vs_sgd": paired(curves["learned"], curves["sgd-momentum"]),
            }
        )
    return {
        "rule": learner.rule.describe(),
        "estimator": learner.estimator.describe(),
        "truncation": a.truncation,
        "tasks": e.tasks,
        "seed": e.seed,
        "tune_tasks": a.tune_tasks,
        "tune_lrs": list(a.tune_lrs),
        "conditions": results,
    }


def _ratio(c: dict) -> float:
    """Learned / Adam final loss (nan where Adam's is exactly 0)."""
    learned, adam = (c["optimizers"][k]["final"]["mean"] for k in ("learned", "adam"))
    return learned / adam if adam else math.nan


def format_markdown(payload: dict) -> str:
    """The table: loss after N steps, mean ± 95% CI over tasks, per condition; the paired difference to Adam."""
    rows = [
        "| condition | N | learned | untrained | Adam (tuned lr) | SGD-m 0.9 (tuned lr) | learned - Adam, paired | "
        "wins | learned / Adam |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = _ratio(payload["conditions"][0])
    for c in payload["conditions"]:
        o, d = c["optimizers"], c["learned_vs_adam"]

        def cell(k: str, o=o) -> str:
            return f"{o[k]['final']['mean']:.3g} ± {o[k]['final']['ci95']:.2g}"

        drop = "" if c is payload["conditions"][0] else f" (drop {_ratio(c) - base:+.3f})"
        rows.append(
            f"| {c['condition']} | {c['steps']} | {cell('learned')} | {cell('untrained')} | {cell('adam')} "
            f"({c['lrs']['adam']:.3g}) | {cell('sgd-momentum')} ({c['lrs']['sgd-momentum']:.3g}) | "
            f"{d['mean']:+.3g} ± {d['ci95']:.2g} | {d['wins']}/{d['tasks']} | {_ratio(c):.3f}{drop} |"
        )
    head = (
        f"Loss after N inner steps (mean ± 95% CI over {payload['tasks']} held-out tasks, seed {payload['seed']}); "
        f"{payload['rule']} trained by {payload['estimator']}; Adam and SGD-momentum tuned over "
        f"{len(payload['tune_lrs'])} rates on {payload['tune_tasks']} meta-training tasks. "
        "drop: learned / Adam here minus in-distribution."
    )
    return head + "\n\n" + "\n".join(rows) + "\n"


def curves_figure(payload: dict, path: Path) -> Path:
    """One panel per condition: mean training loss (95% CI band) against inner steps, learned vs Adam vs SGD-m."""
    conds = payload["conditions"]
    cols = min(3, len(conds))
    rows = -(-len(conds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, c in zip(axes.flat, conds):
        for key in ("learned", "adam", "sgd-momentum", "untrained"):
            s = c["optimizers"][key]
            mean, ci = torch.tensor(s["curve"]), torch.tensor(s["ci95"])
            t = torch.arange(len(mean))
            line = ax.plot(t, mean, label=NAMES[key], ls=":" if key == "untrained" else "-")[0]
            ax.fill_between(t, mean - ci, mean + ci, color=line.get_color(), alpha=0.2)
        ax.set_title(c["condition"], fontsize=8)
        ax.set_xlabel("inner step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
    for ax in list(axes.flat)[len(conds) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return save_figure(fig, path)


def nominal_rate(rule) -> float:
    """The step size of the rule's plain-Adam counterpart: ``AdamCorrection``'s Adam rate (meta-learned when
    ``learn_lr``), else the rule's nominal step ``lr`` (MLP rules), else 1e-3. (``AdamCorrection.lr`` is the
    correction's scale, not a step size.)"""
    if hasattr(rule, "adam_rate"):
        return float(torch.as_tensor(rule.adam_rate()).detach())
    return float(getattr(rule, "lr", 1e-3))


def response_figure(learner, path: Path, scale: float = 1.0) -> Path:
    """The learned update u(g) of one tensor's coordinates for swept gradients g, after a few steps of a constant
    gradient (momentum history) h * scale (:func:`innerloop.analysis.rules.response_curves`), beside Adam's."""
    from ..core.rules import Adam

    params = {k: v[0] for k, v in learner.family.inits([0]).items()}
    lr = nominal_rate(learner.rule)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (title, rule) in zip(axes, (("learned", learner.rule), (f"Adam, lr {lr:.3g} (the learned rule's)", None))):
        rule = rule if rule is not None else Adam(lr=lr)
        rule.bind({n: p.shape for n, p in params.items()}, 1, next(iter(params.values())))
        r = response_curves(rule, params, scale=scale, history=(0.0, 0.5, -0.5, 1.0))
        for name, u in r["curves"].items():
            ax.plot(r["g"], u, label=name.replace("history", "momentum history h"))
        ax.set_title(f"{title}: update of {r['probe']}", fontsize=9)
        ax.set_xlabel("gradient g")
        ax.set_ylabel("update u")
        ax.axhline(0, color="0.7", lw=0.5)
        ax.legend(fontsize=7)
    return save_figure(fig, path)

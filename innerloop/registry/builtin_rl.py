"""innerloop's meta-RL learners and task families, as registry entries (the supervised ones: ``builtin.py``)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..validate import require_bounds
from . import options as o
from .entries import AlgorithmEntry, BuildInputs, TaskFamilyEntry


# --------------------------------------------------------------------------- builders
def _policy(inputs: BuildInputs):
    """The caller's policy, or an MLP policy of widths model.hidden that fits the family."""
    from ..rl.policies import make_policy

    model, r = inputs.model, inputs.config.rl
    if model is None:
        m = inputs.config.model
        return make_policy(inputs.family, hidden=tuple(m.hidden), init_std=r.init_std, activation=m.activation)
    if getattr(model, "distribution", None) is None:
        raise ConfigError(
            f"meta-RL needs a policy (innerloop.rl.policies: a module with an action `distribution`), "
            f"got a {type(model).__name__}; pass none to build the default policy"
        )
    return model


def _policy_gradient(inputs: BuildInputs) -> dict[str, Any]:
    a, r = inputs.options, inputs.config.rl
    common: dict[str, Any] = dict(
        inner_lr=list(r.inner_lrs) if r.inner_lrs else a.inner_lr,
        inner_steps=a.inner_steps,
        episodes=r.episodes,
        eval_episodes=r.eval_episodes,
        first_order=a.first_order,
        gamma=r.gamma,
        gae_lambda=r.gae_lambda,
    )
    if r.estimator:
        common["estimator"] = r.estimator
    return common


def _build_maml_trpo(entry: AlgorithmEntry, inputs: BuildInputs):
    r = inputs.config.rl
    trpo = dict(
        max_kl=r.max_kl,
        cg_iterations=r.cg_iterations,
        cg_damping=r.cg_damping,
        backtrack_ratio=r.backtrack_ratio,
        max_backtracks=r.max_backtracks,
    )
    return entry.learner_class()(_policy(inputs), inputs.family, **trpo, **_policy_gradient(inputs))


def _build_promp(entry: AlgorithmEntry, inputs: BuildInputs):
    r = inputs.config.rl
    promp = dict(
        clip=r.clip,
        outer_steps=r.outer_steps,
        inner_kl_target=r.inner_kl_target,
        inner_kl_coef=r.inner_kl_coef,
        adaptive_kl=r.adaptive_kl,
    )
    return entry.learner_class()(_policy(inputs), inputs.family, **promp, **_policy_gradient(inputs))


def _build_rl2(entry: AlgorithmEntry, inputs: BuildInputs):
    from ..rl.recurrent import RecurrentPolicy

    a, r, family = inputs.options, inputs.config.rl, inputs.family
    policy = inputs.model
    if policy is None:
        policy = RecurrentPolicy(family.observation_dim, family.action_dim, family.discrete, a.hidden_size, r.init_std)
    elif not isinstance(policy, RecurrentPolicy):
        raise ConfigError(
            f"rl2 needs a RecurrentPolicy (innerloop.rl.recurrent), got a {type(policy).__name__}; "
            "pass none to build the default GRU policy"
        )
    options = ("episodes_per_trial", "trials", "clip", "epochs", "minibatches", "value_coef", "entropy_coef")
    return entry.learner_class()(
        policy,
        family,
        **{name: getattr(a, name) for name in options},
        gamma=r.gamma,
        gae_lambda=r.gae_lambda,
        eval_trials=a.eval_trials or r.eval_episodes,
    )


def _pearl_train_tasks(inputs: BuildInputs, num_tasks: int):
    """PEARL's fixed training tasks: a seeded subset of a finite training set (Meta-World's goals), else draws."""
    import torch

    from ..tasks.seeding import seeded_generator

    if inputs.tasks is None:
        raise ConfigError("pearl trains on fixed training tasks: build it with the config's task sources")
    if not (isinstance(num_tasks, int) and num_tasks >= 1):
        raise ConfigError(f"algorithm.train_tasks must be a positive number of training tasks, got {num_tasks!r}")
    source, finite = inputs.tasks("train"), getattr(inputs.family, "train", None)
    if finite is None:
        return source.sample(0, range(num_tasks))
    if num_tasks > len(finite):
        raise ConfigError(
            f"algorithm.train_tasks={num_tasks} but {inputs.family.name} has {len(finite)} training tasks; "
            f"set algorithm.train_tasks <= {len(finite)}"
        )
    chosen = torch.randperm(len(finite), generator=seeded_generator(source.seed, "pearl-train"))[:num_tasks]
    return chosen.sort().values.to(torch.float64).unsqueeze(1)


def _build_pearl(entry: AlgorithmEntry, inputs: BuildInputs):
    import dataclasses

    a, c = inputs.options, inputs.config
    common = {f.name for f in dataclasses.fields(o.AlgorithmOptions)} | {"train_tasks", "encoder_hidden"}
    own = {f.name: getattr(a, f.name) for f in dataclasses.fields(a) if f.name not in common}
    return entry.learner_class()(
        inputs.family,
        _pearl_train_tasks(inputs, a.train_tasks),
        hidden=tuple(c.model.hidden),
        encoder_hidden=tuple(a.encoder_hidden),
        meta_batch=c.train.meta_batch_size,
        gamma=c.rl.gamma,
        eval_episodes=c.rl.eval_episodes,
        **own,
    )


def _check_rl2(config) -> None:
    """PPO's weights and clip in their ranges (a clip <= 0 would turn the clamp around); counts: the learner."""
    a = config.algorithm
    require_bounds(
        "rl2",
        a,
        ("clip", not a.clip > 0, "> 0"),
        ("value_coef", not a.value_coef >= 0, ">= 0"),
        ("entropy_coef", not a.entropy_coef >= 0, ">= 0"),
        ("hidden_size", not (isinstance(a.hidden_size, int) and a.hidden_size >= 1), "a positive integer"),
        ("eval_trials", a.eval_trials is not None and not a.eval_trials >= 1, ">= 1 (or null)"),
        error=ConfigError,
    )


def _check_pearl(config) -> None:
    """SAC's constants in their ranges, before the environments are built."""
    from ..rl.pearl import check_sac_constants

    a = config.algorithm
    check_sac_constants(a.temperature, a.reward_scale, a.tau, a.kl_weight, a.policy_reg)


# --------------------------------------------------------------------------- entries
RL_ALGORITHMS = [
    AlgorithmEntry(
        "maml-trpo",
        "innerloop.rl:MAMLTRPO",
        o.PolicyGradientOptions,
        _build_maml_trpo,
        kinds=("rl",),
        builds_model=True,
        activation=True,
        meta_optimizer=False,
        preset="maml-trpo-nav2d",
    ),
    AlgorithmEntry(
        "promp",
        "innerloop.rl:ProMP",
        o.PolicyGradientOptions,
        _build_promp,
        kinds=("rl",),
        builds_model=True,
        activation=True,
        preset="promp-nav2d",
    ),
    AlgorithmEntry(
        "rl2",
        "innerloop.rl:RL2",
        o.RL2Options,
        _build_rl2,
        kinds=("rl",),
        builds_model=True,
        episodic=True,
        preset="rl2-nav2d",
        check=_check_rl2,
    ),
    AlgorithmEntry(
        "pearl",
        "innerloop.rl.pearl:PEARL",
        o.PEARLOptions,
        _build_pearl,
        kinds=("rl",),
        builds_model=True,
        episodic=True,
        preset="pearl-nav2d",
        check=_check_pearl,
    ),
]

# --------------------------------------------------------------------------- task families
_RL_HARMLESS = ("workers", "eval_episodes", "eval_lrs", "success_episodes")  # rl.* keys that may change on --resume
RL_FAMILY_HARMLESS = ("task.root", "task.download", *(f"rl.{key}" for key in _RL_HARMLESS))
TRAJECTORIES = ("nav2d",)  # meta-RL families whose observations are positions in the plane


def rl_families() -> list[TaskFamilyEntry]:
    """One entry per meta-RL family of ``innerloop.rl.envs.FAMILIES`` (read lazily: it imports the environments)."""
    from ..rl.envs import FAMILIES

    return [
        TaskFamilyEntry(
            name,
            "rl",
            family=f"innerloop.rl.envs{module}:{cls}",
            harmless=RL_FAMILY_HARMLESS,
            trajectories=name in TRAJECTORIES,
        )
        for name, (module, cls) in FAMILIES.items()
    ]

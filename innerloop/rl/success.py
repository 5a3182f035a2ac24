"""Meta-World's meta-learning evaluation protocol: adapt on each test goal, then score success.

As ``metaworld.evaluation.metalearning_evaluation`` (McLean et al. 2025): for each test task (a goal
of a test class) start from the meta-learned policy, take ``adaptation_steps`` adaptation steps, each
on ``adaptation_episodes`` full-length episodes of the current policy, then play
``evaluation_episodes`` episodes with the adapted policy, each ending at its first success. A goal's
success rate is the fraction of those episodes that succeeded; a class's is the mean over its goals;
the overall rate is the mean over classes, the return the mean over all scored episodes. The same protocol on
the training classes' goals (``split="train"``) gives the meta-train success rate that ML10 and ML45 report.

Departures: every listed test goal is evaluated once, in the family's interleaved order (the package
cycles each of ``meta_batch_size`` environments through a shuffled share of the goals for ``num_evals``
rounds, and with several environments per class scores the first ``evaluation_episodes`` episodes that
finish, which favours early successes); 95% intervals over goals are added.
:class:`MetaWorldAgent` runs an innerloop learner in the package's own harness.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch.func import vmap

from ..core.rules import SGD
from ..errors import ConfigError
from ..stats import summarize
from ..tasks.seeding import derive_seed
from .envs.base import task_streams
from .sampler import Episodes, rollout


@runtime_checkable
class ScoresItsOwnAdaptation(Protocol):
    """A learner that adapts its own way under the protocol (RL²: one trial with its hidden state kept; PEARL:
    posterior inference), instead of :func:`adapt_and_score`'s gradient steps; same arguments and result."""

    adapts_by: str  # how it adapts, as the evaluation header says it ("its hidden state, kept over the trial")

    def adapt_and_score(
        self,
        tasks: torch.Tensor,
        adaptation_steps: int,
        adaptation_episodes: int,
        evaluation_episodes: int,
        seed: int,
        rule=None,
        task_ids: Sequence[int] | None = None,
        deterministic: bool = False,
    ) -> Episodes: ...


def adapt_and_score(
    learner,
    tasks: torch.Tensor,
    adaptation_steps: int,
    adaptation_episodes: int,
    evaluation_episodes: int,
    seed: int,
    rule=None,
    task_ids: Sequence[int] | None = None,
    deterministic: bool = False,
) -> Episodes:
    """The scored episodes (``success`` and returns) of ``tasks`` after the protocol's adaptation."""
    family, rule = learner.family, rule or learner.rule
    fast = {n: p.detach().expand(len(tasks), *p.shape) for n, p in learner.params().items()}
    state = None
    for k in range(adaptation_steps):
        played = rollout(
            family, tasks, learner, fast, adaptation_episodes, derive_seed(seed, k), per_task=True, task_ids=task_ids
        )
        fast, state = learner._sample_step(rule, fast, state, learner.process(played), k, first=k == 0)
    family.terminate_on_success = True
    try:
        return rollout(
            family,
            tasks,
            learner,
            fast,
            evaluation_episodes,
            derive_seed(seed, "scored"),
            per_task=True,
            deterministic=deterministic,
            task_ids=task_ids,
        )
    finally:
        family.terminate_on_success = False


def metaworld_evaluation(
    learner,
    num_tasks: int | None = None,
    adaptation_steps: int = 1,
    adaptation_episodes: int = 10,
    evaluation_episodes: int = 3,
    seed: int = 0,
    lrs: Sequence[float] | None = None,
    batch_size: int = 20,
    deterministic: bool = False,
    split: str = "test",
) -> dict:
    """Success rate and return per test class and overall (the package's defaults: 1 step, 10 + 3 episodes).

    ``num_tasks`` goals (default all) of ``learner.family``'s ``split``: ``"test"``, the meta-test success rate,
    or ``"train"``, the meta-training classes' goals (ML10's and ML45's meta-train success rate), ``batch_size`` at a time (each goal
    has its own random stream: results do not depend on the batch size). ``lrs``: the adaptation
    steps' rates (default the learner's update rule). Returns ``{"classes": {name: {"success": summary,
    "return": summary}}, "overall": {...}, "goals": [...]}`` with summaries over goals (``stats.summarize``).
    """
    family = learner.family
    tasks = family.split_tasks(split, num_tasks)
    rule = SGD(list(lrs)) if lrs else learner.rule
    success, returns = [], []
    was_training = learner.training
    learner.eval()
    try:
        for start in range(0, len(tasks), batch_size):
            ids = range(start, min(start + batch_size, len(tasks)))
            own = isinstance(learner, ScoresItsOwnAdaptation)
            scored = (learner.adapt_and_score if own else functools.partial(adapt_and_score, learner))(
                tasks[ids.start : ids.stop],
                adaptation_steps,
                adaptation_episodes,
                evaluation_episodes,
                seed,
                rule,
                ids,
                deterministic,
            )
            if scored.success is None:
                raise ConfigError(f"{family.name} does not report success; this protocol is for Meta-World families")
            success.append(scored.success.double().mean(-1))
            returns.append(scored.returns().double().mean(-1))
    finally:
        learner.train(was_training)
    per_goal_success, per_goal_return = torch.cat(success), torch.cat(returns)
    names = [family.task(row).env_name for row in tasks]
    classes = {}
    for name in dict.fromkeys(names):
        rows = torch.tensor([n == name for n in names])
        classes[name] = {"success": summarize(per_goal_success[rows]), "return": summarize(per_goal_return[rows])}
    overall_success = summarize(per_goal_success)
    overall_success["mean"] = float(np.mean([c["success"]["mean"] for c in classes.values()]))  # mean over classes
    return {
        "classes": classes,
        "overall": {"success": overall_success, "return": summarize(per_goal_return)},
        "goals": [
            {"task": int(row[0]), "class": n, "success": float(s), "return": float(r)}
            for row, n, s, r in zip(tasks, names, per_goal_success, per_goal_return)
        ],
        "protocol": {
            "adaptation": learner.adapts_by if own else f"gradient steps of {rule.describe()}",
            "adaptation_steps": adaptation_steps,
            "adaptation_episodes": adaptation_episodes,
            "evaluation_episodes": evaluation_episodes,
            "tasks": len(tasks),
            "split": split,
            "seed": seed,
        },
    }


def format_success(results: dict) -> str:
    """Aligned table: success rate (%) and return per class and overall, mean ± 95% CI over goals."""
    split = results["protocol"].get("split", "test")
    lines = [f"{split + ' class':<28}{'goals':>6}{'success %':>18}{'return':>22}"]
    rows = [*results["classes"].items(), ("overall", results["overall"])]
    for name, r in rows:
        s, ret = r["success"], r["return"]
        success = f"{100 * s['mean']:.1f} ± {100 * s['ci95']:.1f}"
        lines.append(f"{name:<28}{s['n']:>6}{success:>18}{ret['mean']:>13.1f} ± {ret['ci95']:.1f}")
    return "\n".join(lines)


class MetaWorldAgent:
    """An innerloop policy-gradient learner as the package's ``MetaLearningAgent``, for
    ``metaworld.evaluation.metalearning_evaluation(agent, gym.make_vec("Meta-World/ML1-test", ...))``.

    ``init`` starts every environment from the meta-learned parameters, ``adapt_action`` / ``step``
    record the adaptation episodes, ``adapt`` takes one inner step of ``rule`` (default the learner's)
    on them, ``eval_action`` acts with the adapted parameters (the distribution's mode when
    ``deterministic``). Exploration noise is drawn as :func:`adapt_and_score` draws it for task id
    ``round * num_envs + env`` (``seed``, ``horizon`` and the episode counts as given to it), and actions
    are clipped to ``[-1, 1]`` as innerloop's environments clip them: with one environment per class
    the harness then plays exactly the episodes of :func:`metaworld_evaluation`.
    """

    def __init__(
        self,
        learner,
        adaptation_episodes: int = 10,
        evaluation_episodes: int = 3,
        seed: int = 0,
        rule=None,
        deterministic: bool = False,
    ) -> None:
        self.learner, self.rule, self.deterministic = learner, rule or learner.rule, deterministic
        self.episodes = {"adapt": adaptation_episodes, "scored": evaluation_episodes}
        self.seed = seed
        self.noise: torch.Tensor | None = None
        self.init()
        self.round = -1  # the harness calls init() before each round: the first is round 0

    def init(self) -> None:
        self.round = getattr(self, "round", -1) + 1
        self.fast: dict | None = None
        self.state, self.step_index = None, 0
        self.record: list = []  # the harness's Timesteps of the current adaptation step
        self.actions: list[np.ndarray] = []  # the actions before clipping (what the policy's log-probability sees)
        self.phase, self.noise = "adapt", None
        self.episode, self.t = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def _noise(self, num_envs: int, width: int) -> torch.Tensor:
        """``[num_envs, horizon, episodes, ...]`` noise of the current phase, as the sampler draws it."""
        if self.noise is None:
            seed = derive_seed(self.seed, self.step_index if self.phase == "adapt" else "scored")
            ids = [self.round * num_envs + n for n in range(num_envs)]
            shape = (self.learner.family.horizon, self.episodes[self.phase], width)
            distribution = self.learner.distribution
            noise = torch.stack([distribution.noise(shape, g) for g in task_streams(derive_seed(seed, "actions"), ids)])
            self.noise = noise
            self.episode, self.t = np.zeros(num_envs, dtype=np.int64), np.zeros(num_envs, dtype=np.int64)
            return noise
        return self.noise

    def _act(self, observations: np.ndarray, sample: bool) -> np.ndarray:
        obs = torch.as_tensor(observations.astype(np.float32)).to(next(iter(self.learner.params().values())).dtype)
        if self.fast is None:
            self.fast = {n: p.detach().expand(len(obs), *p.shape) for n, p in self.learner.params().items()}
        distribution = self.learner.distribution
        with torch.no_grad():
            out = vmap(self.learner)(self.fast, obs.unsqueeze(1)).squeeze(1)  # one environment per task
            if not sample:
                return distribution.mode(out).numpy()
            noise = self._noise(len(obs), out.shape[-1])
            rows = [
                noise[n, min(self.t[n], noise.shape[1] - 1), min(self.episode[n], noise.shape[2] - 1)]
                for n in range(len(obs))
            ]
            return distribution.sample(out, torch.stack(rows)).numpy()

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict]:
        action = self._act(observations, sample=True)
        self.actions.append(action)
        return np.clip(action, -1.0, 1.0).astype(np.float64), {}

    def step(self, timestep) -> None:
        self.record.append(timestep)
        self._advance(np.logical_or(timestep.terminated, timestep.truncated))

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        if self.phase != "scored":
            self.phase, self.noise = "scored", None
        action = self._act(observations, sample=not self.deterministic)
        if self.noise is not None:
            self.t += 1  # reset() starts the finished episodes afresh
        return np.clip(action, -1.0, 1.0).astype(np.float64)

    def reset(self, env_mask: np.ndarray) -> None:
        """Scored episodes: the masked environments start a new episode (a feed-forward policy keeps no state)."""
        if self.phase == "scored" and self.noise is not None:
            self.episode += env_mask
            self.t[env_mask] = 0

    def _advance(self, done: np.ndarray) -> None:
        if self.noise is not None:
            self.t += 1
            self.episode += done
            self.t[done] = 0

    def adapt(self) -> None:
        """One inner step on the recorded episodes (equal lengths: Meta-World never ends them early here)."""
        horizon = next(i + 1 for i, t in enumerate(self.record) if np.logical_or(t.terminated, t.truncated).all())
        episodes = len(self.record) // horizon

        def stacked(values: list) -> torch.Tensor:
            array = np.stack(values, axis=1)  # [N, E * H, ...]
            return torch.as_tensor(array).reshape(array.shape[0], episodes, horizon, *array.shape[2:])

        played = Episodes(
            stacked([t.observation.astype(np.float32) for t in self.record]),
            stacked(self.actions),
            stacked([t.reward for t in self.record]).float(),
            torch.ones(len(self.record[0].reward), episodes, horizon),
        )
        assert self.fast is not None
        self.fast, self.state = self.learner._sample_step(
            self.rule, self.fast, self.state, self.learner.process(played), self.step_index, first=self.step_index == 0
        )
        self.step_index, self.record, self.actions, self.noise = self.step_index + 1, [], [], None


__all__ = ["MetaWorldAgent", "adapt_and_score", "format_success", "metaworld_evaluation"]

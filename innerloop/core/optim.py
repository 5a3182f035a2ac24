"""Any update rule as a ``torch.optim.Optimizer``: ``LearnedOptimizer(model.parameters(), rule=MLPOptimizer())``.

The optimizer applies ``p += u`` with ``(u, state) = rule.run(grads, state, params, step, loss, meta)``: the same
function the functional inner loop calls, so a rule meta-trained in innerloop trains any model with the same weights.
Rules whose state is kept per tensor (``{name: ...}``) store it in ``self.state[p]``; others (the LSTM optimizers,
one state over all coordinates) in ``self.shared_state``; ``self.steps`` counts the calls of ``step``. The state dict
holds all of them and the meta-parameters, so a checkpoint resumes the same run.
Rules with a ``step_inplace`` method (the per-parameter MLPs, Adam) take the same step in place under no_grad
(accumulators and reused work buffers overwritten, no autograd graph): the torch.optim form's fast path.
``compile=True`` runs the per-parameter MLPs' ``step_compiled`` instead: the same step through ``torch.compile``,
fused into two passes over each tensor (the first steps compile it, tens of seconds; on a CPU it needs a C++
compiler).
Each parameter group's ``lr`` (default 1) multiplies the rule's update, ``p += lr u``, so ``torch.optim.lr_scheduler``
schedules a learned step (warm-up, decay) as it does any optimizer's; at 1 the rule steps as it was meta-trained.
Meta-parameters travel as safetensors files (:func:`save_meta`, :func:`load_meta`, :func:`load_rule`).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import rules as rules_module
from .rules import MetaLearnerLSTM, UpdateRule


def _reads_loss(rule: UpdateRule) -> bool:
    return any(getattr(m, "uses_loss", False) or isinstance(m, MetaLearnerLSTM) for m in rule.modules())


def _copied(tree: Any) -> Any:
    """Nested dicts of tensors with every tensor cloned."""
    if isinstance(tree, dict):
        return {k: _copied(v) for k, v in tree.items()}
    return tree.clone() if isinstance(tree, torch.Tensor) else tree


def hparams(rule: UpdateRule) -> dict[str, Any]:
    """The rule's constructor arguments: its ``hparams()``, else those of its ``__init__`` it keeps as attributes."""
    own = getattr(rule, "hparams", None)
    if callable(own):
        return dict(own())
    found = {}
    for name in inspect.signature(type(rule).__init__).parameters:
        value = getattr(rule, name, None)
        if isinstance(value, (int, float, str, bool, list, tuple)):
            found[name] = list(value) if isinstance(value, tuple) else value
    return found


def save_meta(path: str | Path, rule: UpdateRule, meta: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write the rule's meta-parameters (default: its own) to a safetensors file with the rule's class and settings."""
    tensors = {k: v.detach().contiguous().clone() for k, v in (meta if meta is not None else rule.meta()).items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"rule": type(rule).__name__, "hparams": json.dumps(hparams(rule))})
    os.replace(tmp, path)
    return path


def load_meta(path: str | Path) -> dict[str, torch.Tensor]:
    """The meta-parameters stored by :func:`save_meta`: ``name -> tensor``."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)


def load_rule(path: str | Path) -> tuple[UpdateRule, dict[str, torch.Tensor]]:
    """The rule named in a :func:`save_meta` file, rebuilt with its stored settings, and its meta-parameters."""
    with safe_open(str(path), framework="pt") as f:
        info = f.metadata() or {}
    cls = getattr(rules_module, info.get("rule", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, UpdateRule)):
        raise ValueError(
            f"{path} names no built-in update rule (metadata rule={info.get('rule')!r}); build the rule yourself "
            "and pass LearnedOptimizer(params, rule=..., meta=load_meta(path))"
        )
    return cls(**json.loads(info.get("hparams", "{}"))), load_meta(path)


class LearnedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that applies an innerloop update rule (module header).

    Args:
        params: ``model.parameters()``, ``model.named_parameters()`` (names reach the rule: rules with
            per-parameter meta-parameters, such as ``MetaSGDRates``, need the names they were trained with) or groups.
        rule: the update rule (copied: the optimizer never changes the caller's rule).
        meta: the rule's meta-parameters (e.g. :func:`load_meta`); default: the rule's own.
        steps: the trained number of inner steps, for rules whose meta-parameters depend on it (``lslr``).
        compile: take each step through ``torch.compile`` (per-parameter MLP rules: module header).

    A group's only setting is ``lr``, the multiplier of the rule's update (module header; default 1).
    """

    def __init__(
        self,
        params: Iterable,
        rule: UpdateRule,
        meta: Mapping[str, torch.Tensor] | None = None,
        steps: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__(params, {"lr": 1.0})
        for group in self.param_groups:
            other = sorted(set(group) - {"params", "param_names", "lr", "initial_lr"})  # initial_lr: a scheduler's
            if other:
                raise ValueError(
                    f"LearnedOptimizer groups take only lr (a multiplier of the learned update), got {other}: the "
                    "rule computes its own steps (weight decay, momentum: meta-train a rule with them)"
                )
        if not isinstance(rule, UpdateRule):
            raise TypeError(f"rule must be an innerloop UpdateRule, got {type(rule).__name__}")
        own = {k: v.detach() for k, v in rule.meta().items()} if meta is None else dict(meta)
        self.rule = copy.deepcopy(rule)
        self.rule.__dict__.pop("_shapes", None)  # a rule trained on another model: its meta is checked below
        tensors = [p for group in self.param_groups for p in group["params"]]
        if not tensors:
            raise ValueError("LearnedOptimizer got no parameters to optimize")
        self.names = self._names()
        like = tensors[0]
        self.rule.bind({n: p.shape for n, p in zip(self.names, tensors)}, steps, like.detach())
        self.meta = self._checked_meta(own)
        self.reads_loss = _reads_loss(self.rule)
        self.steps = 0
        self.per_tensor: bool | None = None  # known at the first step
        self.shared_state: Any = None
        self._scratch: dict[str, Any] = {}  # reused work buffers of in-place steps (not state)
        self.compile = bool(compile)
        self._compiled: dict[str, Any] = {}  # the compiled functions of step_compiled
        ready = getattr(self.rule, "compiled_ready", None)
        if self.compile and not (callable(ready) and ready()):
            why = "has no compiled step" if ready is None else "overrides forward or mlp, or second_moments alone"
            raise ValueError(
                f"compile=True: {self.rule.describe()} {why}; compile=True serves MLPOptimizer, AdamCorrection, "
                "FactoredMLPOptimizer and subclasses that change features, step_from or shared (else use compile=False)"
            )

    def _names(self) -> list[str]:
        if all("param_names" in group for group in self.param_groups):
            names = [n for group in self.param_groups for n in group["param_names"]]
        else:
            names = [f"p{i}" for i in range(sum(len(g["params"]) for g in self.param_groups))]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique, got duplicates among {names[:6]}...")
        return names

    @classmethod
    def from_file(cls, params: Iterable, path: str | Path, steps: int = 1) -> LearnedOptimizer:
        """The optimizer of a :func:`save_meta` file, in one line."""
        rule, meta = load_rule(path)
        return cls(params, rule=rule, meta=meta, steps=steps)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict with the step count, a shared rule state and the meta-parameters."""
        extra = {"step": self.steps, "per_tensor": self.per_tensor, "shared_state": self.shared_state}
        own = super().state_dict()
        own["state"] = _copied(own["state"])  # a snapshot: in-place steps update the live accumulators
        return {**own, **extra, "meta": {k: v.clone() for k, v in self.meta.items()}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """torch.optim's, restoring the step count, a shared rule state and the meta-parameters."""
        state_dict = dict(state_dict)
        meta = state_dict.pop("meta", None)
        if meta is not None:
            self.meta = self._checked_meta(meta)
        self.steps = int(state_dict.pop("step", 0))
        self.per_tensor = state_dict.pop("per_tensor", None)
        self.shared_state = state_dict.pop("shared_state", None)
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a state dict saved before groups had lr: the update as it was
            group.setdefault("lr", 1.0)
        for p, entry in list(self.state.items()):
            self.state[p] = _copied(entry)  # in-place steps never write into the caller's dict

    def _checked_meta(self, meta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        expected = {k: tuple(v.shape) for k, v in self.rule.meta().items()}
        given = {k: tuple(v.shape) for k, v in meta.items()}
        if expected != given:
            diff = sorted(set(expected.items()) ^ set(given.items()))[:3]
            raise ValueError(
                f"the meta-parameters do not fit {self.rule.describe()} on these parameters (first differences, as "
                f"(name, shape): {diff}); load meta-parameters saved from this rule with the same settings"
            )
        like = next(iter(self._tensors().values()))
        return {k: v.detach().to(dtype=like.dtype, device=like.device) for k, v in meta.items()}

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = [p for group in self.param_groups for p in group["params"]]
        if len(tensors) != len(self.names):
            raise ValueError(
                f"LearnedOptimizer was built for {len(self.names)} parameters and now has {len(tensors)} "
                "(add_param_group after construction): build a new LearnedOptimizer over all of them"
            )
        return dict(zip(self.names, tensors))

    def rule_state(self, params: Mapping[str, torch.Tensor]) -> tuple[Any, bool]:
        """The rule's state (initialised at the first step) and whether it is kept per tensor."""
        if self.per_tensor is None:
            state = self.rule.init_state({n: p.detach() for n, p in params.items()})
            self.per_tensor = isinstance(state, dict) and set(state) == set(params)
            if not self.per_tensor:
                self.shared_state = state
            else:
                for name, p in params.items():
                    self.state[p] = state[name]
        if not self.per_tensor:
            return self.shared_state, False
        return {name: self.state[p] for name, p in params.items()}, True

    def _in_place(self, tensors: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
        """Whether the rule's in-place step (``step_inplace``) serves these tensors (dense, contiguous, one dtype)."""
        ready = getattr(self.rule, "in_place_ready", None)
        if not callable(getattr(self.rule, "step_inplace", None)) or not (callable(ready) and ready()):
            return False
        return self._dense(tensors, grads)

    @staticmethod
    def _dense(tensors: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
        like = tensors[0]
        return all(
            t.is_contiguous() and t.layout == torch.strided and t.dtype == like.dtype and t.device == like.device
            for t in [*tensors, *grads]
        )

    def _step_compiled(self, tensors: list[torch.Tensor], grads: list[torch.Tensor], step: int, loss) -> None:
        """The rule's ``step_compiled`` at ``self.meta`` (copied into the optimizer's own copy of the rule)."""
        own = dict(self.rule.named_parameters())
        torch._foreach_copy_([own[k] for k in self.meta], list(self.meta.values()))
        step_compiled = getattr(self.rule, "step_compiled")  # noqa: B009 (mypy: checked by compiled_ready)
        try:
            step_compiled(tensors, grads, [self.state[p] for p in tensors], step, loss, self._compiled)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            first = str(error).strip().splitlines()[0][:200]
            raise RuntimeError(
                f"compile=True: torch.compile could not build the step here ({first}); on a CPU it needs a C++ "
                "compiler (g++ or clang) on PATH, else use LearnedOptimizer(..., compile=False)"
            ) from None

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], torch.Tensor] | None = None, loss: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """One update of every parameter with a gradient; ``closure`` (or ``loss``) gives the loss to rules that read it."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None and self.reads_loss:
            raise ValueError(
                f"{self.rule.describe()} reads the loss: call step(closure) with a closure returning it, or step(loss=...)"
            )
        params = self._tensors()
        like = next(iter(params.values()))
        value = loss.detach() if isinstance(loss, torch.Tensor) else like.new_tensor(0.0 if loss is None else loss)
        state, per_tensor = self.rule_state(params)
        names = [n for n, p in params.items() if p.grad is not None]
        if not per_tensor and len(names) != len(params):
            missing = next(n for n, p in params.items() if p.grad is None)
            raise ValueError(
                f"{self.rule.describe()} keeps one state over all coordinates, so every parameter needs a gradient "
                f"at every step; {missing} has none (freeze it before building the optimizer, or zero its gradient)"
            )
        if not names:
            return loss
        grads = {n: g for n in names if (g := params[n].grad) is not None}
        current = {n: params[n].detach() for n in names}
        step, tensors, grad_list = self.steps, [params[n] for n in names], [grads[n] for n in names]
        lrs = self._lrs(tensors)
        compiled = per_tensor and self.compile and self._dense(tensors, grad_list)
        if compiled or (per_tensor and self._in_place(tensors, grad_list)):
            # p += u in place: a group's lr then rescales the step taken, p = before + lr (p - before)
            scaled = [(p, p.clone(), lr) for p, lr in zip(tensors, lrs) if lr != 1.0]
            if compiled:
                self._step_compiled(tensors, grad_list, step, value)
            else:
                in_place = getattr(self.rule, "step_inplace")  # noqa: B009 (mypy)
                in_place(tensors, grad_list, [self.state[p] for p in tensors], step, self.meta, self._scratch)
            for p, before, lr in scaled:
                p.lerp_(before, 1.0 - lr)
            self.steps = step + 1
            return loss
        rule_state = {n: state[n] for n in names} if per_tensor else state
        updates, new_state = self.rule.run(grads, rule_state, current, step, value, self.meta)
        for name, lr in zip(names, lrs):
            params[name].add_(updates[name], alpha=lr)
            if per_tensor:
                self.state[params[name]] = new_state[name]
        if not per_tensor:
            self.shared_state = new_state
        self.steps = step + 1
        return loss

    def _lrs(self, tensors: list[torch.Tensor]) -> list[float]:
        """Each tensor's group ``lr`` (the multiplier of its update), checked: a scheduler may have set it."""
        of = {id(p): group for group in self.param_groups for p in group["params"]}
        lrs = [float(of[id(p)]["lr"]) for p in tensors]
        bad = next((lr for lr in lrs if not (lr >= 0 and lr < float("inf"))), None)
        if bad is not None:
            raise ValueError(
                f"a LearnedOptimizer group's lr multiplies the learned update: it must be finite and >= 0, got {bad}"
            )
        return lrs

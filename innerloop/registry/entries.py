"""Registry entries (algorithms, models, task families, update rules), their tables and lookups.

Classes and builders may be lazy ``"module:attr"`` strings, imported on first use, so that
importing the registry stays cheap and imports nothing above it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .options import LEGACY_DEFAULTS, AlgorithmOptions

# what a task family is, and what an algorithm runs on (optimizer: problems a learned optimizer trains, innerloop.unroll)
KINDS = ("regression", "classification", "rl", "optimizer")


def resolve(target: Any) -> Any:
    """``target`` itself, or the attribute a ``"package.module:attr"`` string names (imported now)."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"a lazy registry target is 'package.module:attr', got {target!r}")
    value: Any = importlib.import_module(module)
    for part in attr.split("."):
        value = getattr(value, part)
    return value


@dataclass(frozen=True)
class BuildInputs:
    """What an algorithm's builder gets: the run's config, its algorithm section, the network, the meta-RL family."""

    config: Any  # training.config.Config
    options: Any  # the entry's options dataclass instance (an AlgorithmOptions)
    model: Any = None  # nn.Module: build_model(config) unless the entry builds its own, or the caller's; else None
    family: Any = None  # the meta-RL task family object (rl entries), else None
    tasks: Callable[[str], Any] | None = None  # split -> the config's task source of that split (baseline: its classes)


def learner_kwargs(entry: AlgorithmEntry, options: AlgorithmOptions) -> dict[str, Any]:
    """The options as keyword arguments: every field but ``name`` (``compile`` / ``checkpoint_steps`` where capable)."""
    kwargs = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "name"}
    for capability in ("compile", "checkpoint_steps"):
        if not getattr(entry, capability):
            kwargs.pop(capability, None)
    return kwargs


def default_build(entry: AlgorithmEntry, inputs: BuildInputs):
    """``learner_class()(model, **learner_kwargs(entry, options))``."""
    return entry.learner_class()(inputs.model, **learner_kwargs(entry, inputs.options))


COMMON_HARMLESS = ("algorithm.strategy", "algorithm.checkpoint_steps", "algorithm.compile")


@dataclass(frozen=True)
class AlgorithmEntry:
    """One learner: its class, its ``algorithm.*`` keys, its builder and its capabilities (see REGISTRY docs)."""

    name: str
    learner: Any  # the class, or "module:Class"
    options: type = AlgorithmOptions  # dataclass of its algorithm.* keys, a subclass of AlgorithmOptions
    build: Callable[[AlgorithmEntry, BuildInputs], Any] | None = None  # None: default_build
    kinds: tuple[str, ...] = ("regression", "classification")  # task kinds it runs on
    head: bool = True  # build_model gives the network a task.ways output layer
    fixed_ways: bool = True  # evaluated only at the trained task.ways
    builds_model: bool = False  # its builder makes its own network or policy: build_model is not called
    activation: bool = False  # with builds_model: its builder reads model.activation (else the model entry says)
    forward_pass: bool = False  # adapts in one forward pass: no inner steps
    episodic: bool = (
        False  # meta-RL: adapts through the episodes it acts in (RL², PEARL): no step sizes, "step" k = episode k
    )
    compile: bool = False  # accepts algorithm.compile=true
    checkpoint_steps: bool = False  # accepts algorithm.checkpoint_steps=true (second order)
    meta_optimizer: bool = True  # False: the learner takes its own outer step (build_optimizer gives None)
    preset: str | None = None  # the preset named in the fixes of its errors
    harmless: tuple[str, ...] = COMMON_HARMLESS  # settings that may differ on resume
    check: Callable[[Any], None] | None = None  # extra validation of a Config, raising ConfigError
    legacy: Mapping[str, object] = field(default_factory=lambda: dict(LEGACY_DEFAULTS))  # old keys and their defaults
    train_tasks: Any = None  # "module:attr" or (source) -> source: wraps the train task source (baseline)

    def __post_init__(self) -> None:
        if not (isinstance(self.options, type) and issubclass(self.options, AlgorithmOptions)):
            raise TypeError(f"algorithm {self.name!r}: options must be a dataclass subclassing AlgorithmOptions")
        unknown = set(self.kinds) - set(KINDS)
        if not self.kinds or unknown:
            raise ValueError(f"algorithm {self.name!r}: kinds must be a non-empty subset of {KINDS}, got {self.kinds}")

    def learner_class(self) -> type:
        """The learner class (a lazy ``"module:Class"`` imported now)."""
        return resolve(self.learner)

    def make(self, inputs: BuildInputs):
        """The learner built from ``inputs`` (this entry's builder, or :func:`default_build`)."""
        return (self.build or default_build)(self, inputs)

    @property
    def option_names(self) -> tuple[str, ...]:
        """Its ``algorithm.*`` keys, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self.options))

    @property
    def update_rule(self) -> bool:
        """Whether its inner loop takes ``algorithm.update_rule``."""
        return "update_rule" in self.option_names

    @property
    def rl(self) -> bool:
        """Whether it is a meta-reinforcement-learning algorithm."""
        return "rl" in self.kinds


@dataclass(frozen=True)
class ModelEntry:
    """A network: ``build(config, out_features, input_shape) -> nn.Module`` and the task kinds it fits."""

    name: str
    build: Any  # callable or "module:attr"
    kinds: tuple[str, ...] = ("classification",)
    activation: bool = False  # it reads model.activation (relu | tanh)

    def make(self, config, out_features: int | None, input_shape: tuple[int, ...]):
        """The network for ``config`` with ``out_features`` outputs (None: an embedding) on inputs of ``input_shape``."""
        return resolve(self.build)(config, out_features, input_shape)


@dataclass(frozen=True)
class TaskFamilyEntry:
    """A task distribution (``task.name``) and what kind of tasks it gives.

    ``tasks(config, split, shots, queries, seed)`` builds the task source of a family of your own; the
    built-in image datasets give ``load(root, split, image_size, download, resample)`` instead, and the
    meta-RL families their ``family`` class.
    """

    name: str
    kind: str  # regression | classification | rl | optimizer
    tasks: Any = None  # callable or "module:attr": (config, split, shots, queries, seed) -> task source
    load: Any = None  # image datasets: (root, split, image_size, download, resample) -> ImageDataset
    image_size: int | None = None  # image datasets: default side of the inputs
    channels: int = 3  # image datasets: input channels
    family: Any = None  # meta-RL: the task family class, or "module:Class"
    shape: tuple[int, ...] = (1,)  # regression: input shape of one example
    outputs: int = 1  # regression: outputs of one example
    harmless: tuple[str, ...] = ("task.root", "task.download")  # settings that may differ on resume
    folder: bool = False  # the user's own image folder (task.root/<class>/<image>)
    trajectories: bool = False  # meta-RL: observations are 2-D positions, drawn as trajectories.png after evaluation

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task family {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class UpdateRuleEntry:
    """An inner-loop update rule (``algorithm.update_rule``): ``rule(lr, **options)`` builds it."""

    name: str
    rule: Any  # class, callable or "module:attr"

    def make(self, lr: float, **options):
        """The rule with initial rate ``lr`` (``options``: its other constructor arguments)."""
        return resolve(self.rule)(lr, **options)


_TABLES: dict[type, tuple[str, dict[str, Any]]] = {
    AlgorithmEntry: ("algorithm.name", {}),
    ModelEntry: ("model.name", {}),
    TaskFamilyEntry: ("task.name", {}),
    UpdateRuleEntry: ("algorithm.update_rule", {}),
}
_loaders: list[Callable[[], None]] = []  # run once before the first lookup: the built-in entries


def add_loader(load: Callable[[], None]) -> None:
    """Run ``load`` (which registers entries) before the first lookup; the built-in entries arrive this way."""
    _loaders.append(load)


def _table(kind: type) -> dict[str, Any]:
    while _loaders:
        _loaders.pop(0)()
    return _TABLES[kind][1]


def _register(entry: Any, replace: bool) -> Any:
    table = _table(type(entry))
    if entry.name in table and not replace and table[entry.name] != entry:
        raise ValueError(f"{_TABLES[type(entry)][0]}={entry.name!r} is already registered; pass replace=True")
    table[entry.name] = entry
    return entry


def register_algorithm(entry: AlgorithmEntry, replace: bool = False) -> AlgorithmEntry:
    """Add ``entry`` (a name already taken is refused unless ``replace``); returns it."""
    return _register(entry, replace)


def register_model(entry: ModelEntry, replace: bool = False) -> ModelEntry:
    """Add a network ``entry``."""
    return _register(entry, replace)


def register_task_family(entry: TaskFamilyEntry, replace: bool = False) -> TaskFamilyEntry:
    """Add a task family ``entry``."""
    return _register(entry, replace)


def register_update_rule(entry: UpdateRuleEntry, replace: bool = False) -> UpdateRuleEntry:
    """Add an update rule ``entry``."""
    return _register(entry, replace)


def unregister(entry: Any) -> None:
    """Remove ``entry`` from its table (tests, notebooks)."""
    table, name = _table(type(entry)), entry.name
    if table.get(name) is entry:
        del table[name]


def _lookup(kind: type, name: str) -> Any:
    table = _table(kind)
    if name not in table:
        key = _TABLES[kind][0]
        raise ConfigError(f"{key}={name!r} is not supported; choose one of: {', '.join(table)}")
    return table[name]


def algorithm(name: str) -> AlgorithmEntry:
    """The entry of ``algorithm.name``; an unknown name is a ConfigError naming the choices."""
    return _lookup(AlgorithmEntry, name)


def model(name: str) -> ModelEntry:
    """The entry of ``model.name``."""
    return _lookup(ModelEntry, name)


def task_family(name: str) -> TaskFamilyEntry:
    """The entry of ``task.name``."""
    return _lookup(TaskFamilyEntry, name)


def update_rule(name: str) -> UpdateRuleEntry:
    """The entry of ``algorithm.update_rule``."""
    return _lookup(UpdateRuleEntry, name)


def algorithms() -> dict[str, AlgorithmEntry]:
    """Every algorithm entry by name, in registration order (a copy)."""
    return dict(_table(AlgorithmEntry))


def models() -> dict[str, ModelEntry]:
    """Every network entry by name."""
    return dict(_table(ModelEntry))


def task_families() -> dict[str, TaskFamilyEntry]:
    """Every task family entry by name."""
    return dict(_table(TaskFamilyEntry))


def update_rules() -> dict[str, UpdateRuleEntry]:
    """Every update rule entry by name."""
    return dict(_table(UpdateRuleEntry))

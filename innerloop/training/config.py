"""Run configuration: typed dataclasses, YAML presets and command-line overrides (OmegaConf).

A run is fully described by a :class:`Config`. Presets live in ``innerloop/presets``
as YAML files holding only what differs from the defaults; ``load_config`` merges
defaults <- preset or file <- ``key=value`` overrides, checking names and types. The
``algorithm`` section's schema is the chosen registry entry's options dataclass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import registry
from ..errors import ConfigError
from ..registry import AlgorithmOptions, MAMLOptions
from . import validation
from .validation import task_kind, validate

_log = logging.getLogger(__name__)


# Each field's meaning is its trailing comment (read by training/reference.py): one line a field, unformatted.
# fmt: off
@dataclass
class TaskConfig:
    """The task distribution: sinusoid regression, few-shot image classification or a meta-RL family (``task.*``)."""

    name: str = "sinusoid"  # sinusoid | omniglot | mini_imagenet | cifar_fs | fc100 | image_folder | a meta-RL family (rl section)
    shots: int = 10  # support examples per task (per class in classification) at meta-training
    queries: int = 10  # query examples per task (per class in classification) at meta-training
    ways: int = 5  # classification only: ways of the meta-training tasks
    # Image datasets only:
    root: str | None = None  # data root (default $INNERLOOP_DATA, ../shared/data, ~/.cache/innerloop)
    image_size: int | None = None  # side N of the N x N inputs; default: omniglot 28, mini_imagenet 84, cifar_fs/fc100 32, image_folder the images' own
    train_split: str = "train"  # split of the meta-training tasks (omniglot: also background, evaluation, trainval)
    val_split: str = "val"  # split of the validation tasks
    test_split: str = "test"  # split of the test tasks of the final evaluation and `innerloop eval`
    download: bool = False  # fetch a missing dataset (omniglot, cifar_fs, fc100) from its official source, md5-checked
    resample: str = "lanczos"  # Pillow filter used when resizing: lanczos | bicubic | bilinear | box | hamming | nearest
    rotations: list[int] | None = None  # each class also as its own class under these angles, e.g. [0, 90, 180, 270]; null: the dataset's (omniglot vinyals splits: all four), [0]: none
    normalize: list[list[float]] | None = None  # [[mean per channel], [std per channel]] applied after scaling pixels to [0, 1]
    mode: str = "auto"  # image_folder: L (grayscale, 1 channel) | RGB | auto (L when every image is grayscale)
    invert: bool = False  # image_folder: use 255 - pixel; innerloop's omniglot is 1 = ink on 0, so dark ink on light paper wants true
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])  # image_folder root/<class>/<image>: train, val, test fractions of the classes (0: no such split)
    split_seed: int = 0  # image_folder root/<class>/<image>: seed of the class split (independent of train.seed)
    cache: bool = True  # image_folder: keep the decoded images on disk, keyed by the folder's files, image_size, mode, resample, invert
    cache_dir: str | None = None  # image_folder: where the cache lives (default $INNERLOOP_CACHE/image-folder or ~/.cache/innerloop/image-folder)


@dataclass
class ModelConfig:
    """The network the learner adapts (``model.*``); the meta-RL policy is an MLP of widths ``model.hidden``."""

    name: str = "mlp"  # mlp | conv4 | resnet12
    hidden: list[int] = field(default_factory=lambda: [40, 40])  # mlp (and meta-RL policy): hidden layer widths
    activation: str = "relu"  # mlp (and the maml-trpo / promp policy): relu | tanh, after each hidden layer
    filters: int = 64  # conv4: filters of each of the 4 convolution blocks
    pool: str = "max"  # conv4: max (2x2 max-pools) | stride (stride-2 convolutions, MAML's Omniglot network)
    widths: list[int] = field(default_factory=lambda: [64, 160, 320, 640])  # resnet12: channels of the 4 residual stages


@dataclass
class TrainConfig:
    """The meta-training loop: meta-optimizer, schedule, validation, checkpoints, logging (``train.*``)."""

    iterations: int = 1000  # meta-training iterations (outer steps)
    meta_batch_size: int = 25  # tasks per meta-batch (split over the ranks under torchrun)
    optimizer: str = "adam"  # meta-optimizer: adam | sgd
    meta_lr: float = 0.001  # meta-optimizer learning rate beta
    lr_decay_every: int | None = None  # multiply meta_lr by lr_decay every this many iterations
    lr_decay: float = 0.5  # factor of the step decay (with lr_decay_every)
    lr_schedule: str = "step"  # meta learning rate schedule: step (lr_decay, lr_decay_every) | cosine (CosineAnnealingLR to min_lr over iterations)
    min_lr: float = 0.0  # cosine schedule: the meta learning rate it anneals to (eta_min)
    grad_clip: float | None = None  # max global norm of the meta-gradient
    seed: int = 0  # seed of the model initialization and of the training and validation tasks
    val_every: int = 500  # validate every this many iterations (and at the end)
    val_tasks: int = 100  # validation tasks per validation
    val_train_tasks: int | None = None  # meta-training tasks (the first the run drew) evaluated as the validation tasks at each validation, metrics.jsonl split meta-train; default train.val_tasks, 0: none
    best_metric: str = "auto"  # validation metric whose best value keeps RUN/checkpoints/best-step-N (`innerloop eval --checkpoint best`); auto: accuracy, else return, else loss, after the most steps; none: keep none
    best_mode: str = "auto"  # whether the best best_metric is the min or the max; auto: max for accuracy, return and success, min otherwise
    checkpoint_every: int = 500  # write a checkpoint every this many iterations (and at the end)
    keep_checkpoints: int = 2  # how many of the newest checkpoints are kept
    log_every: int = 10  # record metrics every this many iterations (metrics.jsonl; a log line when no progress bar)
    device: str = "cpu"  # torch device: cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float64 | bfloat16
    progress: bool = True  # show a progress bar when stderr is a terminal (log lines otherwise)
    dist_timeout: float = 600.0  # seconds a rank waits for the others (joining the group, each collective)


@dataclass
class EvalConfig:
    """The test protocol of the final evaluation and of ``innerloop eval`` (``eval.*``)."""

    ways: int | None = None  # classification: ways of test (and validation) tasks; default task.ways
    shots: list[int] = field(default_factory=lambda: [5, 10])  # support shots evaluated (one table column group each)
    queries: int = 100  # query examples per task (per class in classification) at evaluation
    steps: list[int] = field(default_factory=lambda: [0, 1, 5, 10])  # adaptation steps reported
    tasks: int = 1000  # test tasks (the same seeded tasks for every model)
    batch_size: int = 100  # test tasks evaluated at once
    seed: int = 2024  # seed of the test tasks


@dataclass
class RLConfig:
    """Meta-reinforcement learning (task.name a family of ``innerloop.rl.envs``, algorithm maml-trpo or promp).

    train.meta_batch_size is the number of tasks per meta-batch, algorithm.inner_lr and
    algorithm.inner_steps the inner loop, eval.tasks / eval.steps / eval.seed the protocol.
    """

    episodes: int = 20  # episodes per task per adaptation step (the MAML paper's fast batch size)
    horizon: int | None = None  # default: the family's (nav2d 100, MuJoCo 200, bandit 10)
    gamma: float = 0.99  # discount factor
    gae_lambda: float = 1.0  # lambda of generalized advantage estimation (1: Monte Carlo returns minus the baseline)
    estimator: str | None = None  # vpg | dice | lvc (default: vpg for maml-trpo, lvc for promp)
    inner_lrs: list[float] | None = None  # per-step inner rates at meta-training (default: algorithm.inner_lr every step)
    init_std: float = 1.0  # initial standard deviation of the Gaussian policy
    max_kl: float = 0.01  # maml-trpo: the trust region
    cg_iterations: int = 10  # maml-trpo: conjugate gradient iterations for the natural gradient
    cg_damping: float = 1e-5  # maml-trpo: damping added to the Fisher-vector products
    backtrack_ratio: float = 0.8  # maml-trpo: step shrink factor of the line search
    max_backtracks: int = 15  # maml-trpo: line search steps before the update is rejected
    clip: float = 0.3  # promp: clipped objective
    outer_steps: int = 5  # promp: Adam steps per meta-batch
    inner_kl_target: float = 0.01  # promp: the inner KL that the adaptive penalty aims at
    inner_kl_coef: float = 5e-4  # promp: initial weight of the inner KL penalty
    adaptive_kl: bool = True  # promp: the weight adapts to inner_kl_target (false: fixed, the authors' run script's default)
    arms: int = 5  # bandit: arms per task
    workers: int = 1  # MuJoCo, Meta-World: processes stepping the environments (1: in this process)
    reward_version: str = "v2"  # Meta-World: reward function version, v1 | v2
    success_episodes: int = 3  # Meta-World: scored episodes per test goal after adaptation (success rate; metaworld's evaluation_episodes)
    eval_episodes: int = 20  # episodes per task per adaptation step at evaluation
    eval_lrs: list[float] = field(default_factory=lambda: [0.1, 0.05])  # evaluation step sizes (the last repeats)


@dataclass
class Config:
    """A whole run: one section per dataclass above, and the run directory."""

    algorithm: Any = field(default_factory=MAMLOptions)  # an AlgorithmOptions: the options of the algorithm.name entry
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    out_dir: str = MISSING  # run directory (the --out option; default runs/<preset or config file name>)


# fmt: on


def preset_names() -> list[str]:
    """The names of the built-in presets (``innerloop/presets/*.yaml``), sorted."""
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("innerloop.presets").iterdir() if p.name.endswith(".yaml")
    )


def preset_text(name: str) -> str:
    """The YAML file of preset ``name``, comments included (``innerloop presets --show NAME``)."""
    if name not in preset_names():
        raise ConfigError(
            f"unknown preset {name!r}; available presets: {', '.join(preset_names())} (see `innerloop presets`)"
        )
    return resources.files("innerloop.presets").joinpath(f"{name}.yaml").read_text()


def preset_description(name: str, width: int = 110) -> str:
    """The first sentence of the comment that opens preset ``name``, cut to ``width`` characters."""
    lines = []
    for line in preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(w for w in " ".join(lines).split())
    depth, end, colon = 0, len(text), None
    for i, ch in enumerate(text):  # a sentence ends at ". " outside parentheses, not after "et al." or "e.g."
        depth += (ch in "([") - (ch in ")]")
        if ch == ":" and depth == 0 and colon is None:
            colon = i
        if (
            ch == "."
            and depth == 0
            and text[i + 1 : i + 2] in (" ", "")
            and not text[:i].endswith((" al", "e.g", "i.e", "cf"))
        ):
            end = i + 1
            break
    if end > width and colon is not None and colon < width:  # a long sentence: its head, up to the first colon
        end = colon
    text = text[:end]
    return text if len(text) <= width else text[: text.rfind(" ", 0, width - 1)].rstrip(",;:") + "…"


def _load_yaml(path: Path):
    """``OmegaConf.load(path)``, with a YAML syntax error as one line naming the file, line and column."""
    import yaml

    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise ConfigError(
            f"config file {path} is not valid YAML: {problem}{where}{f' ({context})' if context else ''}; fix the file "
            "(each section a mapping, e.g. `train: {iterations: 500}`; `innerloop presets --show maml-sine` prints an example)"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    if not OmegaConf.is_dict(loaded):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections (algorithm, task, model, train, eval, rl), "
            f"got a {type(loaded).__name__}; e.g. `train: {{iterations: 500}}`"
        )
    return loaded


def _read_source(name_or_path: str):
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist; give a preset ({', '.join(preset_names())}) or a YAML file"
            )
        return _load_yaml(path)
    if name_or_path not in preset_names():
        raise ConfigError(
            f"unknown preset {name_or_path!r}; available presets: {', '.join(preset_names())} "
            "(or pass the path of a YAML config file)"
        )
    return OmegaConf.create(preset_text(name_or_path))


def load_config(
    name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = (), out_dir: str | None = None
) -> Config:
    """Defaults <- preset/file <- ``section.key=value`` overrides, validated."""
    sources = [_read_source(name_or_path)] if name_or_path else []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. train.iterations=500)")
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None
    if out_dir is not None:
        dotlist.out_dir = out_dir
    elif not any(OmegaConf.is_dict(s) and "out_dir" in s for s in [*sources, dotlist]):
        dotlist.out_dir = f"runs/{Path(name_or_path).stem if name_or_path else 'run'}"
    return _compose(sources, dotlist)


def _section(layer, name: str = "algorithm"):
    """The ``name`` section of a layer when it is a mapping, else None."""
    section = layer.get(name) if OmegaConf.is_dict(layer) else None
    return section if OmegaConf.is_dict(section) else None


def _compose(sources: list, overrides=None) -> Config:
    """Merge ``sources`` (files, stored configs) and ``overrides`` over the schema of the chosen algorithm, validated.

    A source's ``algorithm`` key that the algorithm lacks is dropped when the source was written for another
    algorithm (its ``algorithm.name`` was overridden; logged) or holds the value innerloop's single ``algorithm``
    section had by default (a run directory written before the registry); otherwise, and in ``overrides``
    always, it is one line naming the algorithm's keys.
    """
    layers = [*sources, *([] if overrides is None else [overrides])]
    name = AlgorithmOptions.name
    for layer in layers:
        section = _section(layer)
        if section is not None and "name" in section:
            name = section.name
    entry = registry.algorithm(str(name))
    written_for, fitted = AlgorithmOptions.name, []
    for layer in sources:
        section = _section(layer)
        if section is not None and "name" in section:
            written_for = str(section.name)
        fitted.append(_fit_algorithm(layer, entry, written_for))
    if overrides is not None:
        fitted.append(_fit_algorithm(overrides, entry, None))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config(algorithm=entry.options(name=entry.name))), *fitted)
        config = cast(Config, OmegaConf.to_object(cfg))  # a structured config comes back as its dataclass
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, entry)) from None
    validate(config)
    return config


def _fit_algorithm(layer, entry: registry.AlgorithmEntry, written_for: str | None):
    """``layer`` without the ``algorithm`` keys ``entry`` lacks (see :func:`_compose`), or a ConfigError.

    ``written_for``: the algorithm a source was written for (None: command-line overrides, which keep every key).
    """
    section = _section(layer)
    foreign = [str(k) for k in section if k not in entry.option_names] if section is not None else []
    if not foreign:
        return layer
    other = written_for is not None and written_for != entry.name
    for key in foreign:
        value = section[key]
        legacy = written_for is not None and key in entry.legacy and value == entry.legacy[key]
        if not (other or legacy):
            raise ConfigError(foreign_key_message(entry, key, value))
    if other:
        _log.warning(
            "algorithm.%s, set for algorithm.name=%s, %s not apply to %s: ignored",
            ", algorithm.".join(foreign),
            written_for,
            "does" if len(foreign) == 1 else "do",
            entry.name,
        )
    layer = layer.copy()
    for key in foreign:
        del layer.algorithm[key]
    return layer


def foreign_key_message(entry: registry.AlgorithmEntry, key: str, value) -> str:
    """One line: ``algorithm.<key>`` is no key of ``entry``, which algorithms have it, and the keys it has."""
    owners = [name for name, e in registry.algorithms().items() if key in e.option_names]
    keys = f"valid keys of 'algorithm' for {entry.name}: {', '.join(entry.option_names)}"
    if owners:
        return (
            f"algorithm.{key}={value!r} does not apply to algorithm.name={entry.name!r}: only {', '.join(owners)} "
            f"take it; drop it, or choose one of those algorithms ({keys})"
        )
    return f"unknown option 'algorithm.{key}'; {keys}"


def _explain(err: OmegaConfBaseException, entry: registry.AlgorithmEntry | None = None) -> str:
    key = getattr(err, "full_key", None) or ""
    message = str(err).splitlines()[0]
    if "Key" in type(err).__name__ or "not in struct" in message:
        section = key.split(".")[0] if "." in key else None
        valid = ""
        factory = (
            Config.__dataclass_fields__[section].default_factory if section in Config.__dataclass_fields__ else None
        )
        if section == "algorithm" and entry is not None:
            valid = f"; valid keys of 'algorithm' for {entry.name}: {', '.join(entry.option_names)}"
        elif section and callable(factory):
            valid = f"; valid keys of '{section}': {', '.join(factory().__dataclass_fields__)}"
        elif not section:
            valid = f"; valid sections: {', '.join(Config.__dataclass_fields__)}"
        return f"unknown option {key!r}{valid}"
    return f"invalid value for {key!r}: {message}"


def to_dict(config: Config) -> dict:
    """``config`` as plain nested dicts and lists (as stored in checkpoints)."""
    return cast(dict, OmegaConf.to_container(OmegaConf.structured(config)))


def from_dict(data: dict) -> Config:
    """The :class:`Config` of ``to_dict`` output (defaults filled in; an older run's keys as ``load_config`` takes them), validated."""
    try:
        source = OmegaConf.create(data)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None
    return _compose([source])


def to_yaml(config: Config) -> str:
    """``config`` as YAML, every key written out (the ``config.yaml`` of a run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def is_rl(config: Config) -> bool:
    """Whether ``config`` is a meta-reinforcement-learning run (``task.name`` a family of kind rl)."""
    return task_kind(config) == "rl"


def __getattr__(name: str):
    """The name lists of before the registry (``CHOICES``, ``RULE_USERS``, ...), computed from it on access."""
    if name in validation.DERIVED:
        return validation.DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Run configuration: typed dataclasses, YAML presets and command-line overrides (OmegaConf).

A run is fully described by a :class:`Config`. Presets live in ``innerloop/presets``
as YAML files holding only what differs from the defaults; ``load_config`` merges
defaults <- preset or file <- ``key=value`` overrides, checking names and types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..core.update_rules import RULES
from ..errors import ConfigError
from ..rl.envs import FAMILIES as RL_FAMILIES
from ..rl.estimators import ESTIMATORS as RL_ESTIMATORS


@dataclass
class AlgorithmConfig:
    name: str = "maml"  # maml | fomaml | metasgd | anil | reptile | pretrained | protonets | cnp | snail | maml-trpo | promp
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_steps: Optional[int] = None  # default adaptation steps for `adapt` (None: inner_steps)
    first_order: bool = False
    adapt: str = "all"  # all | head | a regular expression over parameter names
    update_rule: str = "sgd"  # sgd | metasgd | lslr | metacurvature | lstm-optimizer | meta-lstm (core.update_rules.RULES)
    strategy: str = "auto"  # vmap | loop | auto
    checkpoint_steps: bool = False  # recompute second-order inner steps in the backward pass (memory for time)
    compile: bool = False  # torch.compile the meta-loss (maml, fomaml, metasgd, anil; strategy vmap or loop)


@dataclass
class TaskConfig:
    name: str = "sinusoid"  # sinusoid | omniglot | mini_imagenet | cifar_fs | fc100 | image_folder | a meta-RL family (rl section)
    shots: int = 10
    queries: int = 10
    ways: int = 5  # classification only: ways of the meta-training tasks
    # Image datasets only:
    root: Optional[str] = None  # data root (default $INNERLOOP_DATA, ../shared/data, ~/.cache/innerloop)
    image_size: Optional[int] = None  # default: omniglot 28, mini_imagenet 84, cifar_fs/fc100 32
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    download: bool = False
    resample: str = "lanczos"


@dataclass
class ModelConfig:
    name: str = "mlp"  # mlp | conv4 | resnet12
    hidden: list[int] = field(default_factory=lambda: [40, 40])  # mlp
    filters: int = 64  # conv4
    widths: list[int] = field(default_factory=lambda: [64, 160, 320, 640])  # resnet12


@dataclass
class TrainConfig:
    iterations: int = 1000
    meta_batch_size: int = 25
    optimizer: str = "adam"  # adam | sgd
    meta_lr: float = 0.001
    lr_decay_every: Optional[int] = None  # multiply meta_lr by lr_decay every this many iterations
    lr_decay: float = 0.5
    grad_clip: Optional[float] = None  # max global norm of the meta-gradient
    seed: int = 0
    val_every: int = 500
    val_tasks: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True
    dist_timeout: float = 600.0  # seconds a rank waits for the others (joining the group, each collective)


@dataclass
class EvalConfig:
    ways: Optional[int] = None  # classification: ways of test (and validation) tasks; default task.ways
    shots: list[int] = field(default_factory=lambda: [5, 10])
    queries: int = 100
    steps: list[int] = field(default_factory=lambda: [0, 1, 5, 10])
    tasks: int = 1000
    batch_size: int = 100
    seed: int = 2024


@dataclass
class RLConfig:
    """Meta-reinforcement learning (task.name a family of ``innerloop.rl.envs``, algorithm maml-trpo or promp).

    train.meta_batch_size is the number of tasks per meta-batch, algorithm.inner_lr and
    algorithm.inner_steps the inner loop, eval.tasks / eval.steps / eval.seed the protocol.
    """

    episodes: int = 20  # episodes per task per adaptation step (the MAML paper's fast batch size)
    horizon: Optional[int] = None  # default: the family's (nav2d 100, MuJoCo 200, bandit 10)
    gamma: float = 0.99
    gae_lambda: float = 1.0
    estimator: Optional[str] = None  # vpg | dice | lvc (default: vpg for maml-trpo, lvc for promp)
    inner_lrs: Optional[list[float]] = None  # per-step inner rates at meta-training (default: algorithm.inner_lr every step)
    init_std: float = 1.0  # initial standard deviation of the Gaussian policy
    max_kl: float = 0.01  # maml-trpo: the trust region
    cg_iterations: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    clip: float = 0.3  # promp: clipped objective
    outer_steps: int = 5  # promp: Adam steps per meta-batch
    inner_kl_target: float = 0.01  # promp
    inner_kl_coef: float = 5e-4  # promp: initial weight of the inner KL penalty
    arms: int = 5  # bandit
    workers: int = 1  # MuJoCo: processes stepping the environments (1: in this process)
    eval_episodes: int = 20  # episodes per task per adaptation step at evaluation
    eval_lrs: list[float] = field(default_factory=lambda: [0.1, 0.05])  # evaluation step sizes (the last repeats)


@dataclass
class Config:
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    out_dir: str = MISSING


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("innerloop.presets").iterdir() if p.name.endswith(".yaml"))


def _read_source(name_or_path: str):
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; give a preset ({', '.join(preset_names())}) or a YAML file")
        return OmegaConf.load(path)
    if name_or_path not in preset_names():
        raise ConfigError(
            f"unknown preset {name_or_path!r}; available presets: {', '.join(preset_names())} "
            "(or pass the path of a YAML config file)"
        )
    return OmegaConf.create(resources.files("innerloop.presets").joinpath(f"{name_or_path}.yaml").read_text())


def load_config(name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = (), out_dir: str | None = None) -> Config:
    """Defaults <- preset/file <- ``section.key=value`` overrides, validated."""
    layers = [OmegaConf.structured(Config)]
    if name_or_path:
        layers.append(_read_source(name_or_path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. train.iterations=500)")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.merge(*layers)
        if out_dir is not None:
            cfg.out_dir = out_dir
        if OmegaConf.is_missing(cfg, "out_dir"):
            cfg.out_dir = f"runs/{Path(name_or_path).stem if name_or_path else 'run'}"
        config: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None
    validate(config)
    return config


def _explain(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or ""
    message = str(err).splitlines()[0]
    if "Key" in type(err).__name__ or "not in struct" in message:
        section = key.split(".")[0] if "." in key else None
        valid = ""
        if section and hasattr(Config, "__dataclass_fields__") and section in Config.__dataclass_fields__:
            cls = Config.__dataclass_fields__[section].default_factory().__class__
            valid = f"; valid keys of '{section}': {', '.join(cls.__dataclass_fields__)}"
        elif not section:
            valid = f"; valid sections: {', '.join(Config.__dataclass_fields__)}"
        return f"unknown option {key!r}{valid}"
    return f"invalid value for {key!r}: {message}"


RL_ALGORITHMS = ("maml-trpo", "promp")
CHOICES = {
    "algorithm.name": ("maml", "fomaml", "metasgd", "anil", "reptile", "pretrained", "protonets", "cnp", "snail", *RL_ALGORITHMS),
    "algorithm.update_rule": tuple(RULES),
    "algorithm.strategy": ("vmap", "loop", "auto"),
    "task.name": ("sinusoid", "omniglot", "mini_imagenet", "cifar_fs", "fc100", "image_folder", *RL_FAMILIES),
    "model.name": ("mlp", "conv4", "resnet12"),
    "train.optimizer": ("adam", "sgd"),
    "train.dtype": ("float32", "float64", "bfloat16"),
}
FORWARD_PASS_LEARNERS = ("cnp", "snail")  # black-box learners: adapt in a forward pass, no inner loop
FORWARD_PASS_PRESETS = {"cnp": "cnp-sine", "snail": "snail-omniglot-5w1s"}  # named in the fixes of their errors
RULE_USERS = ("maml", "fomaml", "anil")  # the learners whose inner loop takes algorithm.update_rule
POSITIVE = (
    "task.shots", "task.queries", "task.ways", "train.iterations", "train.meta_batch_size", "train.val_every",
    "train.val_tasks", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
    "eval.queries", "eval.tasks", "eval.batch_size",
)


def _get(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def validate(config: Config) -> None:
    for dotted, allowed in CHOICES.items():
        value = _get(config, dotted)
        if value not in allowed:
            raise ConfigError(f"{dotted}={value!r} is not supported; choose one of: {', '.join(allowed)}")
    for dotted in POSITIVE:
        value = _get(config, dotted)
        if value < 1:
            raise ConfigError(f"{dotted} must be a positive integer, got {value}")
    if config.algorithm.inner_steps < 0:
        raise ConfigError(f"algorithm.inner_steps must be >= 0, got {config.algorithm.inner_steps}")
    if config.algorithm.inner_lr <= 0:
        raise ConfigError(f"algorithm.inner_lr must be positive, got {config.algorithm.inner_lr}")
    if config.algorithm.update_rule != "sgd" and config.algorithm.name not in RULE_USERS:
        raise ConfigError(
            f"algorithm.update_rule={config.algorithm.update_rule!r} does not apply to algorithm.name="
            f"{config.algorithm.name!r}: only {', '.join(RULE_USERS)} take an inner-loop update rule "
            "(metasgd has its own); use algorithm.name=maml with this rule"
        )
    if config.algorithm.checkpoint_steps:
        a = config.algorithm
        if a.name not in ("maml", "metasgd", "anil") or a.first_order:
            raise ConfigError(
                f"algorithm.checkpoint_steps recomputes second-order inner steps, but algorithm.name={a.name!r}"
                f"{' with algorithm.first_order=true' if a.first_order else ''} keeps no second-order inner graph; "
                "drop algorithm.checkpoint_steps (it applies to maml, metasgd and anil, second order)"
            )
        if a.strategy == "vmap":
            raise ConfigError(
                "algorithm.checkpoint_steps runs the per-task loop (torch.utils.checkpoint cannot run under vmap); "
                "set algorithm.strategy=loop or auto"
            )
    if config.algorithm.compile:
        a = config.algorithm
        if a.name not in ("maml", "fomaml", "metasgd", "anil") or a.strategy == "auto" or a.checkpoint_steps:
            raise ConfigError(
                f"algorithm.compile compiles the meta-loss of maml, fomaml, metasgd or anil for one fixed strategy "
                f"(got algorithm.name={a.name!r}, strategy={a.strategy!r}, checkpoint_steps={a.checkpoint_steps}); "
                "set algorithm.strategy=vmap (small models) or loop, without checkpoint_steps"
            )
    if config.train.meta_lr <= 0:
        raise ConfigError(f"train.meta_lr must be positive, got {config.train.meta_lr}")
    if config.train.lr_decay_every is not None and config.train.lr_decay_every < 1:
        raise ConfigError(f"train.lr_decay_every must be a positive integer (or null), got {config.train.lr_decay_every}")
    if config.train.dist_timeout <= 0:
        raise ConfigError(f"train.dist_timeout must be a positive number of seconds, got {config.train.dist_timeout}")
    if config.train.grad_clip is not None and config.train.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be positive (or null to disable), got {config.train.grad_clip}")
    bad = [s for s in config.eval.shots if s < 1] + [s for s in config.eval.steps if s < 0]
    if bad or not config.eval.shots or not config.eval.steps:
        raise ConfigError("eval.shots must be positive integers and eval.steps non-negative integers (both non-empty)")
    if any(h < 1 for h in [*config.model.hidden, *config.model.widths, config.model.filters]):
        raise ConfigError("model.hidden, model.widths and model.filters must be positive")
    if config.eval.ways is not None and config.eval.ways < 1:
        raise ConfigError(f"eval.ways must be a positive integer, got {config.eval.ways}")
    if config.algorithm.name in FORWARD_PASS_LEARNERS:
        _check_forward_pass_learner(config)
    if (config.algorithm.name in RL_ALGORITHMS) or (config.task.name in RL_FAMILIES):
        _check_rl(config)
        return
    image_task = config.task.name != "sinusoid"
    if image_task == (config.model.name == "mlp"):
        raise ConfigError(
            f"model.name={config.model.name!r} does not fit task.name={config.task.name!r}: "
            "use model.name=mlp for sinusoid and conv4 or resnet12 for image tasks"
        )
    has_head = config.algorithm.name != "protonets"
    if image_task and has_head and config.eval.ways not in (None, config.task.ways):
        raise ConfigError(
            f"{config.algorithm.name} has an output layer of task.ways={config.task.ways} classes, so it cannot be "
            f"evaluated on eval.ways={config.eval.ways}; set them equal (only protonets tests with other ways)"
        )


def _check_forward_pass_learner(config: Config) -> None:
    """A learner that adapts in one forward pass (cnp, snail) has no inner loop: refuse any config asking for one.

    Silently ignoring inner steps would print a table of identical "1 step", "5 steps"
    columns, or train something other than what the config says.
    """
    a = config.algorithm
    problems = []  # (what the config asks for, how to fix it)
    if a.inner_steps != 0:
        problems.append((f"algorithm.inner_steps={a.inner_steps}", "set algorithm.inner_steps=0"))
    if a.eval_steps not in (None, 0):
        problems.append((f"algorithm.eval_steps={a.eval_steps}", "leave algorithm.eval_steps unset"))
    if a.update_rule != "sgd":
        problems.append((f"algorithm.update_rule={a.update_rule}", "leave algorithm.update_rule=sgd"))
    if any(s != 0 for s in config.eval.steps):
        problems.append((f"eval.steps={list(config.eval.steps)}", "set eval.steps=[0]"))
    if problems:
        raise ConfigError(
            f"algorithm.name={a.name} adapts to a task in one forward pass, with no inner gradient steps, but the config "
            f"asks for {', '.join(p for p, _ in problems)}; {', '.join(f for _, f in problems)} "
            f"(the {FORWARD_PASS_PRESETS[a.name]} preset does)"
        )
    if a.name == "cnp" and config.task.name != "sinusoid":
        raise ConfigError(
            f"algorithm.name={a.name} is implemented for regression only; use task.name=sinusoid "
            f"(got task.name={config.task.name!r}), or protonets for classification"
        )
    if a.name == "snail":
        _check_snail(config)


def _check_snail(config: Config) -> None:
    """SNAIL classifies images, reading sequences of task.ways * task.shots + 1 elements.

    Its output layer has task.ways classes (the eval.ways check of ``validate`` applies) and
    its temporal-convolution depth is built for that sequence length, on which it is trained:
    evaluating other shots would feed it sequences it never saw, so it is refused.
    """
    task = config.task
    if task.name == "sinusoid":
        raise ConfigError(
            "algorithm.name=snail is a few-shot image classifier; use an image task with an image model "
            "(task.name=omniglot model.name=conv4, as the snail-omniglot-5w1s preset does), or cnp for regression "
            "(got task.name='sinusoid')"
        )
    if list(config.eval.shots) != [task.shots]:
        raise ConfigError(
            f"algorithm.name=snail reads sequences of task.ways * task.shots + 1 = {task.ways * task.shots + 1} "
            f"elements and is evaluated on the shots it was trained with; set eval.shots=[{task.shots}] "
            f"(got eval.shots={list(config.eval.shots)}), or train another model with task.shots=K for K-shot tasks"
        )


def is_rl(config: Config) -> bool:
    return config.task.name in RL_FAMILIES


def _check_rl(config: Config) -> None:
    """Meta-RL needs a meta-RL algorithm on a task family, a policy MLP, and sane RL settings."""
    a, r = config.algorithm, config.rl
    if a.name not in RL_ALGORITHMS or config.task.name not in RL_FAMILIES:
        raise ConfigError(
            f"algorithm.name={a.name!r} with task.name={config.task.name!r}: meta-RL pairs an algorithm of "
            f"{', '.join(RL_ALGORITHMS)} with a task family of {', '.join(RL_FAMILIES)} "
            "(e.g. the maml-trpo-nav2d preset); supervised tasks take the other algorithms"
        )
    if config.model.name != "mlp":
        raise ConfigError(f"meta-RL policies are MLPs (model.name=mlp, widths model.hidden); got model.name={config.model.name!r}")
    if a.inner_steps < 1:
        raise ConfigError(f"meta-RL adapts with at least one policy-gradient step; set algorithm.inner_steps >= 1 (got {a.inner_steps})")
    if a.update_rule != "sgd":
        raise ConfigError(f"meta-RL uses plain SGD inner steps (rates algorithm.inner_lr, rl.eval_lrs); got algorithm.update_rule={a.update_rule!r}")
    if r.estimator is not None and r.estimator not in RL_ESTIMATORS:
        raise ConfigError(f"rl.estimator={r.estimator!r} is not supported; choose one of: {', '.join(RL_ESTIMATORS)}")
    for name in ("episodes", "eval_episodes", "cg_iterations", "outer_steps", "arms", "workers", "max_backtracks"):
        if getattr(r, name) < 1:
            raise ConfigError(f"rl.{name} must be a positive integer, got {getattr(r, name)}")
    if r.horizon is not None and r.horizon < 1:
        raise ConfigError(f"rl.horizon must be a positive integer (or null for the family's), got {r.horizon}")
    for name in ("max_kl", "init_std", "clip", "inner_kl_target"):
        if not getattr(r, name) > 0:
            raise ConfigError(f"rl.{name} must be positive, got {getattr(r, name)}")
    if not (0 < r.gamma <= 1 and 0 <= r.gae_lambda <= 1 and 0 < r.backtrack_ratio < 1):
        raise ConfigError(f"need 0 < rl.gamma <= 1, 0 <= rl.gae_lambda <= 1, 0 < rl.backtrack_ratio < 1; got {r.gamma}, {r.gae_lambda}, {r.backtrack_ratio}")
    if r.inner_lrs is not None and (not r.inner_lrs or any(lr <= 0 for lr in r.inner_lrs) or len(r.inner_lrs) > a.inner_steps):
        raise ConfigError(
            f"rl.inner_lrs must hold 1 to algorithm.inner_steps={a.inner_steps} positive rates (the last repeats), "
            f"got {list(r.inner_lrs)}; or leave it null to use algorithm.inner_lr at every step"
        )
    if not r.eval_lrs or any(lr <= 0 for lr in r.eval_lrs):
        raise ConfigError(f"rl.eval_lrs must be a non-empty list of positive step sizes, got {list(r.eval_lrs)}")


def to_dict(config: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(config))


def from_dict(data: dict) -> Config:
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data)))
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None
    validate(config)
    return config


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))

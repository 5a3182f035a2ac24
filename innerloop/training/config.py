"""Run configuration: typed dataclasses, YAML presets and command-line overrides (OmegaConf).

A run is fully described by a :class:`Config`. Presets live in ``innerloop/presets``
as YAML files holding only what differs from the defaults; ``load_config`` merges
defaults <- preset or file <- ``key=value`` overrides, checking names and types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..core.update_rules import RULES
from ..errors import ConfigError
from ..rl.envs import FAMILIES as RL_FAMILIES
from ..rl.estimators import ESTIMATORS as RL_ESTIMATORS
from ..validate import positive_int


# Each field's meaning is its trailing comment (read by training/reference.py): one line a field, unformatted.
# fmt: off
@dataclass
class AlgorithmConfig:
    """The meta-learner and its inner loop (``algorithm.*``)."""

    name: str = "maml"  # maml | fomaml | metasgd | anil | reptile | pretrained | protonets | cnp | snail | maml-trpo | promp
    inner_lr: float = 0.01  # inner-loop step size alpha (the initial rate of a learned update rule)
    inner_steps: int = 1  # inner gradient steps per task at meta-training (0 for cnp and snail)
    eval_steps: int | None = None  # default adaptation steps for `adapt` (None: inner_steps)
    first_order: bool = False  # drop the second-order term: inner gradients treated as constants (FOMAML)
    adapt: str = "all"  # all | head | a regular expression over parameter names
    update_rule: str = "sgd"  # sgd | metasgd | lslr | metacurvature | lstm-optimizer | meta-lstm (core.update_rules.RULES)
    strategy: str = "auto"  # how a meta-batch runs: vmap | loop | auto (times both on the first batch, keeps the faster)
    checkpoint_steps: bool = False  # recompute second-order inner steps in the backward pass (memory for time)
    compile: bool = False  # torch.compile the meta-loss (maml, fomaml, metasgd, anil; strategy vmap or loop)


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
    filters: int = 64  # conv4: filters of each of the 4 convolution blocks
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
    grad_clip: float | None = None  # max global norm of the meta-gradient
    seed: int = 0  # seed of the model initialization and of the training and validation tasks
    val_every: int = 500  # validate every this many iterations (and at the end)
    val_tasks: int = 100  # validation tasks per validation
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
    arms: int = 5  # bandit: arms per task
    workers: int = 1  # MuJoCo: processes stepping the environments (1: in this process)
    eval_episodes: int = 20  # episodes per task per adaptation step at evaluation
    eval_lrs: list[float] = field(default_factory=lambda: [0.1, 0.05])  # evaluation step sizes (the last repeats)


@dataclass
class Config:
    """A whole run: one section per dataclass above, and the run directory."""

    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
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
        config = cast(Config, OmegaConf.to_object(cfg))  # a structured config comes back as its dataclass
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
        factory = (
            Config.__dataclass_fields__[section].default_factory if section in Config.__dataclass_fields__ else None
        )
        if section and callable(factory):
            valid = f"; valid keys of '{section}': {', '.join(factory().__dataclass_fields__)}"
        elif not section:
            valid = f"; valid sections: {', '.join(Config.__dataclass_fields__)}"
        return f"unknown option {key!r}{valid}"
    return f"invalid value for {key!r}: {message}"


RL_ALGORITHMS = ("maml-trpo", "promp")
CHOICES = {
    "algorithm.name": (
        "maml",
        "fomaml",
        "metasgd",
        "anil",
        "reptile",
        "pretrained",
        "protonets",
        "cnp",
        "snail",
        *RL_ALGORITHMS,
    ),
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
    "task.shots",
    "task.queries",
    "task.ways",
    "train.iterations",
    "train.meta_batch_size",
    "train.val_every",
    "train.val_tasks",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "eval.queries",
    "eval.tasks",
    "eval.batch_size",
)


def _get(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def validate(config: Config) -> None:
    """Raise :class:`ConfigError` naming the key and the fix for a value or a combination innerloop cannot run."""
    for dotted, allowed in CHOICES.items():
        value = _get(config, dotted)
        if value not in allowed:
            raise ConfigError(f"{dotted}={value!r} is not supported; choose one of: {', '.join(allowed)}")
    for dotted in POSITIVE:
        positive_int(dotted, _get(config, dotted), error=ConfigError)
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
        raise ConfigError(
            f"train.lr_decay_every must be a positive integer (or null), got {config.train.lr_decay_every}"
        )
    if config.train.dist_timeout <= 0:
        raise ConfigError(f"train.dist_timeout must be a positive number of seconds, got {config.train.dist_timeout}")
    if config.train.grad_clip is not None and config.train.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be positive (or null to disable), got {config.train.grad_clip}")
    bad = [s for s in config.eval.shots if s < 1] + [s for s in config.eval.steps if s < 0]
    if bad or not config.eval.shots or not config.eval.steps:
        raise ConfigError("eval.shots must be positive integers and eval.steps non-negative integers (both non-empty)")
    if any(h < 1 for h in [*config.model.hidden, *config.model.widths, config.model.filters]):
        raise ConfigError("model.hidden, model.widths and model.filters must be positive")
    _check_image_task(config)
    if config.eval.ways is not None:
        positive_int("eval.ways", config.eval.ways, error=ConfigError)
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


FOLDER_ONLY = (
    "mode",
    "invert",
    "split_fractions",
    "split_seed",
    "cache",
    "cache_dir",
)  # keys of task.name=image_folder alone


def _check_image_task(config: Config) -> None:
    """The image-data keys of the task section: values in range, and image_folder's keys only with image_folder."""
    t, defaults = config.task, TaskConfig()
    if t.name != "image_folder":
        given = [k for k in FOLDER_ONLY if getattr(t, k) != getattr(defaults, k)]
        if given:
            raise ConfigError(
                f"task.{given[0]} applies to task.name=image_folder only (got task.name={t.name!r}); drop it"
            )
    if t.image_size is not None and t.image_size < 1:
        raise ConfigError(f"task.image_size must be a positive integer (or null), got {t.image_size}")
    if t.mode not in ("auto", "L", "RGB"):
        raise ConfigError(f"task.mode={t.mode!r} is not supported; choose one of: auto, L, RGB")
    if t.rotations is not None:
        r = list(t.rotations)
        if not r or len(set(r)) != len(r) or any(a not in (0, 90, 180, 270) for a in r):
            raise ConfigError(
                f"task.rotations must be distinct angles from 0, 90, 180, 270 (e.g. [0, 90, 180, 270]; "
                f"[0] for none, null for the dataset's), got {r}"
            )
    if t.normalize is not None and (
        len(t.normalize) != 2
        or len(t.normalize[0]) != len(t.normalize[1])
        or len(t.normalize[0]) not in (1, 3)
        or any(v <= 0 for v in t.normalize[1])
    ):
        raise ConfigError(
            f"task.normalize must be [[mean, ...], [std, ...]] with 1 or 3 values each and std > 0, got {t.normalize}"
        )
    f = list(t.split_fractions)
    if len(f) != 3 or any(v < 0 for v in f) or abs(sum(f) - 1) > 1e-6 or f[0] <= 0:
        raise ConfigError(
            f"task.split_fractions must be 3 fractions train, val, test (train > 0, none negative) "
            f"summing to 1, e.g. [0.7, 0.15, 0.15]; got {f}"
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
    """Whether ``config`` is a meta-reinforcement-learning run (``task.name`` a family of ``innerloop.rl.envs``)."""
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
        raise ConfigError(
            f"meta-RL policies are MLPs (model.name=mlp, widths model.hidden); got model.name={config.model.name!r}"
        )
    if a.inner_steps < 1:
        raise ConfigError(
            f"meta-RL adapts with at least one policy-gradient step; set algorithm.inner_steps >= 1 (got {a.inner_steps})"
        )
    if a.update_rule != "sgd":
        raise ConfigError(
            f"meta-RL uses plain SGD inner steps (rates algorithm.inner_lr, rl.eval_lrs); got algorithm.update_rule={a.update_rule!r}"
        )
    if r.estimator is not None and r.estimator not in RL_ESTIMATORS:
        raise ConfigError(f"rl.estimator={r.estimator!r} is not supported; choose one of: {', '.join(RL_ESTIMATORS)}")
    for name in ("episodes", "eval_episodes", "cg_iterations", "outer_steps", "arms", "workers", "max_backtracks"):
        positive_int(f"rl.{name}", getattr(r, name), error=ConfigError)
    if r.horizon is not None and r.horizon < 1:
        raise ConfigError(f"rl.horizon must be a positive integer (or null for the family's), got {r.horizon}")
    for name in ("max_kl", "init_std", "clip", "inner_kl_target"):
        if not getattr(r, name) > 0:
            raise ConfigError(f"rl.{name} must be positive, got {getattr(r, name)}")
    if not (0 < r.gamma <= 1 and 0 <= r.gae_lambda <= 1 and 0 < r.backtrack_ratio < 1):
        raise ConfigError(
            f"need 0 < rl.gamma <= 1, 0 <= rl.gae_lambda <= 1, 0 < rl.backtrack_ratio < 1; got {r.gamma}, {r.gae_lambda}, {r.backtrack_ratio}"
        )
    if r.inner_lrs is not None and (
        not r.inner_lrs or any(lr <= 0 for lr in r.inner_lrs) or len(r.inner_lrs) > a.inner_steps
    ):
        raise ConfigError(
            f"rl.inner_lrs must hold 1 to algorithm.inner_steps={a.inner_steps} positive rates (the last repeats), "
            f"got {list(r.inner_lrs)}; or leave it null to use algorithm.inner_lr at every step"
        )
    if not r.eval_lrs or any(lr <= 0 for lr in r.eval_lrs):
        raise ConfigError(f"rl.eval_lrs must be a non-empty list of positive step sizes, got {list(r.eval_lrs)}")


def to_dict(config: Config) -> dict:
    """``config`` as plain nested dicts and lists (as stored in checkpoints)."""
    return cast(dict, OmegaConf.to_container(OmegaConf.structured(config)))


def from_dict(data: dict) -> Config:
    """The :class:`Config` of ``to_dict`` output (defaults filled in), validated."""
    try:
        config = cast(
            Config, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data)))
        )
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None
    validate(config)
    return config


def to_yaml(config: Config) -> str:
    """``config`` as YAML, every key written out (the ``config.yaml`` of a run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))

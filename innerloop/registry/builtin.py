"""innerloop's own algorithms, networks, task families and update rules, as registry entries.

A built-in learner is one ``AlgorithmEntry`` in ``ALGORITHMS`` (and an options dataclass in
``options.py`` when it has keys of its own); every class is a lazy ``"module:attr"`` string.
"""

from __future__ import annotations

from ..errors import ConfigError, DatasetError
from ..validate import positive_float, require_bounds
from . import options as o
from .builtin_lopt import LOPT_ALGORITHMS, LOPT_FAMILIES
from .builtin_rl import RL_ALGORITHMS, rl_families
from .entries import (
    AlgorithmEntry,
    BuildInputs,
    ModelEntry,
    TaskFamilyEntry,
    UpdateRuleEntry,
    add_loader,
    learner_kwargs,
    register_algorithm,
    register_model,
    register_task_family,
    register_update_rule,
    task_family,
    update_rule,
)


# --------------------------------------------------------------------------- algorithms: builders
def build_with_rule(entry: AlgorithmEntry, inputs: BuildInputs):
    """The default build, with ``update_rule`` a name turned into the rule (``sgd``: none, plain ``inner_lr``)."""
    kwargs = learner_kwargs(entry, inputs.options)
    name = kwargs.pop("update_rule")
    if name != "sgd":  # the rule carries its own rate
        kwargs.update(update_rule=update_rule(name).make(kwargs["inner_lr"]), inner_lr=None)
    return entry.learner_class()(inputs.model, **kwargs)


def _build_pretrained(entry: AlgorithmEntry, inputs: BuildInputs):
    a = inputs.options
    return entry.learner_class()(inputs.model, inner_lr=a.inner_lr, strategy=a.strategy, eval_steps=a.eval_steps or 1)


BASE_CLASSES = "innerloop.algorithms.baseline:BaseClassTasks"  # relabels the train episodes with base-class ids


def _build_baseline(entry: AlgorithmEntry, inputs: BuildInputs):
    """The base classifier spans the train split's classes (its class table, rotations included), or the
    ``base_classes`` a config states (a training batch with a label beyond them is refused in one line)."""
    kwargs = learner_kwargs(entry, inputs.options)
    classes = kwargs.pop("base_classes")
    if classes is None and inputs.tasks is None:
        raise ConfigError(
            f"algorithm.name={entry.name} sizes its classifier by the train split: build it with build_learner"
        )
    if inputs.tasks is not None:
        try:
            found = inputs.tasks("train").num_classes
        except DatasetError:
            if classes is None:
                raise
        else:
            if classes is not None and classes != found:
                raise ConfigError(
                    f"algorithm.base_classes={classes} but the train split has {found} classes: set "
                    f"algorithm.base_classes={found} (or null to read it from the data)"
                )
            classes = found
    return entry.learner_class()(inputs.model, num_classes=classes, **kwargs)


def _build_cnp(entry: AlgorithmEntry, inputs: BuildInputs):
    """A CNP is its own network (encoder h and decoder g, widths model.hidden), not a model handed to an algorithm."""
    if inputs.model is not None:
        raise ValueError(
            "cnp builds its encoder and decoder from model.hidden; pass no model (or build algorithms.CNP yourself)"
        )
    return entry.learner_class()(hidden=list(inputs.config.model.hidden), strategy=inputs.options.strategy)


def _build_snail(entry: AlgorithmEntry, inputs: BuildInputs):
    """The embedding (no head) is read as a sequence of task.ways * task.shots + 1 elements."""
    task = inputs.config.task
    return entry.learner_class()(inputs.model, ways=task.ways, shots=task.shots, strategy=inputs.options.strategy)


def _check_snail(config) -> None:
    """SNAIL classifies images, reading sequences of task.ways * task.shots + 1 elements.

    Its temporal-convolution depth is built for that sequence length, on which it is trained:
    evaluating other shots would feed it sequences it never saw, so it is refused.
    """
    task = config.task
    if task_family(task.name).kind == "regression":
        raise ConfigError(
            "algorithm.name=snail is a few-shot image classifier; use an image task with an image model "
            "(task.name=omniglot model.name=conv4, as the snail-omniglot-5w1s preset does), or cnp for regression "
            f"(got task.name={task.name!r})"
        )
    if list(config.eval.shots) != [task.shots]:
        raise ConfigError(
            f"algorithm.name=snail reads sequences of task.ways * task.shots + 1 = {task.ways * task.shots + 1} "
            f"elements and is evaluated on the shots it was trained with; set eval.shots=[{task.shots}] "
            f"(got eval.shots={list(config.eval.shots)}), or train another model with task.shots=K for K-shot tasks"
        )


def _build_metasgd(entry: AlgorithmEntry, inputs: BuildInputs):
    kwargs = learner_kwargs(entry, inputs.options)
    if kwargs["init_range"] is not None:
        kwargs["init_range"] = tuple(kwargs["init_range"])
    return entry.learner_class()(inputs.model, **kwargs)


def _check_metasgd(config) -> None:
    """``init_range`` is two numbers, low < high."""
    r = config.algorithm.init_range
    bad = r is not None and (len(r) != 2 or not r[0] < r[1])
    require_bounds("metasgd", config.algorithm, ("init_range", bad, "[low, high] with low < high"), error=ConfigError)


def _check_imaml(config) -> None:
    """iMAML's implicit gradient needs a solved inner problem (>= 1 step of gd or hf), lambda > 0, >= 1 CG step,
    damping >= 0."""
    a = config.algorithm
    require_bounds(
        "imaml",
        a,
        ("inner_steps", a.inner_steps < 1, ">= 1"),
        ("lam", a.lam <= 0, "> 0"),
        ("cg_steps", a.cg_steps < 1, ">= 1"),
        ("cg_damping", a.cg_damping < 0, ">= 0"),
        ("inner_solver", a.inner_solver not in ("gd", "hf"), "gd or hf"),
        ("hf_cg_steps", a.hf_cg_steps < 1, ">= 1"),
        ("proximal", a.proximal not in ("every", "final"), "every or final"),
        ("proximal", a.proximal == "final" and a.inner_solver != "gd", "every when inner_solver is hf"),
        (
            "inner_lr",
            a.proximal == "final" and a.inner_lr * a.lam > 1,
            "<= 1 / lam with proximal=final (a pull-back past theta)",
        ),
        ("cg_lam_damping", a.cg_lam_damping < 0, ">= 0"),
        error=ConfigError,
    )


def _check_mamlpp(config) -> None:
    """MAML++'s losses are per inner step (>= 1); its schedules count epochs of >= 1 iteration."""
    a = config.algorithm
    require_bounds(
        "mamlpp",
        a,
        ("inner_steps", a.inner_steps < 1, ">= 1"),
        ("epoch_iterations", a.epoch_iterations < 1, ">= 1"),
        ("msl_epochs", a.msl_epochs < 0, ">= 0"),
        ("first_order_epochs", a.first_order_epochs < 0, ">= 0"),
        error=ConfigError,
    )
    if a.per_step_bn and config.model.name == "mlp":
        raise ConfigError(
            "algorithm.per_step_bn=true keeps batch-norm weights per inner step, but model.name=mlp has no batch norm; "
            "set algorithm.per_step_bn=false (or use model.name=conv4)"
        )


def _check_convex_head(config) -> None:
    """r2d2 / metaoptnet-svm: lambda, C and the scale > 0, ridge >= 0, at least one solver and CG step."""
    a = config.algorithm
    for key in ("lam", "C", "scale", "ridge", "iterations", "cg_steps"):
        if hasattr(a, key):
            positive_float(f"algorithm.{key}", getattr(a, key), allow_zero=key == "ridge", error=ConfigError)


def _check_embedding_heads(config) -> None:
    """matchingnets, baseline(++): scale > 0, FCE steps and test-time epochs / batch >= 1, SGD settings >= 0."""
    a = config.algorithm
    for key in ("scale", "fce_steps", "finetune_epochs", "finetune_batch_size", "finetune_lr", "finetune_weight_decay"):
        if getattr(a, key, None) is not None:
            zero = key.endswith(("lr", "decay"))
            positive_float(f"algorithm.{key}", getattr(a, key), allow_zero=zero, error=ConfigError)
    for key in ("finetune_momentum", "finetune_dampening"):
        if hasattr(a, key) and not 0 <= getattr(a, key) <= 1:
            raise ConfigError(f"algorithm.{key} must lie in [0, 1], got {getattr(a, key)!r}")


# --------------------------------------------------------------------------- algorithms: entries
ALGORITHMS = [
    AlgorithmEntry(
        "maml", "innerloop.algorithms:MAML", o.MAMLOptions, build_with_rule, compile=True, checkpoint_steps=True
    ),
    AlgorithmEntry("fomaml", "innerloop.algorithms:FOMAML", o.FOMAMLOptions, build_with_rule, compile=True),
    AlgorithmEntry(
        "metasgd",
        "innerloop.algorithms:MetaSGD",
        o.MetaSGDRatesOptions,
        _build_metasgd,
        compile=True,
        checkpoint_steps=True,
        check=_check_metasgd,
    ),
    AlgorithmEntry(
        "anil", "innerloop.algorithms:ANIL", o.ANILOptions, build_with_rule, compile=True, checkpoint_steps=True
    ),
    AlgorithmEntry("reptile", "innerloop.algorithms:Reptile", o.InnerLoopOptions),
    AlgorithmEntry("pretrained", "innerloop.algorithms:Pretrained", o.PretrainedOptions, _build_pretrained),
    AlgorithmEntry("imaml", "innerloop.algorithms:IMAML", o.IMAMLOptions, preset="imaml-sine", check=_check_imaml),
    AlgorithmEntry(
        "mamlpp",
        "innerloop.algorithms:MAMLPlusPlus",
        o.MAMLPPOptions,
        build_with_rule,
        checkpoint_steps=True,
        preset="mamlpp-omniglot-5w1s",
        check=_check_mamlpp,
    ),
    AlgorithmEntry(
        "protonets", "innerloop.algorithms:ProtoNets", kinds=("classification",), head=False, fixed_ways=False
    ),
    *(
        AlgorithmEntry(
            name,
            f"innerloop.algorithms:{cls}",
            options,
            build,
            kinds=("classification",),
            head=False,
            fixed_ways=False,
            preset=f"{name}-omniglot-5w1s",
            check=_check_embedding_heads,
            train_tasks=tasks,  # the baselines train on batches of base-class labels
        )
        for name, cls, options, build, tasks in (
            ("matchingnets", "MatchingNets", o.MatchingNetsOptions, None, None),
            ("baseline", "Baseline", o.BaselineOptions, _build_baseline, BASE_CLASSES),
            ("baseline++", "BaselinePlusPlus", o.BaselineOptions, _build_baseline, BASE_CLASSES),
        )
    ),
    AlgorithmEntry(
        "r2d2",
        "innerloop.algorithms:R2D2",
        o.R2D2Options,
        kinds=("classification",),
        head=False,
        fixed_ways=False,
        preset="r2d2-omniglot-5w1s",
        check=_check_convex_head,
    ),
    AlgorithmEntry(
        "metaoptnet-svm",
        "innerloop.algorithms:MetaOptNetSVM",
        o.MetaOptNetSVMOptions,
        kinds=("classification",),
        head=False,
        fixed_ways=False,
        preset="metaoptnet-svm-omniglot-5w1s",
        check=_check_convex_head,
    ),
    AlgorithmEntry(
        "cnp",
        "innerloop.algorithms:CNP",
        o.ForwardPassOptions,
        _build_cnp,
        kinds=("regression",),
        builds_model=True,
        forward_pass=True,
        preset="cnp-sine",
    ),
    AlgorithmEntry(
        "snail",
        "innerloop.algorithms:SNAIL",
        o.ForwardPassOptions,
        _build_snail,
        kinds=("classification",),
        head=False,
        forward_pass=True,
        preset="snail-omniglot-5w1s",
        check=_check_snail,
    ),
]


# --------------------------------------------------------------------------- networks
def _mlp(config, out_features: int | None, input_shape: tuple[int, ...]):
    from ..models import MLP

    if out_features is None:
        raise ConfigError("model.name=mlp always has an output layer; use conv4 or resnet12 for an embedding")
    return MLP(input_shape[0], config.model.hidden, out_features, config.model.activation)


def _conv4(config, out_features: int | None, input_shape: tuple[int, ...]):
    from ..models import Conv4

    m = config.model
    return Conv4(input_shape[0], m.filters, out_features=out_features, image_size=input_shape[-1], pool=m.pool)


def _resnet12(config, out_features: int | None, input_shape: tuple[int, ...]):
    from ..models import ResNet12

    return ResNet12(input_shape[0], tuple(config.model.widths), out_features=out_features, image_size=input_shape[-1])


MODELS = [
    # optimizer families: the widths model.hidden
    ModelEntry("mlp", _mlp, kinds=("regression", "rl", "optimizer"), activation=True),
    ModelEntry("conv4", _conv4),
    ModelEntry("resnet12", _resnet12),
]


# --------------------------------------------------------------------------- task families
def _sinusoid_tasks(config, split: str, shots: int | None, queries: int | None, seed: int):
    from ..tasks import SinusoidTasks

    return SinusoidTasks(shots=shots or config.task.shots, queries=queries or config.task.queries, seed=seed)


def _omniglot(root, split: str, image_size: int, download: bool, resample: str):
    from ..data.omniglot import SPLITS, omniglot

    split = split if split in SPLITS else f"vinyals-{split}"
    return omniglot(root, split, image_size, download=download, resample=resample)


def _mini_imagenet(root, split: str, image_size: int, download: bool, resample: str):
    from ..data import mini_imagenet

    return mini_imagenet(root, split, image_size, resample=resample)


def _cifar(name: str):
    def load(root, split: str, image_size: int, download: bool, resample: str):
        from .. import data

        return getattr(data, name)(root, split, download=download, image_size=image_size, resample=resample)

    return load


TASK_FAMILIES = [
    TaskFamilyEntry("sinusoid", "regression", tasks=_sinusoid_tasks),
    TaskFamilyEntry("omniglot", "classification", load=_omniglot, image_size=28, channels=1),
    TaskFamilyEntry("mini_imagenet", "classification", load=_mini_imagenet, image_size=84),
    TaskFamilyEntry("cifar_fs", "classification", load=_cifar("cifar_fs"), image_size=32),
    TaskFamilyEntry("fc100", "classification", load=_cifar("fc100"), image_size=32),
    TaskFamilyEntry("image_folder", "classification", folder=True),
]


def _load() -> None:
    """Register the built-in entries; meta-RL families and update rules are read from their own tables."""
    from ..core.rules import RULES

    for entry in (*ALGORITHMS, *RL_ALGORITHMS, *LOPT_ALGORITHMS):
        register_algorithm(entry)
    for model in MODELS:
        register_model(model)
    for family in TASK_FAMILIES:
        register_task_family(family)
    for family in (*rl_families(), *LOPT_FAMILIES):
        register_task_family(family)
    for name, rule in RULES.items():
        register_update_rule(UpdateRuleEntry(name, rule))


add_loader(_load)

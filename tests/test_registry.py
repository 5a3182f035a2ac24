"""The registry is the single source of truth (issue 19 item 2): validation, builders, the config reference and
checkpoint compatibility read its entries, and code outside innerloop registers a learner and a task family."""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from innerloop import registry
from innerloop.algorithms import MAML
from innerloop.errors import ConfigError
from innerloop.registry import AlgorithmEntry, AlgorithmOptions, InnerLoopOptions, TaskFamilyEntry
from innerloop.tasks import TaskBatch
from innerloop.tasks.seeding import task_generator
from innerloop.training import config as config_module
from innerloop.training.builders import build_learner, build_model, build_optimizer
from innerloop.training.checkpoint import config_differences, load_checkpoint, restore_learner
from innerloop.training.config import from_dict, load_config, to_dict
from innerloop.training.launch import make_trainer
from innerloop.training.reference import config_reference

TRAINING = Path(__file__).resolve().parents[1] / "innerloop" / "training"


# --------------------------------------------------------------------------- a learner and tasks of "your own"
@dataclass
class ScaledOptions(InnerLoopOptions):
    scale: float = 1.0  # multiplies the inner step size


class ScaledMAML(MAML):
    """MAML with its inner rate multiplied by ``scale``: a stand-in for a third party's learner."""

    def __init__(self, model, inner_lr: float = 0.01, scale: float = 1.0, **kwargs):
        super().__init__(model, inner_lr=inner_lr * scale, **kwargs)
        self.scale = scale


@dataclass
class LineTasks:
    """y = a x + b, a in [-2, 2], b in [0, 1], x in [-5, 5]: a regression family of one's own."""

    shots: int
    queries: int
    seed: int

    def sample(self, draw: int, tasks, dtype=torch.float32) -> TaskBatch:
        n = 2 + self.shots + self.queries
        u = torch.stack(
            [torch.rand(n, generator=task_generator(self.seed, draw, j), dtype=torch.float64) for j in tasks]
        )
        x = 10 * u[:, 2:, None] - 5
        y = ((4 * u[:, :1, None] - 2) * x + u[:, 1:2, None]).to(dtype)
        x, k = x.to(dtype), self.shots
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])


def line_tasks(config, split, shots, queries, seed):
    return LineTasks(shots or config.task.shots, queries or config.task.queries, seed)


@pytest.fixture
def register():
    """``register(entry)`` adds an entry for the test only."""
    added = []

    def add(entry):
        added.append(entry)
        if isinstance(entry, AlgorithmEntry):
            return registry.register_algorithm(entry)
        return registry.register_task_family(entry)

    yield add
    for entry in added:
        registry.unregister(entry)


def toy(name="toy", **capabilities) -> AlgorithmEntry:
    return AlgorithmEntry(name, ScaledMAML, ScaledOptions, **capabilities)


IMAGES = TaskFamilyEntry("toy-images", "classification", tasks=line_tasks, image_size=28, channels=1)
IMAGE_TASK = ["task.name=toy-images", "model.name=conv4", "model.filters=8", "task.ways=3"]


# --------------------------------------------------------------------------- the name lists are the registry
def test_the_lists_of_names_before_the_registry_are_read_from_it(register):
    assert config_module.CHOICES["algorithm.name"] == tuple(registry.algorithms())
    assert config_module.CHOICES["task.name"] == tuple(registry.task_families())
    assert config_module.CHOICES["algorithm.update_rule"] == tuple(registry.update_rules())
    assert config_module.RULE_USERS[:3] == ("maml", "fomaml", "anil") and "mamlpp" in config_module.RULE_USERS
    assert config_module.FORWARD_PASS_LEARNERS == ("cnp", "snail")
    assert config_module.RL_ALGORITHMS[:3] == ("maml-trpo", "promp", "rl2")  # then pearl (issue 22)
    register(toy(forward_pass=True, preset="toy-preset"))
    assert config_module.CHOICES["algorithm.name"][-1] == "toy"
    assert config_module.FORWARD_PASS_LEARNERS == ("cnp", "snail", "toy")
    assert config_module.FORWARD_PASS_PRESETS["toy"] == "toy-preset"


def test_each_builtin_entry_resolves_to_its_class_and_builds_its_preset():
    for name, entry in registry.algorithms().items():
        assert isinstance(entry.learner_class(), type), name
    assert type(build_learner(load_config("reptile-sine"))).__name__ == "Reptile"
    learner = build_learner(load_config("maml-lslr-sine"))
    assert type(learner.update_rule).__name__ == "PerLayerPerStepRates"


def test_the_head_capability_decides_what_build_model_builds(register):
    register(IMAGES)
    register(toy("with-head"))
    register(toy("embedding", head=False))
    assert build_model(load_config(None, ["algorithm.name=with-head", *IMAGE_TASK])).out_features == 3
    embedding = build_model(load_config(None, ["algorithm.name=embedding", *IMAGE_TASK]))
    assert embedding.out_features == 8 and not isinstance(list(embedding.modules())[-1], torch.nn.Linear)


def test_fixed_ways_decides_whether_other_eval_ways_are_refused(register):
    register(IMAGES)
    register(toy("fixed"))
    register(toy("free", head=False, fixed_ways=False))
    with pytest.raises(ConfigError, match=r"output layer of task.ways=3 classes.*only protonets, .*and free test"):
        load_config(None, ["algorithm.name=fixed", *IMAGE_TASK, "eval.ways=5"])
    assert load_config(None, ["algorithm.name=free", *IMAGE_TASK, "eval.ways=5"]).eval.ways == 5


def test_compile_is_refused_naming_the_algorithms_whose_entries_have_it(register):
    register(toy())
    ask = ["algorithm.name=toy", "algorithm.compile=true", "algorithm.strategy=vmap"]
    with pytest.raises(ConfigError) as err:
        load_config(None, ask)
    assert "compiles the meta-loss of maml, fomaml, metasgd or anil (got algorithm.name='toy')" in str(err.value)
    register(toy("toy-compiled", compile=True))
    with pytest.raises(ConfigError, match="maml, fomaml, metasgd, anil or toy-compiled"):
        load_config(None, ask)
    assert load_config(None, ["algorithm.name=toy-compiled", *ask[1:]]).algorithm.compile is True
    compiled = build_learner(load_config(None, ["algorithm.name=toy-compiled", *ask[1:]]))
    assert "meta_loss" in vars(compiled)  # the learner was handed compile=True: its meta_loss is the compiled one


def test_checkpoint_steps_kinds_forward_pass_and_the_optimizer_are_read_from_the_entry(register):
    register(toy())
    register(toy("toy-cs", checkpoint_steps=True))
    with pytest.raises(ConfigError, match=r"it applies to maml, metasgd, anil, (\w+, )*\w+ and toy-cs"):
        load_config(None, ["algorithm.name=toy", "algorithm.checkpoint_steps=true"])
    assert load_config(None, ["algorithm.name=toy-cs", "algorithm.checkpoint_steps=true"]).algorithm.checkpoint_steps
    register(toy("toy-images-only", kinds=("classification",)))
    with pytest.raises(ConfigError, match="toy-images-only is implemented for classification only"):
        load_config(None, ["algorithm.name=toy-images-only"])
    register(toy("toy-forward", forward_pass=True, preset="toy-preset"))
    with pytest.raises(ConfigError, match=r"one forward pass.*\(the toy-preset preset does\)"):
        load_config(None, ["algorithm.name=toy-forward"])
    register(toy("toy-self-stepping", meta_optimizer=False))
    cfg = load_config(None, ["algorithm.name=toy-self-stepping"])
    assert build_optimizer(cfg, build_learner(cfg)) is None
    assert build_optimizer(load_config(None, ["algorithm.name=toy"]), build_learner(cfg)) is not None


# --------------------------------------------------------------------------- a third party's learner, end to end
def test_a_learner_and_task_family_registered_outside_innerloop_train_end_to_end(register, tmp_path):
    register(TaskFamilyEntry("lines", "regression", tasks=line_tasks))
    register(toy("scaled-maml"))
    cfg = load_config(
        None,
        [
            "algorithm.name=scaled-maml",
            "algorithm.scale=0.5",
            "algorithm.inner_lr=0.02",
            "task.name=lines",
            "model.hidden=[16]",
            "train.iterations=4",
            "train.meta_batch_size=4",
            "train.val_every=2",
            "train.val_tasks=4",
            "train.checkpoint_every=2",
            "train.log_every=1",
            "train.progress=false",
        ],
        out_dir=str(tmp_path / "run"),
    )
    assert isinstance(cfg.algorithm, ScaledOptions) and cfg.algorithm.scale == 0.5
    trainer = make_trainer(cfg)
    assert isinstance(trainer.learner, ScaledMAML) and trainer.learner.scale == 0.5
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r][-1] == 4
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    checkpoint = load_checkpoint(tmp_path / "run")  # its config, with algorithm.scale, reads back
    assert checkpoint.config.algorithm == cfg.algorithm
    assert "### algorithm.name=scaled-maml" in config_reference()
    assert "| `algorithm.scale` | float | `1.0` | multiplies the inner step size |" in config_reference()


# --------------------------------------------------------------------------- per-algorithm keys
def test_an_unknown_key_names_the_algorithms_own_keys():
    with pytest.raises(ConfigError) as err:
        load_config("protonet-omniglot-5w1s", ["algorithm.inner_lr=0.1"])
    message = str(err.value)
    assert message.startswith("algorithm.inner_lr=0.1 does not apply to algorithm.name='protonets': only maml, ")
    assert message.endswith("(valid keys of 'algorithm' for protonets: name, strategy, checkpoint_steps, compile)")
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"unknown option 'algorithm.bogus'; valid keys of 'algorithm' for reptile: "):
        load_config("reptile-sine", ["algorithm.bogus=1"])
    with pytest.raises(ConfigError, match=r"algorithm.first_order=True does not apply to algorithm.name='reptile'"):
        load_config("reptile-sine", ["algorithm.first_order=true"])


def test_a_presets_keys_for_another_algorithm_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="innerloop"):
        cfg = load_config("maml-omniglot-5w1s", ["algorithm.name=protonets"])
    assert type(cfg.algorithm) is AlgorithmOptions
    assert "algorithm.inner_lr, algorithm.inner_steps, algorithm.eval_steps, set for algorithm.name=maml" in caplog.text


OLD = {  # the single algorithm section of before the registry, as a run's config.yaml and state.pt held it
    "name": "reptile",
    "inner_lr": 0.01,
    "inner_steps": 5,
    "eval_steps": 10,
    "first_order": False,
    "adapt": "all",
    "update_rule": "sgd",
    "strategy": "auto",
    "checkpoint_steps": False,
    "compile": False,
}


def test_a_config_of_the_old_format_loads_and_a_changed_old_key_is_refused(tmp_path):
    new = load_config("reptile-sine", out_dir=str(tmp_path))
    old = to_dict(new)
    old["algorithm"] = dict(OLD)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_config(str(path)) == new and from_dict(old) == new
    old["algorithm"]["update_rule"] = "lslr"
    path.write_text(yaml.safe_dump(old))
    for load in (lambda: load_config(str(path)), lambda: from_dict(old)):
        with pytest.raises(
            ConfigError, match=r"algorithm.update_rule='lslr' does not apply to algorithm.name='reptile'"
        ):
            load()
    protonets = to_dict(load_config("protonet-omniglot-5w1s", out_dir=str(tmp_path)))
    protonets["algorithm"] = {**OLD, "name": "protonets", "inner_steps": 1, "eval_steps": None}
    assert type(from_dict(protonets).algorithm) is AlgorithmOptions


def test_a_run_directory_of_the_old_format_resumes_and_evaluates(tmp_path):
    """A checkpoint whose state.pt and config.yaml hold the old section loads and fits the same config."""
    quick = ["train.iterations=2", "train.meta_batch_size=2", "train.val_every=2", "train.val_tasks=2"]
    cfg = load_config("reptile-sine", [*quick, "train.checkpoint_every=2", "train.progress=false"], str(tmp_path))
    make_trainer(cfg).fit()
    folder = load_checkpoint(tmp_path).path
    state = torch.load(folder / "state.pt", weights_only=True)
    state["config"]["algorithm"] = dict(OLD)
    torch.save(state, folder / "state.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(state["config"]))
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.config == cfg
    restore_learner(build_learner(cfg), checkpoint, cfg)  # --resume's compatibility check: no difference
    longer = load_config("reptile-sine", [*quick, "train.iterations=3", "train.progress=false"], str(tmp_path))
    make_trainer(longer, resume=True).fit()
    assert load_checkpoint(tmp_path).iteration == 3


# --------------------------------------------------------------------------- checkpoint compatibility
def test_settings_harmless_on_resume_are_the_entries(register):
    register(toy(harmless=("algorithm.scale",)))
    base = load_config(None, ["algorithm.name=toy"])
    assert config_differences(load_config(None, ["algorithm.name=toy", "algorithm.scale=2"]), base) == []
    assert config_differences(load_config(None, ["algorithm.name=toy", "algorithm.strategy=loop"]), base) == [
        "algorithm.strategy: checkpoint 'auto' vs now 'loop'"
    ]
    register(toy("toy2"))  # the default: strategy, checkpoint_steps and compile may change
    base = load_config(None, ["algorithm.name=toy2"])
    assert config_differences(load_config(None, ["algorithm.name=toy2", "algorithm.strategy=loop"]), base) == []
    assert config_differences(load_config(None, ["algorithm.name=toy2", "algorithm.scale=2"]), base) == [
        "algorithm.scale: checkpoint 1.0 vs now 2.0"
    ]


def test_the_rl_section_counts_for_meta_rl_runs_only():
    sine, other = load_config("maml-sine"), load_config("maml-sine", ["rl.episodes=7"])
    assert config_differences(sine, other) == []
    nav, far = load_config("maml-trpo-nav2d"), load_config("maml-trpo-nav2d", ["rl.episodes=7"])
    assert config_differences(nav, far) == ["rl.episodes: checkpoint 7 vs now 20"]
    assert config_differences(nav, load_config("maml-trpo-nav2d", ["rl.eval_lrs=[0.3]", "rl.workers=2"])) == []


# --------------------------------------------------------------------------- training names no family
def test_training_names_no_algorithm_task_family_or_network():
    """Outside default values, no string of innerloop/training is the name of a built-in entry."""
    names = {*registry.algorithms(), *registry.task_families(), *registry.models()}
    found = []
    for path in sorted(TRAINING.glob("*.py")):
        tree = ast.parse(path.read_text())
        defaults = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and n.value is not None}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in defaults:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert found == []


def test_metasgd_draws_its_rates_from_init_range_and_refuses_a_bad_range():
    learner = build_learner(load_config("metasgd-sine", ["algorithm.init_range=[0.005,0.1]"]))
    rates = torch.cat([r.flatten() for r in learner.update_rule.rates.values()])
    assert 0.005 <= rates.min() < 0.02 and 0.085 < rates.max() <= 0.1  # drawn, not the constant inner_lr
    constant = build_learner(load_config("metasgd-sine"))
    assert all(bool((r == 0.01).all()) for r in constant.update_rule.rates.values())
    for bad in ("[0.1,0.005]", "[0.01]"):
        with pytest.raises(ConfigError, match=r"algorithm.init_range must be \[low, high\] with low < high"):
            build_learner(load_config("metasgd-sine", [f"algorithm.init_range={bad}"]))

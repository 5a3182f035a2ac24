"""The ``algorithm.*`` keys of each learner: common keys plus the learner's own (one dataclass per registry entry)."""

from __future__ import annotations

from dataclasses import dataclass


# Each field's meaning is its trailing comment (read by training/reference.py): one line a field, unformatted.
# fmt: off
@dataclass
class AlgorithmOptions:
    """The keys every algorithm has (``algorithm.*``); protonets has these only."""

    name: str = "maml"  # the algorithm: a registry entry (`innerloop config` lists each one's own keys)
    strategy: str = "auto"  # how a meta-batch runs: vmap | loop | auto (times both on the first batch, keeps the faster)
    checkpoint_steps: bool = False  # recompute second-order inner steps in the backward pass (memory for time)
    compile: bool = False  # torch.compile the meta-loss (for one fixed strategy, vmap or loop)


@dataclass
class InnerLoopOptions(AlgorithmOptions):
    """A gradient inner loop (reptile)."""

    inner_lr: float = 0.01  # inner-loop step size alpha (the initial rate of a learned update rule)
    inner_steps: int = 1  # inner gradient steps per task at meta-training
    eval_steps: int | None = None  # default adaptation steps for `adapt` (None: inner_steps)


@dataclass
class MetaSGDOptions(InnerLoopOptions):
    """A differentiated inner loop (metasgd)."""

    first_order: bool = False  # drop the second-order term: inner gradients treated as constants (FOMAML)


@dataclass
class ANILOptions(MetaSGDOptions):
    """A differentiated inner loop with a swappable update rule (anil)."""

    update_rule: str = "sgd"  # sgd | metasgd | lslr | metacurvature | lstm-optimizer | meta-lstm | adam | adam-correction | lopt-mlp | lopt-adafactor (registry update rules)


@dataclass
class MAMLOptions(ANILOptions):
    """MAML: any adapted parameters (maml)."""

    adapt: str = "all"  # all | head | a regular expression over parameter names


@dataclass
class FOMAMLOptions(InnerLoopOptions):
    """First-order MAML: the inner gradients are constants, so there is no first_order key (fomaml)."""

    adapt: str = "all"  # all | head | a regular expression over parameter names
    update_rule: str = "sgd"  # sgd | metasgd | lslr | metacurvature | lstm-optimizer | meta-lstm | adam | adam-correction | lopt-mlp | lopt-adafactor (registry update rules)


@dataclass
class MAMLPPOptions(MAMLOptions):
    """MAML++ (mamlpp): MAML with LSLR, a multi-step loss, per-step batch norm and derivative-order annealing."""

    inner_steps: int = 5  # inner gradient steps per task at meta-training (each one's query loss enters the multi-step loss)
    update_rule: str = "lslr"  # sgd | metasgd | lslr | metacurvature | lstm-optimizer | meta-lstm | adam | adam-correction | lopt-mlp | lopt-adafactor (lslr: MAML++'s per-layer per-step rates)
    per_step_bn: bool = True  # a set of batch-norm weights and biases per inner step, meta-learned outside the inner loop
    msl_epochs: int = 10  # multi-step loss: epochs over which the per-step loss weights anneal to the last step (0: last step only)
    first_order_epochs: int = 0  # derivative-order annealing: epochs trained first order before switching to second order
    epoch_iterations: int = 500  # meta-iterations per epoch of the multi-step-loss and derivative-order schedules


@dataclass
class IMAMLOptions(InnerLoopOptions):
    """Implicit MAML: a proximal inner problem solved by gradient descent, an implicit meta-gradient by CG (imaml)."""

    inner_lr: float = 0.01  # step size of gradient descent on the proximal inner problem
    inner_steps: int = 10  # gradient-descent steps on the proximal inner problem at meta-training (>= 1)
    lam: float = 1.0  # lambda, the weight of the proximal term lambda/2 ||phi - theta||^2 of the inner problem
    cg_steps: int = 5  # conjugate-gradient steps (Hessian-vector products) per task for the implicit meta-gradient
    cg_damping: float = 0.0  # added to the CG system ((1 + cg_damping) I + H / lambda) g = grad L_query
    adapt: str = "all"  # all | head | a regular expression over parameter names (the others: shared)


@dataclass
class R2D2Options(AlgorithmOptions):
    """A ridge-regression head on a meta-learned embedding (r2d2): W = Z^T (Z Z^T + lambda I)^-1 Y."""

    lam: float = 50.0  # ridge weight lambda > 0 (its initial value when learn_lam)
    learn_lam: bool = True  # meta-learn lambda (as log lambda)
    scale: float = 1.0  # initial scale alpha of the logits alpha Z_Q W + beta
    learn_scale: bool = True  # meta-learn the logits' scale alpha and bias beta
    intercept: bool = True  # append a constant feature to the embeddings (a bias per class in the regression)


@dataclass
class MetaOptNetSVMOptions(AlgorithmOptions):
    """A multi-class SVM head (Crammer-Singer dual, implicit gradient) on a meta-learned embedding (metaoptnet-svm)."""

    C: float = 0.1  # the SVM's cost C > 0
    iterations: int = 300  # accelerated projected-gradient steps on the SVM dual per task
    cg_steps: int = 50  # conjugate-gradient steps of the implicit backward per task (at most S (N - 1) are used)
    ridge: float = 0.0  # added to the kernel's diagonal (0: the paper's problem; > 0 needed when ways x shots > D)
    scale: float = 1.0  # initial scale alpha of the logits alpha Z_Q W
    learn_scale: bool = True  # meta-learn alpha


@dataclass
class PretrainedOptions(AlgorithmOptions):
    """Joint training, fine-tuned at test (pretrained)."""

    inner_lr: float = 0.01  # step size of the fine-tuning at test
    eval_steps: int | None = None  # default fine-tuning steps for `adapt` (None: 1)


@dataclass
class ForwardPassOptions(AlgorithmOptions):
    """A learner that adapts in one forward pass (cnp, snail): no inner gradient steps."""

    inner_steps: int = 0  # always 0: the learner adapts in its forward pass
    eval_steps: int | None = None  # null or 0 (no adaptation steps)


@dataclass
class MatchingNetsOptions(AlgorithmOptions):
    """Matching Networks: cosine attention over the support set, optionally full context embeddings (matchingnets)."""

    fce: bool = False  # full context embeddings: a bidirectional LSTM over the support set, an attention LSTM for queries
    fce_steps: int | None = None  # K, the attention LSTM's read steps (null: one per support example)
    scale: float = 1.0  # multiplies the cosine similarities before the attention softmax (1: the paper)


@dataclass
class BaselineOptions(AlgorithmOptions):
    """Pre-training over all base classes, a new classifier fit on each test support set (baseline, baseline++)."""

    scale: float | None = None  # baseline++: cosine scale of both classifiers (null: 2 up to 200 classes, 10 above)
    finetune_epochs: int = 100  # test time: passes of SGD over the support set (the paper: 100)
    finetune_batch_size: int = 4  # test time: support examples per SGD step (the paper: 4)
    finetune_lr: float = 0.01  # test time: SGD step size (the paper: 0.01)
    finetune_momentum: float = 0.9  # test time: SGD momentum (the paper: 0.9)
    finetune_dampening: float = 0.9  # test time: SGD momentum dampening (the authors' code: 0.9)
    finetune_weight_decay: float = 0.001  # test time: SGD weight decay (the paper: 0.001)
    finetune_seed: int = 0  # test time: seeds the new classifier's initialisation and the support batch order


@dataclass
class PolicyGradientOptions(AlgorithmOptions):
    """Meta-RL (maml-trpo, promp): policy-gradient inner steps; the rest is the rl section."""

    inner_lr: float = 0.01  # inner policy-gradient step size (rl.inner_lrs: one per step)
    inner_steps: int = 1  # policy-gradient steps per task at meta-training
    first_order: bool = False  # drop the second-order term of the inner steps


# fmt: on

# The keys of the single ``algorithm`` section innerloop wrote before the registry, and their defaults: a run
# directory of that time holds all of them; a key the algorithm no longer has loads when it equals this value.
LEGACY_DEFAULTS: dict[str, object] = {
    "inner_lr": 0.01,
    "inner_steps": 1,
    "eval_steps": None,
    "first_order": False,
    "adapt": "all",
    "update_rule": "sgd",
}

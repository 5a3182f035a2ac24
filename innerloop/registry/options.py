"""The ``algorithm.*`` keys of each learner: common keys plus the learner's own (one dataclass per registry entry)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
class MetaSGDRatesOptions(MetaSGDOptions):
    """Meta-SGD's learned rates (metasgd)."""

    init_range: list[float] | None = None  # [low, high]: each rate drawn uniformly from it (the paper: [0.005, 0.1]); None: every rate inner_lr


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
    inner_solver: str = "gd"  # gd (gradient descent of rate inner_lr) | hf (Hessian-free Newton-CG steps with a line search: iMAML-HF)
    hf_cg_steps: int = 5  # inner_solver=hf: CG steps (Hessian-vector products) per Newton step
    proximal: str = "every"  # every (the proximal term in each gd step, eq. 3) | final (gd on the support loss, then one pull-back step of inner_lr * lam: the authors' code)
    cg_lam_damping: float = 0.0  # added to lambda in the CG system's Hessian term H / (lambda + cg_lam_damping) (the authors' code: 10)


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

    base_classes: int | None = None  # classes of the pre-training classifier (null: the train split's, read from the data; a preset may state them so it builds without the data)
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


@dataclass
class RL2Options(AlgorithmOptions):
    """RL² (rl2): a GRU policy over trials, PPO outer loop (learning rate train.meta_lr; rl.gamma, rl.gae_lambda)."""

    hidden_size: int = 256  # units of the GRU policy (Duan et al. 2016: 256)
    episodes_per_trial: int = 2  # K, episodes of one task played in sequence with the hidden state kept (reset between trials)
    trials: int = 4  # trials per task per meta-batch, played in parallel
    clip: float = 0.2  # PPO's clipped objective epsilon
    epochs: int = 10  # PPO passes over each meta-batch of trials
    minibatches: int = 4  # PPO minibatches per epoch, each a share of every task's trials (at most trials)
    value_coef: float = 0.5  # weight of the value head's squared error in the PPO loss
    entropy_coef: float = 0.0  # weight of the policy's entropy bonus in the PPO loss
    eval_trials: int | None = None  # trials per task at validation (null: rl.eval_episodes, which `innerloop eval` uses)


@dataclass
class PEARLOptions(AlgorithmOptions):
    """PEARL (pearl): a context encoder and SAC on fixed training tasks with replay buffers; one iteration = collect + gradient_steps (learning rate train.meta_lr, meta-batch train.meta_batch_size, policy and critics model.hidden, rl.gamma)."""

    train_tasks: int = 100  # fixed training tasks, each with its own replay buffers (Rakelly et al. 2019: 100 on HalfCheetah-velocity)
    latent_dim: int = 5  # size of the latent task variable z
    encoder_hidden: list[int] = field(default_factory=lambda: [200, 200, 200])  # hidden widths of the context encoder
    tasks_per_iteration: int = 5  # training tasks collected on per iteration
    initial_episodes: int = 10  # episodes with z from the prior on every training task before the first gradient step
    prior_episodes: int = 2  # per collected task and iteration: episodes with z from the prior (RL and encoder buffers)
    posterior_episodes: int = 3  # per collected task and iteration: episodes with z from the posterior of encoder-buffer context (RL buffer only)
    gradient_steps: int = 2000  # gradient steps per iteration
    batch_size: int = 256  # SAC transitions per task per gradient step
    context_batch_size: int = 100  # context transitions per task per gradient step (and per posterior of a collection)
    buffer_size: int = 100000  # transitions kept in each task's RL replay buffer (checkpointed: mind the size)
    kl_weight: float = 0.1  # beta, weight of KL(q(z|c) || N(0, I)) summed over the meta-batch's tasks
    reward_scale: float = 5.0  # multiplies rewards in the critics' target
    temperature: float = 1.0  # SAC's entropy weight alpha (the initial value when learned)
    learn_temperature: bool = False  # learn alpha towards the target entropy -action_dim (the paper: fixed)
    tau: float = 0.005  # Polyak rate of the target critics
    policy_reg: float = 0.001  # weight of the policy's squared mean and log-std penalty
    next_obs_in_context: bool = False  # context transitions also hold the next observation
    deterministic_eval: bool = True  # evaluation acts with tanh(mean) (z is always sampled: posterior sampling)


@dataclass
class LoptOptions(AlgorithmOptions):
    """Meta-training a learned optimizer over long inner runs (lopt); train.meta_batch_size is the tasks per estimate."""

    rule: str = "lopt-mlp"  # the learned optimizer: lopt-mlp | lopt-adafactor | adam-correction (registry update rules with meta-parameters)
    inner_lr: float = 0.001  # the rule's nominal step (adam-correction: the Adam rate it starts as)
    scale_mult: float = 0.0  # adam-correction: Adam's step times exp(scale_mult * s), s the MLP's log-magnitude output (0: unscaled)
    max_scale: float = 0.0  # adam-correction with scale_mult: bound that multiplier smoothly to [1/max_scale, max_scale] (0: unbounded)
    guard: float = 0.0  # adam-correction with scale_mult: loss guard, the multiplier's rise over 1 shrinks by exp(-r / guard), r the log loss's rise over its moving average (0: off)
    guard_decay: float = 0.9  # decay of the loss guard's moving average of the log loss
    estimator: str = "pes"  # meta-gradient estimator: full (backprop through whole runs) | tbptt | es (antithetic) | pes (Persistent ES)
    horizon: int = 200  # inner steps of one run before it restarts on a new task
    truncation: int = 10  # inner steps per meta-gradient estimate (full: the horizon)
    objective: str = "mean"  # meta-objective: mean (training loss over the run) | log (log training loss over the run) | final (loss after the run) | validation (held-out batches)
    sigma: float = 0.01  # es, pes: standard deviation of the antithetic perturbations of the meta-parameters
    batch_size: int = 32  # examples per inner minibatch
    tune_tasks: int = 8  # evaluation: meta-training tasks the baselines' learning rates are tuned on
    tune_lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0])  # evaluation: the log grid of Adam's and SGD-momentum's learning rates
    mix_hidden: list[list[int]] = field(default_factory=list)  # meta-train also on these networks of task.name (widths each, e.g. [[16], [64]]): the tasks per estimate split evenly over model.hidden and them; validation stays on model.hidden


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

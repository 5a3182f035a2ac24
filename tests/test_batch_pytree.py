"""The wider inner-loop contract: pytree task data (dicts of tensors) and support losses that see the parameters."""

import pytest
import torch
from torch import nn

from innerloop import MAML, SinusoidTasks, TaskBatch, TaskList
from innerloop.core.engine import adapt_params
from innerloop.core.rules import SGD
from innerloop.errors import InputError


class BagOfTokens(nn.Module):
    """A model whose input is a dict: ``input_ids (S, L)`` (integers) and a 0/1 ``attention_mask (S, L)``."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        mask = x["attention_mask"].unsqueeze(-1)
        pooled = (self.embed(x["input_ids"]) * mask).sum(-2) / mask.sum(-2).clamp_min(1)
        return self.out(pooled)


def dict_batch(tasks=4, shots=5, queries=6, length=7, seed=0):
    """Each task scores a sequence by the mean of its own per-token weights over the unmasked tokens."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(tasks, 1, 11, generator=g, dtype=torch.float64)

    def examples(n):
        ids = torch.randint(0, 11, (tasks, n, length), generator=g)
        mask = (torch.rand(tasks, n, length, generator=g) > 0.3).double()
        score = (torch.gather(weights.expand(-1, n, -1), 2, ids) * mask).sum(-1) / mask.sum(-1).clamp_min(1)
        return {"input_ids": ids, "attention_mask": mask}, score.unsqueeze(-1)

    return TaskBatch(*examples(shots), *examples(queries))


def trained(strategy, steps=3):
    torch.manual_seed(0)
    learner = MAML(BagOfTokens().double(), inner_lr=0.1, inner_steps=2, strategy=strategy)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for it in range(steps):
        opt.zero_grad()
        loss, _ = learner.meta_loss(dict_batch(seed=it))
        loss.backward()
        opt.step()
    return learner


def test_maml_trains_on_dict_inputs_and_vmap_agrees_with_the_loop():
    vmapped, looped = trained("vmap"), trained("loop")
    untrained = MAML(BagOfTokens().double(), inner_lr=0.1)
    for (name, a), (_, b) in zip(vmapped.named_parameters(), looped.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(vmapped.parameters(), untrained.parameters()))
    held_out = dict_batch(seed=99)
    ev = vmapped.evaluate(held_out, [0, 2])[2]["loss"]
    torch.testing.assert_close(ev, looped.evaluate(held_out, [0, 2])[2]["loss"], rtol=1e-10, atol=1e-12)
    task = held_out[1]
    adapted = vmapped.adapt({k: v[0] for k, v in task.support_x.items()}, task.support_y[0], steps=2)
    assert adapted.keys() == dict(vmapped.model.named_parameters()).keys()


def test_a_task_batch_maps_over_the_leaves_of_its_fields():
    b = dict_batch(tasks=4)
    assert b.num_tasks == 4 and len(b[1:3]) == 2
    assert b[2].support_x["attention_mask"].shape == (1, 5, 7)
    torch.testing.assert_close(b[1:3].query_x["input_ids"], b.query_x["input_ids"][1:3])
    moved = b.to(torch.float32)  # floats cast, integer ids kept
    assert (
        moved.support_x["attention_mask"].dtype == torch.float32 and moved.support_x["input_ids"].dtype == torch.int64
    )
    both = TaskBatch.cat([b[:1], b[1:]])
    assert torch.equal(both.support_x["input_ids"], b.support_x["input_ids"])
    tasks = TaskList(
        [
            b[0],
            tuple(
                getattr(b[1], f)[0] if f.endswith("y") else {k: v[0] for k, v in getattr(b[1], f).items()}
                for f in ("support_x", "support_y", "query_x", "query_y")
            ),
        ]
    )
    assert len(tasks) == 2 and tasks[1].support_x["attention_mask"].shape == (1, 5, 7)
    loss, _ = MAML(BagOfTokens().double(), inner_lr=0.1).meta_loss(tasks)  # a task list of dict tasks
    assert loss.isfinite()


def test_the_checks_name_the_leaf_that_is_wrong():
    b = dict_batch()
    bad = dict(b.support_x, attention_mask=b.support_x["attention_mask"].clone())
    bad["attention_mask"][1, 2, 0] = float("nan")
    learner = MAML(BagOfTokens().double(), inner_lr=0.1)
    with pytest.raises(InputError, match=r"support_x\['attention_mask'\] \(4, 5, 7\) holds 1 NaN.*first in task 1"):
        learner.meta_loss(TaskBatch(bad, b.support_y, b.query_x, b.query_y))
    short = dict(b.support_x, attention_mask=b.support_x["attention_mask"][:, :4])
    with pytest.raises(
        InputError, match=r"support_x\['input_ids'\] has 5 examples per task but support_x\['attention_mask'\] has 4"
    ):
        TaskBatch(short, b.support_y, b.query_x, b.query_y)
    with pytest.raises(InputError, match=r"support_x and query_x differ in structure"):
        TaskBatch(b.support_x, b.support_y, {"input_ids": b.query_x["input_ids"]}, b.query_y)
    with pytest.raises(
        InputError, match=r"TaskBatch support_x\['attention_mask'\]\[0\] must be a torch.Tensor, got int"
    ):
        TaskBatch(dict(b.support_x, attention_mask=[1, 0]), b.support_y, b.query_x, b.query_y)
    with pytest.raises(
        InputError, match=r"support_x\['input_ids'\] \(5, 7\) and support_y \(4, 1\) must hold the same"
    ):
        learner.adapt({k: v[0] for k, v in b.support_x.items()}, b.support_y[0, :4])


def test_a_support_loss_may_see_the_parameters():
    """iMAML's proximal term: L(phi) = mse + lam/2 ||phi - theta||^2, here through loss_fn(output, target, params)."""
    lam, lr = 3.0, 0.1
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}

    def proximal(output, target, params):
        return nn.functional.mse_loss(output, target) + lam / 2 * sum(
            ((params[n] - theta[n]) ** 2).sum() for n in theta
        )

    b = SinusoidTasks(shots=5, queries=5, seed=0).sample(0, range(1), dtype=torch.float64)
    adapted = MAML(model, inner_lr=lr, loss_fn=proximal).adapt(b.support_x[0], b.support_y[0], steps=3)
    phi = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    for _ in range(3):  # by hand: gradient descent on the proximal objective
        out = torch.func.functional_call(model, phi, (b.support_x[0],))
        grads = torch.autograd.grad(proximal(out, b.support_y[0], phi), list(phi.values()))
        phi = {n: (p - lr * g).detach().requires_grad_() for (n, p), g in zip(phi.items(), grads)}
    for n in phi:
        torch.testing.assert_close(adapted[n], phi[n].detach(), rtol=1e-12, atol=1e-14)
    plain = MAML(model, inner_lr=lr).adapt(b.support_x[0], b.support_y[0], steps=3)
    assert any(not torch.allclose(plain[n], adapted[n]) for n in phi)  # the term acts after the first step


def test_the_engine_runs_any_objective_on_pytree_data():
    w = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    data = {"a": torch.tensor([3.0, 1.0], dtype=torch.float64), "scale": torch.tensor(0.5, dtype=torch.float64)}

    def objective(params, d):  # 0.5 * scale * ||w - a||^2, gradient scale * (w - a)
        return 0.5 * d["scale"] * ((params["w"] - d["a"]) ** 2).sum()

    out = adapt_params(objective, SGD(0.2), w, {}, data, 1)
    torch.testing.assert_close(out["w"], w["w"] - 0.2 * 0.5 * (w["w"] - data["a"]))
    per_step = adapt_params(objective, SGD(0.2), w, {}, [data, dict(data, scale=torch.tensor(0.0))], 2, per_step=True)
    torch.testing.assert_close(per_step["w"], out["w"])  # the second step's data has scale 0: no move

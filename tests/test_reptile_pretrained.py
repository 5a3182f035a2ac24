"""Reptile's update against its closed form on a quadratic; the pretrained baseline's objective."""

import pytest
import torch
from torch import nn

from innerloop import Pretrained, Reptile, TaskBatch


class Point(nn.Module):
    """f(x) = w for every input: the loss mean((w - c)^2) is a quadratic in w."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64))

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


def quadratic_tasks(centers):
    centers = torch.as_tensor(centers, dtype=torch.float64)
    t, d = centers.shape
    y = centers[:, None, :].expand(t, 4, d)
    x = torch.zeros(t, 4, 1, dtype=torch.float64)
    return TaskBatch(x[:, :2], y[:, :2], x[:, 2:], y[:, 2:])


def closed_form_adapt(w, c, alpha, k, d):
    # grad of mean over points and dims of (w - c)^2 is 2 (w - c) / d
    return c + (1 - 2 * alpha / d) ** k * (w - c)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_batched_reptile_update_matches_formula(strategy):
    w0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    centers = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, -1.0], [-2.0, 1.0, 1.0]], dtype=torch.float64)
    alpha, k, beta = 0.3, 4, 0.7
    learner = Reptile(Point(w0.clone()), inner_lr=alpha, inner_steps=k, strategy=strategy)
    optimizer = torch.optim.SGD(learner.parameters(), lr=beta)
    learner.meta_backward(quadratic_tasks(centers))
    optimizer.step()
    theta_i = torch.stack([closed_form_adapt(w0, c, alpha, k, 3) for c in centers])
    expected = w0 + beta * (theta_i - w0).mean(0)  # theta + beta * mean_i(theta_i - theta)
    torch.testing.assert_close(learner.model.w.detach(), expected, rtol=1e-12, atol=1e-12)


def test_serial_reptile_matches_algorithm_1():
    w0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    centers = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 1.0]], dtype=torch.float64)
    alpha, k, beta = 0.2, 3, 0.5
    learner = Reptile(Point(w0.clone()), inner_lr=alpha, inner_steps=k)
    new = learner.serial_update(quadratic_tasks(centers), beta)
    w = w0.clone()
    for c in centers:
        w = w + beta * (closed_form_adapt(w, c, alpha, k, 2) - w)
    torch.testing.assert_close(new["w"], w, rtol=1e-12, atol=1e-12)
    assert torch.equal(learner.model.w.detach(), w0)  # pure: the model is untouched


def test_reptile_refuses_to_be_second_order():
    with pytest.raises(ValueError, match="first-order"):
        Reptile(Point([0.0]), first_order=False)
    with pytest.raises(ValueError, match="inner_steps"):
        Reptile(Point([0.0]), inner_steps=0)


def test_pretrained_trains_jointly_and_fine_tunes():
    centers = torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64)
    learner = Pretrained(Point([0.0, 0.0]), inner_lr=0.25)
    loss, _ = learner.meta_loss(quadratic_tasks(centers))
    loss.backward()
    # gradient of the joint loss: 2 (w - mean_i c_i) / d
    torch.testing.assert_close(learner.model.w.grad, 2 * (0 - centers.mean(0)) / 2)
    b = quadratic_tasks(centers)
    adapted = learner.adapt(b.support_x[0], b.support_y[0], steps=2)
    torch.testing.assert_close(
        adapted["w"], closed_form_adapt(torch.zeros(2, dtype=torch.float64), centers[0], 0.25, 2, 2)
    )

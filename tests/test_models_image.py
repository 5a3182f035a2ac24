"""Image backbones: Conv-4 and ResNet-12 shapes, architecture, and behaviour under the functional core."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innerloop
from innerloop.core.params import head_names
from innerloop.models import Conv4, ResNet12
from innerloop.tasks import TaskBatch


def image_batch(tasks=2, ways=3, shots=2, queries=2, size=28, channels=1, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(
        torch.randn(tasks, ways * shots, channels, size, size, generator=g, dtype=dtype),
        labels(shots),
        torch.randn(tasks, ways * queries, channels, size, size, generator=g, dtype=dtype),
        labels(queries),
    )


def meta_gradient(learner, batch):
    loss, _ = learner.meta_loss(batch)
    return loss.detach(), torch.autograd.grad(loss, list(learner.parameters()))


# --------------------------------------------------------------------------- Conv-4


@pytest.mark.parametrize(
    "channels, hidden, size, features",
    [(1, 64, 28, 64), (3, 64, 84, 1600), (3, 32, 84, 800), (1, 8, 28, 8)],
)
def test_conv4_embedding_shapes(channels, hidden, size, features):
    model = Conv4(channels, hidden, image_size=size)
    assert model.embedding_dim == features == model.out_features
    assert model(torch.randn(2, channels, size, size)).shape == (2, features)


@pytest.mark.parametrize("size, features", [(28, 64), (84, 1600)])
def test_conv4_head_shapes_and_head_is_last(size, features):
    model = Conv4(3, 64, out_features=5, image_size=size)
    assert isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear)
    assert model[-1].in_features == features
    assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert head_names(model) == ["5.weight", "5.bias"]


def test_conv4_too_small_image_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        Conv4(1, 8, out_features=5, image_size=15)


def test_conv4_is_the_paper_architecture():
    """4 x [conv 3x3 pad 1, BN (batch statistics), ReLU, maxpool 2x2], flatten, linear (written out with F)."""
    torch.manual_seed(0)
    model = Conv4(3, 6, out_features=4, image_size=32).double()
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    h = x
    for b in range(4):
        conv, bn = model[b][0], model[b][1]
        h = F.conv2d(h, conv.weight, conv.bias, padding=1)
        h = F.batch_norm(h, None, None, bn.weight, bn.bias, training=True)
        h = F.max_pool2d(F.relu(h), 2)
    expected = F.linear(h.flatten(1), model[5].weight, model[5].bias)
    learner = innerloop.MAML(model, inner_lr=0.1)  # functional core: transductive batch norm
    torch.testing.assert_close(learner(x), expected, rtol=1e-10, atol=1e-10)
    learner.eval()  # evaluation mode too: innerloop never uses running statistics
    torch.testing.assert_close(learner(x), expected, rtol=1e-10, atol=1e-10)


def test_conv4_stride_sizes_features_and_parameter_names():
    """MAML's Omniglot network: 28 -> 14 -> 7 -> 4 -> 2 by stride-2 convolutions, a mean over 2x2 -> 64 features."""
    model = Conv4(1, 64, out_features=5, pool="stride")
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [model[b][0].stride for b in range(4)] == [(2, 2)] * 4
    sides, h = [], torch.randn(3, 1, 28, 28)
    for block in model[:4]:
        h = block(h)
        sides.append(tuple(h.shape[-2:]))
    assert sides == [(14, 14), (7, 7), (4, 4), (2, 2)]
    assert model.embedding_dim == 64 and model[-1].in_features == 64
    assert model[:-1](torch.randn(3, 1, 28, 28)).shape == (3, 64)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 5)
    pooled = Conv4(1, 64, out_features=5)
    assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in pooled.named_parameters()]
    assert head_names(model) == ["5.weight", "5.bias"]
    assert Conv4(3, 32, image_size=84, pool="stride").embedding_dim == 32  # 84 -> 42 -> 21 -> 11 -> 6, then the mean


def test_conv4_stride_is_maml_s_omniglot_network():
    """4 x [conv 3x3 stride 2 pad 1, BN (batch statistics), ReLU], mean over positions, linear (cbfinn/maml)."""
    torch.manual_seed(0)
    model = Conv4(1, 6, out_features=4, pool="stride").double()
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    h = x
    for b in range(4):
        conv, bn = model[b][0], model[b][1]
        h = F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1)
        h = F.relu(F.batch_norm(h, None, None, bn.weight, bn.bias, training=True))
    expected = F.linear(h.mean((2, 3)), model[5].weight, model[5].bias)
    torch.testing.assert_close(innerloop.MAML(model, inner_lr=0.1)(x), expected, rtol=1e-10, atol=1e-10)


def test_conv4_unknown_pool_is_one_line():
    with pytest.raises(ValueError, match=r"pool must be one of max, stride, got 'avg'"):
        Conv4(1, 8, pool="avg")


def test_model_pool_config_key(monkeypatch, capsys):
    """The maml-omniglot presets build the strided network; a bad model.pool is one ConfigError line (CLI: status 2)."""
    from cli_runner import cli  # tests/cli_runner.py

    from innerloop.errors import ConfigError
    from innerloop.training.config import load_config

    for preset in ("maml-omniglot-5w1s", "maml-omniglot-5w5s", "maml-omniglot-20w1s", "maml-omniglot-20w5s"):
        assert load_config(preset).model.pool == "stride", preset
    assert load_config("protonet-omniglot-5w1s").model.pool == "max"
    with pytest.raises(ConfigError, match=r"^model.pool must be one of max, stride, got 'avg'$"):
        load_config("maml-omniglot-5w1s", ["model.pool=avg"])
    code, _, err = cli(monkeypatch, capsys, "config", "--show", "maml-omniglot-5w1s", "model.pool=avg")
    assert code == 2 and err.strip() == "error: model.pool must be one of max, stride, got 'avg'", err


def test_conv4_channels_last_input_and_weights_give_the_same_output():
    torch.manual_seed(0)
    model = Conv4(3, 8, out_features=5, image_size=84)
    x = torch.randn(4, 3, 84, 84)
    expected = model(x)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), expected)
    nhwc = Conv4(3, 8, out_features=5, image_size=84, channels_last=True)
    nhwc.load_state_dict(model.state_dict())
    assert nhwc[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("inner_steps, pool", [(1, "max"), (2, "max"), (2, "stride")])
def test_maml_conv4_vmap_and_loop_meta_gradients_agree(inner_steps, pool):
    b = image_batch(tasks=2)
    results = {}
    for strategy in ("vmap", "loop"):
        torch.manual_seed(1)
        model = Conv4(1, 8, out_features=3, pool=pool).double()
        learner = innerloop.MAML(model, inner_lr=0.4, inner_steps=inner_steps, strategy=strategy)
        results[strategy] = meta_gradient(learner, b)
    (loss_v, grads_v), (loss_l, grads_l) = results["vmap"], results["loop"]
    torch.testing.assert_close(loss_v, loss_l, rtol=0, atol=1e-10)
    assert any(g.abs().max() > 1e-3 for g in grads_l)  # a real, non-trivial gradient
    for gv, gl in zip(grads_v, grads_l):
        torch.testing.assert_close(gv, gl, rtol=0, atol=1e-10)


def ink_batch(tasks, ways=5, shots=1, queries=15, size=28, density=0.05, seed=0):
    """Binary images, mostly blank as Omniglot's strokes: most conv outputs of a block equal its bias."""
    g = torch.Generator().manual_seed(seed)
    ink = lambda n: (torch.rand(tasks, n, 1, size, size, generator=g) < density).float()  # noqa: E731
    labels = lambda n: torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(ink(ways * shots), labels(shots), ink(ways * queries), labels(queries))


def test_compiled_conv4_traces_whole_and_its_float32_meta_gradient_is_eager_s_on_every_task():
    """compile=True in float32 gives each task eager's second-order meta-gradient (Conv-4 with batch norm), from one
    graph: no break at each batch-norm layer.

    Blank backgrounds make many batch-norm inputs equal, where a float32 sum accumulated sequentially
    drifts: inductor's C++ reductions did so for the batch mean, and second order amplified it into the
    meta-gradient of some tasks. The tolerance is far above rounding (other CPUs round differently) and
    far below that drift; a task sitting at a ReLU/max-pool kink can differ more (see the README).
    """
    from torch._dynamo.utils import counters

    b = ink_batch(tasks=4)
    torch.manual_seed(0)
    state = Conv4(1, 8, out_features=5).state_dict()

    def per_task(dtype, compiled):
        model = Conv4(1, 8, out_features=5)
        model.load_state_dict(state)
        learner = innerloop.MAML(model.to(dtype), inner_lr=0.4, strategy="loop", compile=compiled)
        grads = [meta_gradient(learner, b.task(i).to(dtype))[1] for i in range(b.num_tasks)]  # one compile
        return torch.stack([torch.cat([g.reshape(-1) for g in task]).double() for task in grads])

    exact = per_task(torch.float64, False)
    eager = per_task(torch.float32, False)
    counters.clear()
    compiled = per_task(torch.float32, True)
    assert not counters["graph_break"], dict(counters["graph_break"])
    error = lambda g, ref: (g - ref).norm(dim=1) / ref.norm(dim=1)  # noqa: E731  per task
    assert error(eager, exact).max() < 1e-4  # float32 rounding: the comparison below is meaningful
    assert error(compiled, eager).max() < 1e-4, error(compiled, eager).tolist()


def test_maml_conv4_tasks_are_normalized_separately():
    """Transductive batch norm is per task: a task's loss does not depend on the other tasks."""
    b = image_batch(tasks=3)
    torch.manual_seed(1)
    learner = innerloop.MAML(Conv4(1, 8, out_features=3).double(), inner_lr=0.4, strategy="vmap")
    per_task = learner.evaluate(b, [1])[1]["loss"]
    alone = torch.stack([learner.evaluate(b.task(i), [1])[1]["loss"][0] for i in range(3)])
    torch.testing.assert_close(per_task, alone, rtol=0, atol=1e-10)


def test_anil_on_conv4_adapts_only_the_head():
    torch.manual_seed(0)
    model = Conv4(1, 8, out_features=3).double()
    learner = innerloop.ANIL(model, inner_lr=0.4, inner_steps=2, strategy="loop")
    assert learner.adapted_names == ["5.weight", "5.bias"]
    b = image_batch(tasks=2)
    theta = learner.model_params()
    adapted = learner.adapt(b.support_x[0], b.support_y[0], steps=2)
    for name, value in adapted.items():
        if name.startswith("5."):
            assert not torch.equal(value, theta[name]), name
        else:
            assert torch.equal(value, theta[name]), name
    # the body is still meta-learned through the outer loop
    _, grads = meta_gradient(learner, b)
    named = dict(zip([n for n, _ in learner.named_parameters()], grads))
    assert named["model.0.0.weight"].abs().max() > 0
    # and vmap agrees with the loop
    torch.manual_seed(0)
    vmapped = innerloop.ANIL(Conv4(1, 8, out_features=3).double(), inner_lr=0.4, inner_steps=2, strategy="vmap")
    for gv, gl in zip(meta_gradient(vmapped, b)[1], grads):
        torch.testing.assert_close(gv, gl, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- ResNet-12

SMALL = (4, 6, 8, 10)


@pytest.mark.parametrize("size", [28, 84])
def test_resnet12_shapes(size):
    model = ResNet12(3, SMALL, image_size=size)
    assert model.embedding_dim == 10
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    headed = ResNet12(3, SMALL, out_features=5)
    assert headed(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert head_names(headed) == ["6.weight", "6.bias"]


def test_resnet12_default_widths_and_flatten_variant():
    model = ResNet12()
    assert [b.conv1.out_channels for b in model[:4]] == [64, 160, 320, 640]
    assert model.embedding_dim == 640
    flat = ResNet12(3, SMALL, out_features=5, global_pool=False, image_size=84)
    assert flat.embedding_dim == 10 * 5 * 5
    assert flat(torch.randn(2, 3, 84, 84)).shape == (2, 5)


def test_resnet12_block_is_the_residual_block():
    """h = LReLU(BN(conv h)) x2, BN(conv h); out = maxpool(LReLU(h + BN(conv1x1 x)))."""
    torch.manual_seed(0)
    model = ResNet12(3, (4, 5), out_features=2).double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)

    def bn(layer, h):
        return F.batch_norm(h, None, None, layer.weight, layer.bias, training=True)

    h = x
    for block in model[:2]:
        r = bn(block.shortcut[1], F.conv2d(h, block.shortcut[0].weight))
        h1 = F.leaky_relu(bn(block.bn1, F.conv2d(h, block.conv1.weight, padding=1)), 0.1)
        h2 = F.leaky_relu(bn(block.bn2, F.conv2d(h1, block.conv2.weight, padding=1)), 0.1)
        h3 = bn(block.bn3, F.conv2d(h2, block.conv3.weight, padding=1))
        h = F.max_pool2d(F.leaky_relu(h3 + r, 0.1), 2)
    expected = F.linear(h.mean((2, 3)), model[-1].weight, model[-1].bias)
    learner = innerloop.MAML(model, inner_lr=0.1)
    torch.testing.assert_close(learner(x), expected, rtol=1e-10, atol=1e-10)


def test_resnet12_dropout_is_off_by_default():
    assert not any(isinstance(m, nn.Dropout) for m in ResNet12(3, SMALL).modules())
    assert sum(isinstance(m, nn.Dropout) for m in ResNet12(3, SMALL, dropout=0.1).modules()) == 4


def test_maml_resnet12_vmap_and_loop_meta_gradients_agree():
    b = image_batch(tasks=2, size=16, channels=3)
    results = {}
    for strategy in ("vmap", "loop"):
        torch.manual_seed(1)
        model = ResNet12(3, SMALL, out_features=3).double()
        results[strategy] = meta_gradient(innerloop.MAML(model, inner_lr=0.4, strategy=strategy), b)
    (loss_v, grads_v), (loss_l, grads_l) = results["vmap"], results["loop"]
    torch.testing.assert_close(loss_v, loss_l, rtol=0, atol=1e-10)
    for gv, gl in zip(grads_v, grads_l):
        torch.testing.assert_close(gv, gl, rtol=0, atol=1e-10)


def test_slicing_gives_the_body():
    model = Conv4(1, 8, out_features=3)
    body = model[:-1]
    assert type(body) is nn.Sequential and len(body) == 5
    assert body(torch.randn(2, 1, 28, 28)).shape == (2, 8)
    assert type(ResNet12(3, SMALL)[:4]) is nn.Sequential

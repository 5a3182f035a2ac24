"""EpisodicTasks: the few-shot sampler's invariants, determinism, rotations and errors (synthetic data)."""

import numpy as np
import pytest
import torch

from innerloop.data import EVAL_DRAW, EpisodicTasks, ImageDataset, fixed_tasks
from innerloop.tasks import SinusoidTasks, TaskBatch

K = 12  # classes
SIZE = 7  # odd, so the centre pixel is invariant under rotation


def toy_dataset(counts=None, channels=2, hw=(SIZE, SIZE), rotations=None, seed=0):
    """Image i carries its index in the centre pixel of channel 0 (and random pixels elsewhere);
    images are shuffled so that the dataset is not sorted by class."""
    counts = counts or [8 + (c % 5) for c in range(K)]
    labels = torch.tensor(np.repeat(np.arange(len(counts)), counts))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    labels = labels[perm]
    n = len(labels)
    assert n < 256
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randint(0, 256, (n, channels, *hw), dtype=torch.uint8, generator=g)
    images[:, 0, hw[0] // 2, hw[1] // 2] = torch.arange(n, dtype=torch.uint8)
    return ImageDataset(images, labels, [f"class{c:02d}" for c in range(len(counts))], rotations=rotations, name="toy")


def ids_of(x):
    """Dataset indices of sampled float images (T, M, C, H, W)."""
    return torch.round(x[:, :, 0, SIZE // 2, SIZE // 2] * 255).long()


@pytest.fixture(scope="module")
def ds():
    return toy_dataset()


def test_shapes_dtypes_and_labels(ds):
    src = EpisodicTasks(ds, ways=5, shots=3, queries=4, seed=7)
    b = src.sample(0, range(6))
    assert isinstance(b, TaskBatch)
    assert b.support_x.shape == (6, 15, 2, SIZE, SIZE) and b.query_x.shape == (6, 20, 2, SIZE, SIZE)
    assert b.support_x.dtype == torch.float32 and b.support_y.dtype == torch.int64 and b.query_y.dtype == torch.int64
    assert float(b.support_x.min()) >= 0 and float(b.support_x.max()) <= 1
    for t in range(6):
        assert torch.equal(torch.bincount(b.support_y[t], minlength=5), torch.full((5,), 3))
        assert torch.equal(torch.bincount(b.query_y[t], minlength=5), torch.full((5,), 4))
    # class-major layout: example i of the support set has label i // shots
    assert torch.equal(b.support_y[0], torch.arange(5).repeat_interleave(3))
    assert torch.equal(b.query_y[0], torch.arange(5).repeat_interleave(4))
    assert src.sample(0, range(2), dtype=torch.float64).query_x.dtype == torch.float64


def test_images_classes_and_disjoint_support_query(ds):
    src = EpisodicTasks(ds, ways=4, shots=2, queries=5, seed=1)
    b = src.sample(3, range(20))
    s_ids, q_ids = ids_of(b.support_x), ids_of(b.query_x)
    classes = src.task_classes(3, range(20))
    for t in range(20):
        # float pixels are exactly the dataset's uint8 images / 255
        assert torch.equal(b.support_x[t], ds.images[s_ids[t]].float() / 255)
        assert torch.equal(b.query_x[t], ds.images[q_ids[t]].float() / 255)
        assert len(set(s_ids[t].tolist()) | set(q_ids[t].tolist())) == 4 * 7  # no image twice, support/query disjoint
        labels_to_class = {}
        for ids, ys in ((s_ids[t], b.support_y[t]), (q_ids[t], b.query_y[t])):
            for i, y in zip(ids.tolist(), ys.tolist()):
                labels_to_class.setdefault(y, set()).add(int(ds.labels[i]))
        assert all(len(v) == 1 for v in labels_to_class.values())  # one class per label
        per_label = [labels_to_class[y].pop() for y in range(4)]
        assert len(set(per_label)) == 4  # distinct classes
        assert per_label == classes[t].tolist()  # task_classes reports them in label order
    # image_indices agrees with what was sampled
    idx = src.image_indices(3, range(20))
    assert torch.equal(idx[:, :, :2].reshape(20, -1), s_ids) and torch.equal(idx[:, :, 2:].reshape(20, -1), q_ids)


def test_deterministic_and_sliceable(ds):
    a = EpisodicTasks(ds, 5, 1, 3, seed=11)
    b = EpisodicTasks(toy_dataset(), 5, 1, 3, seed=11)  # a fresh object over an equal dataset
    full = a.sample(4, range(8))
    again = b.sample(4, range(8))
    for f in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(full, f), getattr(again, f))
    part = a.sample(4, [5, 2])  # a rank's share, built on its own
    assert torch.equal(part.support_x[0], full.support_x[5]) and torch.equal(part.query_x[1], full.query_x[2])


def test_draws_seeds_and_tasks_differ(ds):
    src = EpisodicTasks(ds, 5, 2, 3, seed=0)
    x0 = src.sample(0, range(4)).support_x
    assert not torch.equal(x0, src.sample(1, range(4)).support_x)
    assert not torch.equal(x0, src.with_seed(1).sample(0, range(4)).support_x)
    ids = ids_of(x0)
    assert len({tuple(r) for r in ids.tolist()}) == 4
    assert src.with_seed(0).seed == 0 and src.with_seed(5).seed == 5 and src.seed == 0


def test_label_order_random_and_coverage(ds):
    src = EpisodicTasks(ds, 5, 1, 2, seed=3)
    classes = src.task_classes(0, range(300))
    assert sum(bool((c[1:] > c[:-1]).all()) for c in classes) < 30  # labels are not assigned in class order
    assert set(classes.flatten().tolist()) == set(range(K))
    # class frequency close to uniform (each appears 300 * 5 / 12 = 125 times on average)
    freq = torch.bincount(classes.flatten(), minlength=K).float()
    assert float(freq.min()) > 80 and float(freq.max()) < 170
    used = src.image_indices(0, range(300)).flatten()
    assert set(used.tolist()) == set(range(len(ds)))  # every image gets used


def test_rotations_are_per_class():
    ds = toy_dataset()
    src = EpisodicTasks(ds, 6, 2, 3, seed=2, rotations=True)
    assert src.num_classes == 4 * K
    assert src.class_names[:4] == [f"class00/rot{a:03d}" for a in (0, 90, 180, 270)]
    b = src.sample(0, range(30))
    classes = src.task_classes(0, range(30))
    ids = torch.cat([ids_of(b.support_x).view(30, 6, 2), ids_of(b.query_x).view(30, 6, 3)], 2)
    x = torch.cat([b.support_x.view(30, 6, 2, 2, SIZE, SIZE), b.query_x.view(30, 6, 3, 2, SIZE, SIZE)], 2)
    seen = set()
    for t in range(30):
        for w in range(6):
            k = int(classes[t, w]) % 4  # quarter turns of this class
            seen.add(k)
            for i in range(5):  # every image of the class has the class's rotation
                orig = ds.images[ids[t, w, i]].float() / 255
                assert torch.equal(x[t, w, i], torch.rot90(orig, k, dims=(-2, -1)))
                if k:
                    assert not torch.equal(x[t, w, i], orig)
    assert seen == {0, 1, 2, 3}


def test_rotation_direction_matches_pil():
    from PIL import Image

    img = np.zeros((SIZE, SIZE), np.uint8)
    img[0, 1:4] = 200  # an asymmetric mark
    ds2 = ImageDataset(
        torch.from_numpy(np.stack([img, img]))[:, None], torch.zeros(2, dtype=torch.int64), ["a"], rotations=((90,),)
    )
    b = EpisodicTasks(ds2, 1, 1, 1).sample(0, [0])
    pil = np.asarray(Image.fromarray(img).rotate(90))  # PIL rotates counter-clockwise
    assert torch.equal((b.support_x[0, 0, 0] * 255).round().to(torch.uint8), torch.from_numpy(pil.copy()))


def test_rotation_specs():
    ds = toy_dataset(rotations=tuple(((0, 90, 180, 270) if c % 2 else (0,)) for c in range(K)))
    assert EpisodicTasks(ds, 3, 1, 1).num_classes == K // 2 * 4 + K // 2  # declared by the dataset
    assert EpisodicTasks(ds, 3, 1, 1, rotations=False).num_classes == K
    assert EpisodicTasks(ds, 3, 1, 1, rotations=(0, 180)).num_classes == 2 * K
    rect = toy_dataset(hw=(SIZE, SIZE + 2))
    src = EpisodicTasks(rect, 3, 1, 1, rotations=(0, 180))
    b = src.sample(0, range(10))
    assert b.support_x.shape[-2:] == (SIZE, SIZE + 2)
    with pytest.raises(ValueError, match="square"):
        EpisodicTasks(rect, 3, 1, 1, rotations=True)
    for bad in [(45,), (0, 0), (), "all", 1]:
        with pytest.raises(ValueError, match="rotations"):
            EpisodicTasks(ds, 3, 1, 1, rotations=bad)


@pytest.mark.parametrize("name", ["ways", "shots", "queries"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "5"])
def test_non_positive_sizes(ds, name, value):
    kw = dict(ways=5, shots=1, queries=1)
    kw[name] = value
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        EpisodicTasks(ds, **kw)


def test_too_many_ways(ds):
    with pytest.raises(ValueError, match=r"ways=13 but toy has only 12 classes.*ways <= 12"):
        EpisodicTasks(ds, 13, 1, 1)
    with pytest.raises(ValueError, match=r"ways=49 .* only 48 classes"):
        EpisodicTasks(ds, 49, 1, 1, rotations=True)
    EpisodicTasks(ds, 48, 1, 1, rotations=True)  # all 48 rotated classes in one task is fine


def test_too_many_shots_plus_queries(ds):
    # the smallest class has 8 images
    EpisodicTasks(ds, 5, 4, 4)
    with pytest.raises(ValueError, match=r"shots \+ queries = 5 \+ 4 = 9 .* only 8 images .*class00"):
        EpisodicTasks(ds, 5, 5, 4)


def test_bad_dataset_and_dtype(ds):
    class Bad:
        images = torch.zeros(4, 1, 3, 3)  # float, not uint8
        labels = torch.zeros(4, dtype=torch.int64)

    with pytest.raises(ValueError, match="uint8"):
        EpisodicTasks(Bad(), 1, 1, 1)
    with pytest.raises(ValueError, match="floating-point"):
        EpisodicTasks(ds, 2, 1, 1).sample(0, [0], dtype=torch.int64)
    with pytest.raises(ValueError, match="seed"):
        EpisodicTasks(ds, 2, 1, 1, seed=1.0)


def test_duck_typed_dataset_and_empty_batch():
    class Plain:
        images = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8)
        labels = torch.arange(4).repeat(5)

    src = EpisodicTasks(Plain(), 3, 2, 2)
    assert src.num_classes == 4 and src.class_names == ["0", "1", "2", "3"]
    empty = src.sample(0, [])
    assert empty.support_x.shape == (0, 6, 1, 4, 4) and empty.query_y.shape == (0, 6)


def test_normalize(ds):
    plain = EpisodicTasks(ds, 3, 1, 1).sample(0, [0, 1])
    norm = EpisodicTasks(ds, 3, 1, 1, normalize=([0.5, 0.25], [0.5, 2.0])).sample(0, [0, 1])
    mean = torch.tensor([0.5, 0.25]).view(2, 1, 1)
    std = torch.tensor([0.5, 2.0]).view(2, 1, 1)
    torch.testing.assert_close(norm.support_x, (plain.support_x - mean) / std)
    with pytest.raises(ValueError, match="normalize"):
        EpisodicTasks(ds, 3, 1, 1, normalize=([0.5] * 3, [1.0] * 3))


def test_device_argument(ds):
    cpu = EpisodicTasks(ds, 3, 2, 2, device="cpu").sample(1, range(3))
    assert cpu.support_x.device.type == "cpu"
    if torch.cuda.is_available():
        gpu = EpisodicTasks(ds, 3, 2, 2, device="cuda").sample(1, range(3))
        assert gpu.support_x.is_cuda and torch.equal(gpu.support_x.cpu(), cpu.support_x)


def test_fixed_tasks(ds):
    src = EpisodicTasks(ds, 5, 1, 2, seed=9)
    ev = fixed_tasks(src, 10, 4)
    assert len(ev) == 3
    first, second = list(ev), list(ev)  # re-iterable, the same tasks every time
    assert [len(b) for b in first] == [4, 4, 2]
    for a, b in zip(first, second):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    whole = TaskBatch.cat(first)
    # independent of batch_size, a prefix of a larger set, and not a training draw
    assert torch.equal(TaskBatch.cat(list(fixed_tasks(src, 10, 10))).query_x, whole.query_x)
    assert torch.equal(TaskBatch.cat(list(fixed_tasks(src, 6, 5))).query_x, whole.query_x[:6])
    assert torch.equal(whole.query_x, src.sample(EVAL_DRAW, range(10)).query_x)
    assert not torch.equal(whole.query_x, src.sample(0, range(10)).query_x)
    # seed picks the set, reproducibly; the source's own seed is the default
    s3 = TaskBatch.cat(list(fixed_tasks(src, 10, 4, seed=3)))
    assert not torch.equal(s3.query_x, whole.query_x)
    assert torch.equal(s3.query_x, TaskBatch.cat(list(fixed_tasks(src.with_seed(3), 10, 4))).query_x)
    assert src.seed == 9
    with pytest.raises(ValueError):
        fixed_tasks(src, 0, 4)


def test_fixed_tasks_with_a_dataclass_source():
    sin = SinusoidTasks(shots=5, queries=5, seed=0)
    a = TaskBatch.cat(list(fixed_tasks(sin, 6, 4, seed=2)))
    b = TaskBatch.cat(list(fixed_tasks(SinusoidTasks(shots=5, queries=5, seed=2), 6, 3)))
    assert torch.equal(a.support_x, b.support_x)
    with pytest.raises(TypeError, match="reseed"):
        fixed_tasks(object(), 2, 2, seed=1)


def test_image_dataset_validation_and_subset():
    ds = toy_dataset()
    sub = ds.subset(["class03", 1])
    assert sub.class_names == ["class03", "class01"] and sub.num_classes == 2
    assert torch.equal(sub.images[sub.labels == 0], ds.images[ds.labels == 3])
    assert "12 classes" in repr(ds)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.int64), ["a"])
    with pytest.raises(ValueError, match="no images"):
        ImageDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie"):
        ImageDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        ImageDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "a"])
    with pytest.raises(ValueError, match="angles"):
        ImageDataset(
            torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], rotations=((0,), (45,))
        )
    with pytest.raises(ValueError, match="not in"):
        ds.subset(["nope"])


@pytest.mark.parametrize("rotations", [False, True])
def test_numpy_and_torch_assembly_agree(ds, rotations):
    a = EpisodicTasks(ds, 4, 2, 3, seed=5, rotations=rotations, normalize=([0.5, 0.4], [0.2, 0.3]))
    b = EpisodicTasks(ds, 4, 2, 3, seed=5, rotations=rotations, normalize=([0.5, 0.4], [0.2, 0.3]))
    b._use_numpy = False  # the path used on GPUs and for other dtypes
    for dtype in (torch.float32, torch.float64):
        x, y = a.sample(2, range(6), dtype), b.sample(2, range(6), dtype)
        for f in ("support_x", "support_y", "query_x", "query_y"):
            torch.testing.assert_close(getattr(x, f), getattr(y, f), rtol=1e-6, atol=1e-6)
    plain = EpisodicTasks(ds, 4, 2, 3, seed=5, rotations=rotations)
    plain_torch = EpisodicTasks(ds, 4, 2, 3, seed=5, rotations=rotations)
    plain_torch._use_numpy = False
    for dtype in (torch.float32, torch.float64):  # without normalization the two are bit-identical
        assert torch.equal(plain.sample(1, range(4), dtype).query_x, plain_torch.sample(1, range(4), dtype).query_x)
    half = plain.sample(2, range(6), torch.bfloat16)
    assert half.support_x.dtype == torch.bfloat16
    torch.testing.assert_close(half.support_x.float(), plain.sample(2, range(6)).support_x, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("m,k", [(100, 5), (12, 5), (7, 7)])  # rejection path, randperm path, all classes
def test_distinct_classes_are_uniform_ordered_samples(m, k):
    from innerloop.data.episodes import _distinct

    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([_distinct(g, m, k) for _ in range(4000)])
    assert all(len(set(r)) == k for r in draws.tolist()) and int(draws.min()) >= 0 and int(draws.max()) < m
    for pos in (0, k - 1):  # every position (label) is uniform over the classes
        freq = torch.bincount(draws[:, pos], minlength=m).float()
        expected = 4000 / m
        assert float(((freq - expected) ** 2 / expected).sum()) < m + 5 * (2 * m) ** 0.5  # chi-square, ~5 sigma
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert _distinct(g1, m, k) == _distinct(g2, m, k)


def test_pickles_for_worker_processes(ds):
    import pickle

    src = EpisodicTasks(ds, 3, 2, 2, rotations=True)
    copy = pickle.loads(pickle.dumps(src))
    assert torch.equal(copy.sample(4, range(5)).query_x, src.sample(4, range(5)).query_x)
    assert len(pickle.dumps(src)) < 1.5 * ds.images.numel() + 6000  # the image store is not stored twice

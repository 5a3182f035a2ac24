"""Data-parallel meta-training under torchrun (gloo, CPU processes).

Every test launches real process groups: ``python -m torch.distributed.run`` (torchrun)
with 2 or 4 workers, or two torchrun "nodes" meeting on loopback, and compares what they
wrote with a single process computing the same meta-batch.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from innerloop.training.builders import build_tasks
from innerloop.training.checkpoint import find_checkpoint, load_checkpoint
from innerloop.training.config import load_config
from innerloop.training.distributed import shard
from innerloop.training.evaluate import evaluate_config
from innerloop.training.trainer import Trainer

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
INNERLOOP = [sys.executable, "-m", "innerloop"]
# float64 so that "the same to float tolerance" can be tight; SGD with rate 1 for one
# iteration makes the weight change exactly minus the meta-gradient.
EXACT = [
    "train.dtype=float64",
    "train.progress=false",
    "train.log_every=1",
    "train.val_every=1000",
    "train.val_tasks=10",
    "eval.tasks=40",
    "eval.batch_size=8",
    "eval.steps=[0,1]",
    "eval.shots=[5]",
]
GRADIENT = ["train.optimizer=sgd", "train.meta_lr=1.0", "train.iterations=1", "train.checkpoint_every=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    """One thread per worker; a worker that crashes in native code (SIGSEGV, SIGABRT) prints every thread's stack."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def run(cmd, timeout=300, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=worker_env(), **kwargs)


def explain(stderr: str) -> str:
    """A failed launch's stderr, the workers' own lines first.

    torchrun ends with its traceback and failure summary (ChildFailedError: which rank, which exit code), long enough
    to push what the dying worker printed out of a short tail (a SIGABRT once left only the summary to read).
    """
    end = stderr.find("ChildFailedError")
    start = stderr.rfind("Traceback (most recent call last)", 0, end) if end >= 0 else -1
    if start < 0:
        return stderr[-3000:]
    return f"{stderr[:start][-3000:]}\n[torchrun]\n{stderr[start:][-800:]}"


def train_args(preset, out, overrides):
    return ["train", "--config", preset, "--out", str(out), *overrides]


def final_weights(out) -> dict[str, torch.Tensor]:
    return load_checkpoint(out).weights


def single_process(tmp_path, preset, overrides, name="single"):
    """Initial weights, final trainer and config of the one-process run of the same config."""
    cfg = load_config(preset, overrides, out_dir=str(tmp_path / name))
    trainer = Trainer(cfg)
    initial = {k: v.clone() for k, v in trainer.learner.state_dict().items()}
    trainer.fit()
    return initial, trainer, cfg


def assert_same_weights(a, b, rtol, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


def test_shards_partition_the_meta_batch():
    for tasks in (1, 2, 5, 10, 25, 32):
        for world in range(1, tasks + 1):
            shards = [shard(tasks, r, world) for r in range(world)]
            assert [t for s in shards for t in s] == list(range(tasks))  # contiguous, in order, complete
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
            assert min(map(len, shards)) >= 1


def one_rank(script: str) -> subprocess.CompletedProcess:
    """``python -c script`` with the environment of rank 0 of a 1-rank group (which it may join)."""
    env = {**worker_env(), "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("joined", [True, False])
def test_a_process_in_a_group_exits_without_finalisation(joined):
    """Once in a process group, an exit skips interpreter shutdown (where gloo can abort a finished worker) but keeps
    the exit status and all output; a process that never joined one exits as usual (atexit handlers run)."""
    join = "ProcessGroup.from_environment('cpu', 60); " if joined else ""
    script = (
        "import atexit, sys; from innerloop.training.distributed import ProcessGroup, exit_process; "
        f"{join}atexit.register(lambda: print('finalised')); print('written', end=''); sys.stderr.write('said'); "
        "exit_process(3)"
    )
    result = one_rank(script)
    assert result.returncode == 3, result.stderr
    assert result.stdout == ("written" if joined else "writtenfinalised\n")
    assert result.stderr.endswith("said"), result.stderr


def test_main_called_in_process_raises_systemexit_even_in_a_group():
    """Only the command's entry point leaves with os._exit: a caller of main() (a test, a notebook) gets SystemExit,
    even after its process joined a group (an os._exit there once ended pytest mid-suite, with status 0)."""
    script = (
        "import sys; from innerloop.training.distributed import ProcessGroup; from innerloop.cli.main import main; "
        "ProcessGroup.from_environment('cpu', 60); sys.argv = ['innerloop', 'presets']\n"
        "try:\n    main()\nexcept SystemExit as done:\n    print('SystemExit', done.code)"
    )
    result = one_rank(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("SystemExit 0"), result.stdout[-500:]


@pytest.mark.parametrize("preset,procs,batch", [("maml-sine", 2, 10), ("maml-sine", 4, 10), ("reptile-sine", 2, 6)])
def test_p_processes_give_the_meta_gradient_of_one(tmp_path, preset, procs, batch):
    """P ranks with B/P tasks each (10 over 4 ranks: 3, 3, 2, 2) = one process with B tasks."""
    overrides = [*EXACT, *GRADIENT, f"train.meta_batch_size={batch}"]
    overrides += SMALL_LEARNER.get(preset, [])
    out = tmp_path / f"p{procs}"
    result = run([*TORCHRUN, f"--nproc-per-node={procs}", "-m", "innerloop", *train_args(preset, out, overrides)])
    assert result.returncode == 0, explain(result.stderr)
    assert f"on {procs} processes" in result.stdout
    initial, single, cfg = single_process(tmp_path, preset, overrides)
    ours = final_weights(out)
    for k, theta0 in initial.items():
        g_single = theta0 - single.learner.state_dict()[k]
        g_dist = theta0 - ours[k]
        torch.testing.assert_close(g_dist, g_single, rtol=1e-10, atol=1e-13, msg=k)
    total = sum(float((theta0 - ours[k]).norm()) for k, theta0 in initial.items())
    assert total > 1e-3  # a real gradient was compared, not two zeros
    # Evaluation spread over the ranks and gathered = evaluation in one process.
    spread = json.loads((out / "eval.json").read_text())["results"]["5"]
    alone = evaluate_config(single.learner, cfg, build_tasks)[5]
    for step in (0, 1):
        for stat in ("mean", "std", "median"):
            assert spread[str(step)]["loss"][stat] == pytest.approx(alone[step]["loss"][stat], rel=1e-10)
        assert spread[str(step)]["loss"]["n"] == 40


def test_meta_parameters_stay_identical_to_a_single_process_over_adam_steps(tmp_path):
    overrides = [*EXACT, "train.iterations=6", "train.checkpoint_every=3", "train.meta_batch_size=8"]
    out = tmp_path / "p2"
    result = run(
        [*TORCHRUN, "--nproc-per-node=2", "-m", "innerloop", *train_args("maml-sine", out, overrides), "--no-evaluate"]
    )
    assert result.returncode == 0, explain(result.stderr)
    _, single, _ = single_process(tmp_path, "maml-sine", overrides)
    assert_same_weights(final_weights(out), dict(single.learner.state_dict()), rtol=1e-9, atol=1e-12)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "split" not in r] == list(range(1, 7))  # logged once, by rank 0


def workers_of(launcher_pid: int) -> list[int]:
    """Child processes of the torchrun agent (its workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher_pid:
            children.append(int(stat.parent.name))
    return children


# A run long enough to be killed in the middle: rank 1 dies after the checkpoint of iteration >= 100.
ITERATIONS = 400  # the kill lands at a checkpoint >= 100: a restarted group has hundreds of iterations left to redo
INTERRUPTED = [
    f"train.iterations={ITERATIONS}",
    "train.checkpoint_every=50",
    "train.meta_batch_size=4",
    "train.progress=false",
    "train.val_every=100000",
    "algorithm.strategy=vmap",
    "train.log_every=1",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run(
        [
            *TORCHRUN,
            "--nproc-per-node=2",
            "-m",
            "innerloop",
            *train_args("maml-sine", out, INTERRUPTED),
            "--no-evaluate",
        ]
    )
    assert result.returncode == 0, explain(result.stderr)
    return final_weights(out)


def kill_a_worker_midway(agents: list[subprocess.Popen], out: Path) -> None:
    """SIGKILL the last agent's last worker once a checkpoint at iteration >= 100 exists."""
    deadline = time.time() + 240
    while find_checkpoint(out) is None or load_checkpoint(out).iteration < 100:
        for agent in agents:
            assert agent.poll() is None, explain(agent.communicate()[1])
        assert time.time() < deadline
        time.sleep(0.05)
    victim = workers_of(agents[-1].pid)[-1]
    os.kill(victim, signal.SIGKILL)


def assert_recovered(out: Path, stdout: str, stderr: str, uninterrupted: dict[str, torch.Tensor]) -> None:
    # torchrun saw the death (-9), or first the survivor's one-line error; never an "internal error" trace
    assert "exitcode: -9" in stderr or "lost the group during" in stderr, explain(stderr)
    assert "internal error" not in stderr, explain(stderr)
    resumed = re.search(r"resuming from iteration (\d+)", stdout)  # ... and the restarted group resumed by itself
    assert resumed and 100 <= int(resumed[1]) < ITERATIONS, stdout
    final = final_weights(out)
    for k, v in uninterrupted.items():
        assert torch.equal(final[k], v), k  # bit for bit
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the records past the checkpoint were replaced, not duplicated
    assert [r["iteration"] for r in records if "split" not in r] == list(range(1, ITERATIONS + 1))


def test_a_killed_worker_is_restarted_and_the_run_matches_an_uninterrupted_one(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    cmd = [
        *TORCHRUN,
        "--nproc-per-node=2",
        "--max-restarts=1",
        "-m",
        "innerloop",
        *train_args("maml-sine", out, INTERRUPTED),
        "--no-evaluate",
    ]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())
    kill_a_worker_midway([agent], out)
    [(code, stdout, stderr)] = finish([agent])
    assert code == 0, explain(stderr)
    assert_recovered(out, stdout, stderr, uninterrupted)


def start_two_nodes(overrides_per_node, out, extra=(), launch=False) -> list[subprocess.Popen]:
    """Two torchrun invocations (one process each) meeting on a c10d rendezvous on loopback."""
    port = free_port()
    procs = []
    for node, overrides in enumerate(overrides_per_node):
        options = [
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id=rehearsal-{port}",
            f"--rdzv-conf=is_host={int(node == 0)},join_timeout=120",
            *extra,
        ]
        launcher = [*INNERLOOP, "launch", *options, "--"] if launch else [*TORCHRUN, *options, "-m", "innerloop"]
        procs.append(
            subprocess.Popen(
                [*launcher, *train_args("maml-sine", out, overrides)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=worker_env(),
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process, their pipes drained side by side: waiting on one while
    another fills its pipe (a log line every iteration) would block that one, and with it the collectives.
    Past ``timeout`` the test fails with what each process and its workers were doing, instead of a bare
    TimeoutExpired (a hang seen once in CI left nothing to read)."""

    def drain(proc: subprocess.Popen) -> tuple[str, str] | None:
        try:
            return proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    with ThreadPoolExecutor(len(procs)) as pool:
        outputs = list(pool.map(drain, procs))
    if None in outputs:
        hung = [p for p, o in zip(procs, outputs) if o is None]
        states = {p.pid: {w: process_state(w) for w in workers_of(p.pid)} for p in hung}
        for p in hung:
            p.send_signal(signal.SIGTERM)  # torchrun passes it to its workers
        tails = []
        for p, o in zip(procs, outputs):
            try:
                stdout, stderr = o if o is not None else p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, stderr = p.communicate()
            tails.append(f"pid {p.pid} workers {states.get(p.pid, 'finished')}:\n{stdout[-1500:]}\n{explain(stderr)}")
        pytest.fail(f"{len(hung)} of {len(procs)} launchers still running after {timeout:g} s\n" + "\n".join(tails))
    return [(p.returncode, *output) for p, output in zip(procs, outputs)]


def process_state(pid: int) -> str:
    """A process's scheduler state and kernel wait channel (where a hang sits), from /proc."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return f"{state}/{Path(f'/proc/{pid}/wchan').read_text()}"
    except OSError:
        return "gone"


def two_nodes(overrides_per_node, out, extra=()):
    return finish(start_two_nodes(overrides_per_node, out, extra))


def test_a_node_whose_worker_dies_rejoins_and_the_run_matches_an_uninterrupted_one(tmp_path, uninterrupted):
    out = tmp_path / "killed-node"
    nodes = start_two_nodes([[*INTERRUPTED, "--no-evaluate"]] * 2, out, extra=["--max-restarts=1"], launch=True)
    kill_a_worker_midway(nodes, out)
    results = finish(nodes)
    for code, _, stderr in results:
        assert code == 0, explain(stderr)
    assert_recovered(out, results[0][1], results[1][2], uninterrupted)


def test_two_node_rehearsal_on_loopback_matches_one_process(tmp_path):
    overrides = [*EXACT, *GRADIENT, "train.meta_batch_size=6"]
    out = tmp_path / "two-nodes"
    results = two_nodes([overrides, overrides], out)
    for code, _stdout, stderr in results:
        assert code == 0, explain(stderr)
    assert "on 2 processes" in results[0][1] + results[1][1]
    initial, single, _ = single_process(tmp_path, "maml-sine", overrides)
    for k, theta0 in initial.items():
        torch.testing.assert_close(
            theta0 - final_weights(out)[k], theta0 - single.learner.state_dict()[k], rtol=1e-10, atol=1e-13, msg=k
        )


def test_mismatched_configs_across_nodes_fail_clearly(tmp_path):
    base = [*EXACT, "train.iterations=2", "train.meta_batch_size=4"]
    results = two_nodes([base, [*base, "train.meta_lr=0.01"]], tmp_path / "mismatch")
    for code, _, stderr in results:
        assert code != 0
        assert "different configurations" in stderr and "train.meta_lr: rank 0 0.001 vs rank 1 0.01" in stderr, stderr[
            -2000:
        ]


def test_more_processes_than_tasks_is_refused(tmp_path):
    cmd = [
        *INNERLOOP,
        "launch",
        "--nproc-per-node=2",
        "--",
        *train_args(
            "maml-sine", tmp_path / "r", ["train.meta_batch_size=1", "train.iterations=2", "train.progress=false"]
        ),
    ]
    result = run(cmd)
    assert result.returncode == 2
    assert "train.meta_batch_size=1 cannot be split across 2 processes" in result.stderr
    # Both ranks raise before any collective; whichever exits first, torchrun stops the other
    # (exit -15), so only "some rank exited 2" is deterministic.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker processes failed (rank 0: exit ") and ": exit 2" in last, last
    assert "Traceback" not in result.stderr


def test_unreachable_rendezvous_gives_a_clear_timeout(tmp_path):
    port = free_port()  # nobody listens there
    cmd = [
        *INNERLOOP,
        "launch",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-conf=is_host=0,join_timeout=3,read_timeout=3",
        "--",
        *train_args("maml-sine", tmp_path / "r", ["train.iterations=2"]),
    ]
    result = run(cmd)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not reach the c10d rendezvous at 127.0.0.1:{port}"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_rank_that_cannot_reach_the_group_times_out_clearly(tmp_path):
    """Without torchrun's agent (e.g. a scheduler that sets the variables itself)."""
    env = {
        **os.environ,
        "RANK": "1",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    cmd = [*INNERLOOP, *train_args("maml-sine", tmp_path / "r", ["train.iterations=2", "train.dist_timeout=3"])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error (rank 1 of 2): rank 1 could not join the process group at 127.0.0.1:")
    ), result.stderr[-2000:]


SMALL_LEARNER = {  # networks that model.hidden does not size, and PEARL's buffers and steps
    "rl2-nav2d": ["algorithm.hidden_size=16", "algorithm.epochs=2"],
    "pearl-nav2d": [
        *("algorithm.train_tasks=6", "algorithm.encoder_hidden=[16]", "algorithm.tasks_per_iteration=2"),
        *("algorithm.initial_episodes=1", "algorithm.prior_episodes=1", "algorithm.posterior_episodes=1"),
        *("algorithm.gradient_steps=3", "algorithm.batch_size=16", "algorithm.context_batch_size=8"),
    ],
}


@pytest.mark.parametrize(
    "preset,procs", [("maml-trpo-bandit", 2), ("promp-nav2d", 2), ("rl2-nav2d", 2), ("pearl-nav2d", 2)]
)
def test_meta_rl_rollouts_spread_over_ranks_match_one_process(tmp_path, preset, procs):
    """Each rank rolls out its shard of the tasks; TRPO's (ProMP's, RL²'s PPO) sums are all-reduced; PEARL's ranks
    collect the same data and split each gradient step's meta-batch: the same step, buffers and logs as one process."""
    overrides = [
        "train.dtype=float64",
        "train.progress=false",
        "train.log_every=1",
        "train.val_every=1000",
        "train.iterations=2",
        "train.checkpoint_every=1",
        "train.meta_batch_size=5",
        "rl.episodes=4",
        "rl.horizon=10",
        "model.hidden=[16]",
        "eval.tasks=4",
        "rl.eval_episodes=2",
        "eval.steps=[0,1]",
        # TRPO's conjugate gradient on a near-singular Fisher (this tiny policy has many flat directions)
        # amplifies summation-order rounding to percents in 10 iterations; damping makes it well conditioned.
        "rl.cg_damping=0.1",
    ]
    overrides += SMALL_LEARNER.get(preset, [])
    out = tmp_path / f"p{procs}"
    result = run([*TORCHRUN, f"--nproc-per-node={procs}", "-m", "innerloop", *train_args(preset, out, overrides)])
    assert result.returncode == 0, explain(result.stderr)
    assert f"on {procs} processes" in result.stdout
    cfg = load_config(preset, overrides, out_dir=str(tmp_path / "single"))
    trainer = Trainer(cfg)
    initial = {k: v.clone() for k, v in trainer.learner.state_dict().items()}
    trainer.fit()
    ours, alone = final_weights(out), trainer.learner.state_dict()
    assert_same_weights(ours, alone, rtol=1e-9, atol=1e-12)
    moved = [float((initial[k] - alone[k]).norm()) for k, _ in trainer.learner.named_parameters()]
    assert sum(moved) > 1e-3  # the policy really moved (its parameters; PEARL's replay buffers fill regardless)
    ranks = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"split"' not in line]
    single = [
        json.loads(line)
        for line in (tmp_path / "single/metrics.jsonl").read_text().splitlines()
        if '"split"' not in line
    ]
    for a, b in zip(ranks, single):  # the logged meta-batch metrics are the whole batch's, not rank 0's shard
        assert a.keys() == b.keys()
        for key in a.keys() - {"rollout_seconds", "tasks_per_s", "env_steps_per_s"}:  # all but the clocks
            assert a[key] == pytest.approx(b[key], rel=1e-9), key

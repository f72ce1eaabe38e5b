"""Two processes on CPU (gloo) train as one: DistributedDataParallel keeps their weights identical, a lock
refusal and a SIGTERM to one rank reach them all."""
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from ddpm_lib.checkpoint import build_model, list_checkpoints, load_checkpoint
from ddpm_lib.run_folder import Stopped
from ddpm_lib.training import TrainConfig, train

WORLD = 2
TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_torchrun_rank(rank: int, port: int) -> None:
    """The environment torchrun would give process ``rank`` of ``WORLD``, one thread each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)


def run_ranks(fn, *args) -> None:
    """Run ``fn(rank, port, *args)`` in ``WORLD`` spawned processes; fail the test after ``TIMEOUT_S``."""
    context = mp.start_processes(fn, args=(free_port(), *args), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} DDP processes did not finish within {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()


def run_rank_locked_out(rank: int, port: int, out_dir: str) -> None:
    """Like ``run_rank`` into a folder another run holds: record what each rank raised."""
    from ddpm_lib.run_folder import RunLocked
    as_torchrun_rank(rank, port)
    config = TrainConfig(data="two_moons", toy_n=512, T=50, steps=5, batch_size=32, sample_every=0, out_dir=out_dir,
                         device="cpu", progress=False)
    try:
        train(config)
    except RunLocked as exc:
        with open(os.path.join(os.path.dirname(out_dir), f"refused{rank}"), "w") as f:
            f.write(str(exc))


def test_every_rank_is_refused_with_rank_0s_reason_when_the_folder_is_held(tmp_path):
    from ddpm_lib.run_folder import run_lock
    with run_lock(tmp_path / "run"):
        run_ranks(run_rank_locked_out, str(tmp_path / "run"))
    reasons = [(tmp_path / f"refused{r}").read_text() for r in range(WORLD)]
    assert reasons[0] == reasons[1] and "another training run is writing into" in reasons[0]
    assert not list_checkpoints(tmp_path / "run")


def run_rank(rank: int, port: int, out_dir: str) -> None:
    """One torchrun-like process: the environment torchrun would set, then the library's ``train``."""
    as_torchrun_rank(rank, port)
    config = TrainConfig(data="two_moons", toy_n=512, T=50, steps=5, batch_size=32, lr=1e-2, warmup=0, log_every=1,
                         save_every=5, sample_every=0, out_dir=out_dir, device="cpu", progress=False)
    trainer = train(config)
    weights = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    ema = torch.cat([p.detach().reshape(-1) for p in trainer.ema_model.parameters()])
    torch.save({"weights": weights, "ema": ema}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_gloo_processes_keep_identical_weights(tmp_path):
    run_ranks(run_rank, str(tmp_path))
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert torch.equal(results[0]["weights"], results[1]["weights"])
    assert torch.equal(results[0]["ema"], results[1]["ema"])
    ckpt = load_checkpoint(list_checkpoints(tmp_path)[-1])             # written once, by rank 0
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000005.pt"]
    saved = torch.cat([v.reshape(-1) for v in ckpt["model"].values()])
    assert torch.equal(saved, results[0]["weights"])                    # rank 0 saved what it trained
    torch.manual_seed(0)                                                # θ at step 0 (TrainConfig.seed = 0)
    start = torch.cat([p.detach().reshape(-1) for p in build_model(ckpt["model_spec"]).parameters()])
    assert not torch.equal(start, results[0]["weights"])
    # each rank kept its own t/ε stream, and the checkpoint holds both for an exact resume
    assert len(ckpt["rng"]) == WORLD and not torch.equal(ckpt["rng"][0]["noise"], ckpt["rng"][1]["noise"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5                                               # rank 0 logs, once per step


def run_rank_signalled(rank: int, port: int, out_dir: str, copies: int) -> None:
    """Like ``run_rank``, but during step 3, far from a log step, SIGTERM reaches rank 1 alone (``copies`` = 1)
    or every rank ``copies`` times: a SIGTERM to the job's process group (SLURM's preemption, ``timeout``)
    reaches each rank directly and again through torchrun, which passes it on."""
    import signal
    import ddpm_lib.training as training
    as_torchrun_rank(rank, port)
    step = training.Trainer.train_step

    def train_step(self, *args):
        loss = step(self, *args)
        if (rank == 1 or copies > 1) and self.step == 3:
            for _ in range(copies):
                os.kill(os.getpid(), signal.SIGTERM)
        return loss

    training.Trainer.train_step = train_step
    config = TrainConfig(data="two_moons", toy_n=512, T=50, steps=50, batch_size=32, warmup=0, log_every=100,
                         save_every=100, sample_every=0, out_dir=out_dir, device="cpu", progress=False)
    try:
        train(config)
    except Stopped:                                   # saved, and said so: not a bare KeyboardInterrupt
        open(os.path.join(out_dir, f"stopped{rank}"), "w").close()


def run_rank_stopped_in_a_grid(rank: int, port: int, out_dir: str) -> None:
    """Rank 0 is asked to stop (SIGTERM) while it draws the sample grid of step 2; rank 1 never is."""
    import signal
    import ddpm_lib.training as training
    as_torchrun_rank(rank, port)
    draw = training.sample_ddpm

    def grid_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return draw(*args, **kwargs)

    training.sample_ddpm = grid_then_sigterm
    config = TrainConfig(data="two_moons", toy_n=512, T=50, steps=50, batch_size=32, warmup=0, log_every=100,
                         save_every=100, sample_every=2, n_samples=8, out_dir=out_dir, device="cpu", progress=False)
    try:
        train(config)
    except Stopped as stop:
        open(os.path.join(out_dir, f"stopped{rank}"), "w").write(str(stop))


def test_a_stop_during_rank_0s_grid_stops_every_rank_together_with_a_checkpoint(tmp_path):
    """Rank 0 alone draws grids; a stop that reaches it inside one drops the grid, and the ranks agree on the stop
    a step or two later, both stopping after the same step with one checkpoint. Catches: rank 0 stopping at
    once, as a single process does (it would save, a collective the other rank never joins: a hang)."""
    run_ranks(run_rank_stopped_in_a_grid, str(tmp_path))
    said = [(tmp_path / f"stopped{r}").read_text() for r in range(WORLD)]
    saved = [p.name for p in list_checkpoints(tmp_path)]
    assert len(saved) == 1 and said[0] == said[1] == f"interrupted at step {int(saved[0][5:13])}: saved " \
                                                     f"{tmp_path / saved[0]}"
    assert 3 <= int(saved[0][5:13]) <= 4 and not list(tmp_path.glob("samples_*"))


@pytest.mark.parametrize("copies", [1, 2])
def test_a_sigterm_to_one_rank_or_twice_to_every_rank_stops_both_after_the_next_step_with_a_checkpoint(tmp_path,
                                                                                                      copies):
    """torchrun kills 30 s after its SIGTERM: the ranks must not wait for a log step to agree on stopping, and
    the copy of a SIGTERM that torchrun passes on must not count as a second, impatient signal (which
    would stop without saving)."""
    run_ranks(run_rank_signalled, str(tmp_path), copies)
    assert (tmp_path / "stopped0").exists() and (tmp_path / "stopped1").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000004.pt"]

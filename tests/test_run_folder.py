"""ddpm_lib.run_folder: one training run at a time writes into a folder; a clean stop; metrics cut back on resume."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ddpm_lib import run_folder
from ddpm_lib.ddgan_train import DDGANConfig, train_ddgan
from ddpm_lib.training import TrainConfig, train


def test_a_second_run_into_a_folder_in_use_is_refused_and_the_first_keeps_its_files(tmp_path):
    """While one run holds the folder (here: run_lock held by this process), train and train_ddgan into it
    are refused in one line before writing anything, new or --resume. Catches: two runs interleaving
    their metrics and checkpoints, as two train-ddgan processes into one --out-dir did."""
    out = tmp_path / "run"
    ddpm = TrainConfig(data="two_moons", toy_n=64, T=50, steps=2, batch_size=8, log_every=1, save_every=1,
                       sample_every=0, out_dir=str(out), device="cpu", progress=False)
    gan = DDGANConfig(data="two_moons", toy_n=64, steps=2, batch_size=8, log_every=1, save_every=1,
                      sample_every=0, out_dir=str(out), device="cpu", progress=False)
    with run_folder.run_lock(out):
        for run in (lambda: train(ddpm), lambda: train_ddgan(gan)):
            with pytest.raises(RuntimeError, match="another training run is writing into"):
                run()
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    train(ddpm)                                           # the folder is free again once the holder is done
    assert (out / "metrics.jsonl").exists()


def test_the_lock_is_dropped_when_the_holding_process_dies(tmp_path):
    """A run killed with SIGKILL cannot clean up, yet the next run into its folder may start: the lock is the
    operating system's and goes with the process. Catches: a lock file whose mere existence blocks."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from ddpm_lib.run_folder import run_lock
        with run_lock({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RuntimeError, match="another training run"):
        with run_folder.run_lock(out):
            pass
    holder.kill()
    holder.wait()
    with run_folder.run_lock(out):
        pass


def test_an_out_dir_that_is_a_file_gets_a_plain_message(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="--out-dir .*afile is a file"):
        with run_folder.run_lock(tmp_path / "afile"):
            pass


def test_an_out_dir_that_cannot_be_written_is_named_with_the_reason(tmp_path, monkeypatch):
    """A folder below a file, or one where the lock cannot be written (no permission, a read-only disk; faked
    here, since root may write anywhere): one line naming --out-dir and the reason. Catches: "[Errno 20] Not a
    directory" or "[Errno 13] Permission denied: '…/.lock'" with no word of which setting is wrong, and a
    folder whose old .lock is still writable accepted, to fail later on a hidden temporary metrics file."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError) as err:
        with run_folder.run_lock(tmp_path / "afile" / "sub"):
            pass
    assert str(err.value) == f"--out-dir {tmp_path / 'afile' / 'sub'}: cannot write there (Not a directory: " \
                             f"{tmp_path / 'afile' / 'sub'})"
    real_open = open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    with pytest.raises(ValueError, match=r"^--out-dir .*ro: cannot write there \(Permission denied: .*ro/\.lock\)$"):
        with run_folder.run_lock(tmp_path / "ro"):
            pass
    monkeypatch.setattr("builtins.open", real_open)
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".lock").touch()                 # a folder made read-only after a first run

    def no_new_files(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", f"{dir}/tmpab12cd")

    monkeypatch.setattr(run_folder.tempfile, "TemporaryFile", no_new_files)
    with pytest.raises(ValueError) as err:
        with run_folder.run_lock(tmp_path / "locked"):
            pass
    assert str(err.value) == f"--out-dir {tmp_path / 'locked'}: cannot write there (Permission denied: " \
                             f"{tmp_path / 'locked'})"


def test_stop_request_turns_the_first_signal_into_a_flag_and_only_a_later_ctrl_c_into_an_interrupt(monkeypatch):
    """Inside StopRequest, SIGTERM sets ``requested`` (the loop saves, then stops). Copies of it that arrive
    at once (SIGTERM or SIGINT: make and torchrun pass on a signal that the process group already
    delivered) and any later SIGTERM change nothing; a Ctrl-C 1.5 s later raises KeyboardInterrupt at once.
    On exit the previous handlers are back. Catches: a copy of the first signal taken as an impatient second
    one (make's SIGTERM stopped a trainer without its checkpoint), a second Ctrl-C ignored (a hung save
    could not be interrupted), handlers left installed after training."""
    now = [100.0]
    monkeypatch.setattr(run_folder, "time", type("Clock", (), {"monotonic": staticmethod(lambda: now[0])}))
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with run_folder.StopRequest() as stop:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested
            now[0] += 0.01
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            now[0] += 1.5
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pytest.fail("a copy of the first signal, or a later SIGTERM, interrupted at once")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_metrics_kept_up_to_a_step_drop_a_line_cut_short(tmp_path):
    """keep_metrics_up_to keeps the complete lines with step ≤ the resumed step and drops a last line that
    a kill cut in half. Catches: parsing the cut line (JSONDecodeError on resume), keeping later steps."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 3, "loss": 1.0}\n{"step": 6, "loss": 0.5}\n{"step": 9, "loss": 0.4}\n{"step": 12, "lo')
    run_folder.keep_metrics_up_to(path, 6)
    assert path.read_text() == '{"step": 3, "loss": 1.0}\n{"step": 6, "loss": 0.5}\n'


def test_run_lock_creates_nested_out_dirs(tmp_path):
    """R11: --out-dir runs/mnist/a (parents missing) is created, as before the lock existed."""
    with run_folder.run_lock(tmp_path / "runs" / "mnist" / "a"):
        pass
    assert (tmp_path / "runs" / "mnist" / "a").is_dir()


def test_is_locked_sees_a_holder_and_takes_nothing_from_it(tmp_path):
    """``is_locked`` answers without keeping the lock: after a look the folder is still free, and a held
    folder stays held. Catches: a look that keeps the lock, or one that ignores the holder."""
    out = tmp_path / "run"
    assert not run_folder.is_locked(out)                              # no folder, no lock file
    out.mkdir()
    assert not run_folder.is_locked(out) and not (out / ".lock").exists()   # a look creates no lock file
    with run_folder.run_lock(out):
        assert run_folder.is_locked(out) and run_folder.is_locked(out)
    assert not run_folder.is_locked(out)
    with run_folder.run_lock(out):                                    # the look let the lock go
        pass


@pytest.mark.parametrize("command", ["train", "train-ddgan"])
def test_resume_into_a_folder_whose_run_has_not_saved_yet_says_it_is_in_use(command, tmp_path, capsys):
    """``--resume`` while the first run is still before its first checkpoint: the message names the run in
    progress, not a missing checkpoint (which would send the user looking for a lost file)."""
    from ddpm_lib.cli import main
    out = tmp_path / "run"
    with run_folder.run_lock(out):
        status = main([command, "--out-dir", str(out), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and "another training run is writing into" in err and "no checkpoint" in err
    assert "ckpt_*.pt" not in err and err.count("\n") == 1
    assert main([command, "--out-dir", str(out), "--resume", "--no-progress"]) == 1   # free and empty
    assert "--resume: no checkpoint (ckpt_*.pt)" in capsys.readouterr().err


def test_metrics_are_cut_back_by_replacing_the_file_and_a_missing_file_is_left_missing(tmp_path):
    """The cut-back metrics file is a new file renamed over the old one (a hard link made before still holds
    every old line, as a reader that opened the file before would see), and a run without a metrics file yet
    gets none. Catches: the file rewritten in place (a kill mid-write loses the kept lines), a resume that
    fails when metrics.jsonl does not exist."""
    import os
    path = tmp_path / "metrics.jsonl"
    text = '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
    path.write_text(text)
    os.link(path, tmp_path / "before.jsonl")
    run_folder.keep_metrics_up_to(path, 1)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n'
    assert (tmp_path / "before.jsonl").read_text() == text
    run_folder.keep_metrics_up_to(tmp_path / "none.jsonl", 1)
    assert not (tmp_path / "none.jsonl").exists()


def test_stop_agreement_returns_the_agreed_flag_of_the_call_before(monkeypatch):
    """StopAgreement's protocol, with torch.distributed replaced by a stand-in for the other rank: a gloo group
    is made once (world > 1), each call starts an asynchronous all-reduce of this rank's flag on that group
    and returns the agreed flag of the call before, read after waiting for it (the stand-in reduces with the
    op it is given, and lands the other rank's flag only in ``wait``); ``finish`` waits for the last one. With
    one process no group is made and the flag comes back as it is. Catches: a group only from 3 processes on,
    the default backend (NCCL on a GPU run, which cannot reduce this CPU tensor) or the global group, the
    rank's own flag returned instead of the agreed one, the flag read without waiting, a synchronous
    all-reduce, MIN for MAX (one rank's signal ignored), the last all-reduce left running."""
    import torch.distributed as dist
    made, started = [], []

    reduce = {dist.ReduceOp.MAX: max, dist.ReduceOp.MIN: min, dist.ReduceOp.SUM: lambda a, b: a + b}

    class Work:
        def __init__(self, tensor, op, theirs):
            self.tensor, self.op, self.theirs, self.waited = tensor, op, theirs, False

        def wait(self):
            self.tensor.fill_(reduce[self.op](float(self.tensor.item()), self.theirs))
            self.waited = True

    def new_group(**kwargs):
        made.append(kwargs)
        return "the gloo group"

    def all_reduce(tensor, op=None, group=None, async_op=False):
        assert (group, async_op) == ("the gloo group", True) and tensor.shape == ()
        started.append(Work(tensor, op, theirs.pop(0)))
        return started[-1]

    monkeypatch.setattr(run_folder.dist, "new_group", new_group)
    monkeypatch.setattr(run_folder.dist, "all_reduce", all_reduce)
    alone = run_folder.StopAgreement(world=1)
    assert made == [] and alone(True) is True and alone(False) is False and started == []
    alone.finish()

    agree = run_folder.StopAgreement(world=2)
    assert made == [{"backend": "gloo"}]
    theirs = [0.0, 1.0, 0.0, 0.0, 0.0]                      # the other rank is asked to stop at call 1
    mine = [False, False, False, True, False]               # this one at call 3
    assert [agree(flag) for flag in mine] == [False, False, True, False, True]
    assert all(work.waited for work in started[:-1]) and not started[-1].waited
    agree.finish()
    assert started[-1].waited and len(started) == 5
    agree.finish()                                          # nothing left to wait for

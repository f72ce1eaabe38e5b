"""pick_device: the default device, and a device this machine cannot compute on refused in one line naming the
setting, from the Python API (TrainConfig, DDGANConfig) as from the command line (tests/test_cli.py)."""
import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.devices import pick_device


def test_no_name_gives_the_gpu_when_there_is_one_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None) == torch.device("cuda")
    assert pick_device("cpu") == torch.device("cpu") and pick_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name, words", [
    ("tpu", "device tpu: not a device name (cpu, cuda, cuda:1, mps, …)"),
    ("meta", "device meta: a meta tensor holds no numbers; choose cpu, cuda or mps"),
    ("cuda", "device cuda: this machine has no CUDA GPU that torch"),
    ("mps", "device mps: Apple's MPS backend is not available here"),
    ("xpu", "device xpu: torch " + torch.__version__ + " cannot use xpu devices on this machine"),
    ("xpu:1", "device xpu:1: torch " + torch.__version__ + " cannot use xpu devices on this machine")])
def test_a_device_this_machine_cannot_use_is_refused_in_one_line(name, words, monkeypatch):
    """Catches: torch's own words from the first ``.to(device)`` ("Torch not compiled with XPU enabled" as an
    AssertionError with a traceback, "META device type not an accelerator"), or a device let through."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    with pytest.raises(ValueError) as err:
        pick_device(name)
    assert str(err.value).startswith(words) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(ValueError, match=f"^--device {name}: "):
        pick_device(name, "--device")


def test_a_backend_torch_reports_available_is_taken(monkeypatch):
    """An Intel GPU (torch.xpu) or Apple GPU (mps) that torch can use is let through as it is.
    Catches: a check that admits only cpu and cuda."""
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("xpu:0") == torch.device("xpu", 0)
    assert pick_device("mps") == torch.device("mps")


@pytest.mark.parametrize("train, config_class", [(dl.train, dl.TrainConfig), (dl.train_ddgan, dl.DDGANConfig)])
def test_the_trainers_refuse_a_device_before_touching_the_run_folder(train, config_class, tmp_path, monkeypatch):
    """``dl.train(TrainConfig(device="cuda"))`` on a machine without a GPU. Catches: torch's "Found no NVIDIA
    driver…" after the data were loaded, and a run folder (with its lock file) left behind."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    for name, words in (("cuda", "no CUDA GPU"), ("meta", "holds no numbers")):
        with pytest.raises(ValueError, match=f"^device {name}: .*{words}"):
            train(config_class(data="two_moons", steps=1, batch_size=8, device=name, out_dir=str(out), progress=False))
    assert not out.exists()


def test_a_gpu_index_is_checked_against_the_number_of_gpus_torch_sees(monkeypatch):
    """With torch seeing 2 GPUs, "cuda" (no index), "cuda:0" and "cuda:1" are taken as they are, and "cuda:2"
    or "cuda:5" is refused with the count of GPUs (not the index asked for). Catches: ``dev.index >= count``
    tested on "cuda" whose index is None (a TypeError for the plainest GPU name), ``>`` for ``>=`` (cuda:2 of
    2 let through), and a message that reports the index as the number of GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda") == torch.device("cuda")
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    assert pick_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    for name in ("cuda:2", "cuda:5"):
        with pytest.raises(ValueError) as err:
            pick_device(name, "--device")
        assert str(err.value) == f"--device {name}: this machine has 2 CUDA GPU(s), numbered from 0"


@pytest.mark.parametrize("name", ["cuda", "mps", "xpu"])
def test_a_backend_missing_here_says_to_leave_the_setting_out(name, monkeypatch):
    """A GPU backend this machine lacks is refused with the way out, naming the setting as the caller calls
    it: "(leave --device out to take the GPU when there is one, else the CPU)". Catches: the hint dropped
    from one of the messages, or naming "device" when the user typed --device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    with pytest.raises(ValueError) as err:
        pick_device(name, "--device")
    assert str(err.value).startswith(f"--device {name}: ")
    assert str(err.value).endswith("(leave --device out to take the GPU when there is one, else the CPU)")


def test_an_empty_device_name_is_refused_not_taken_for_the_default(monkeypatch):
    """Only None means "the default device": ``--device ""`` (an empty shell variable) or ``device=""`` is not a
    device name. Catches: ``if not name`` for ``if name is None``, which trains silently on a device the user
    did not name."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^--device : not a device name"):
        pick_device("", "--device")

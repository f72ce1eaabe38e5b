"""sample_batches.draw_batches: samples kept on disk batch by batch, resumed exactly, refused when foreign."""
import itertools

import pytest
import torch

from ddpm_lib import sample_batches
from ddpm_lib.sample_batches import draw_batches, kept_until_written, partial_path


def test_a_resumed_draw_returns_the_uninterrupted_samples_and_keeps_them_until_written(tmp_path):
    """Five draws in batches of 2, stopped during the third batch, then continued: the same 5 samples as one
    uninterrupted call, in order, with only the last batch (start 4, size 1) drawn again and the seconds of both
    calls summed. All 5 stay kept until ``kept_until_written`` ends: a Ctrl-C inside it keeps them (a third call
    draws nothing), a normal end removes the file. Catches: a batch kept twice or lost, the generator restarted at
    the seed, the kept seconds dropped, samples deleted before the output exists, samples kept in float32 (twice the
    size) or returned unrounded (a resumed run would differ from an uninterrupted one)."""
    def draw_with(g, calls, stop_at=None):
        def draw(start, b):
            calls.append((start, b))
            if len(calls) == stop_at:
                raise KeyboardInterrupt
            return torch.randn(b, 3, generator=g)
        return draw

    key = {"seed": 0, "n": 5}
    g = torch.Generator().manual_seed(0)
    whole = draw_batches(draw_with(g, []), 5, 2, g, tmp_path / "whole.json", key).samples
    g, calls = torch.Generator().manual_seed(0), []
    with pytest.raises(KeyboardInterrupt, match="4 of 5 samples are kept in .*split.json.partial.pt"):
        draw_batches(draw_with(g, calls, stop_at=3), 5, 2, g, tmp_path / "split.json", key)
    kept = torch.load(partial_path(tmp_path / "split.json"), weights_only=True)
    assert [b.dtype for b in kept["batches"]] == [torch.float16] * 2                 # half the bytes of float32
    g0 = torch.Generator().manual_seed(0)
    raw = torch.cat([torch.randn(b, 3, generator=g0) for b in (2, 2, 1)])             # the draws themselves
    assert whole.dtype == torch.float32 and torch.equal(whole, raw.half().float()) and not torch.equal(whole, raw)
    kept["seconds"] = 100.0                                   # as if the first call had sampled for 100 s
    torch.save(kept, partial_path(tmp_path / "split.json"))
    g, calls = torch.Generator().manual_seed(0), []           # a new process: the generator starts at the seed
    split, seconds, _ = draw_batches(draw_with(g, calls), 5, 2, g, tmp_path / "split.json", key)
    assert calls == [(4, 1)] and torch.equal(split, whole) and seconds >= 100.0     # samples 4..4 alone
    with pytest.raises(KeyboardInterrupt, match="5 of 5 samples are kept"):
        with kept_until_written(tmp_path / "split.json", 5):
            raise KeyboardInterrupt                           # e.g. during the statistics
    g, calls = torch.Generator().manual_seed(0), []
    again = draw_batches(draw_with(g, calls), 5, 2, g, tmp_path / "split.json", key).samples
    assert calls == [] and torch.equal(again, whole)
    with kept_until_written(tmp_path / "split.json", 5):
        pass
    assert not partial_path(tmp_path / "split.json").exists()


def test_a_foreign_or_damaged_file_is_refused_and_an_early_stop_says_nothing_was_kept(tmp_path):
    g, calls = torch.Generator().manual_seed(0), []

    def stop_second(start, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return torch.randn(b, generator=g)

    with pytest.raises(KeyboardInterrupt, match="2 of 4 samples"):
        draw_batches(stop_second, 4, 2, g, tmp_path / "r.json", {"seed": 0})
    with pytest.raises(ValueError, match=r"other settings \(seed=0 there, 1 here\)"):
        draw_batches(lambda start, b: torch.randn(b, generator=g), 4, 2, g, tmp_path / "r.json", {"seed": 1})
    partial_path(tmp_path / "r.json").write_bytes(b"cut off")
    with pytest.raises(ValueError, match="not a file of kept samples"):
        draw_batches(lambda start, b: torch.randn(b, generator=g), 4, 2, g, tmp_path / "r.json", {"seed": 0})

    def stop_first(start, b):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="^$"):        # nothing kept: the command says what earlier ones kept
        draw_batches(stop_first, 4, 2, g, tmp_path / "other.json", {"seed": 0})
    assert not partial_path(tmp_path / "other.json").exists()


def test_calls_are_counted_per_batch_and_kept_and_only_the_batches_are_timed(tmp_path, monkeypatch):
    """A draw of b samples that makes b + 1 'network calls', 5 samples in batches of 2, stopped during the
    third batch and continued: ``calls`` is [3, 3, 2] (the first two kept in the file), the samples equal a
    draw that kept nothing, and with a clock that reads 10 s inside each batch and 100 s between them (the
    saving) ``seconds`` is 10 per batch. Without ``out`` nothing is written and a Ctrl-C comes through as it
    was. Catches: the time between batches counted, the calls of the kept batches lost on resume."""
    network = {"calls": 0}
    log = []

    def draw_with(g, stop_at=None):
        def draw(start, b):
            log.append(b)
            if len(log) == stop_at:
                raise KeyboardInterrupt
            network["calls"] += b + 1
            return torch.randn(b, generator=g)
        return draw

    g = torch.Generator().manual_seed(3)
    plain = draw_batches(draw_with(g), 5, 2, g, None).samples
    assert not list(tmp_path.iterdir()) and log == [2, 2, 1]

    def start_clock():                                    # reads 0, 10, 100, 110, 200, 210, …
        readings = (100.0 * (i // 2) + 10.0 * (i % 2) for i in itertools.count())
        monkeypatch.setattr(sample_batches, "time", type("Clock", (), {"perf_counter": staticmethod(
            lambda: next(readings))}))

    count = dict(count_calls=lambda: network["calls"])
    g, log[:] = torch.Generator().manual_seed(3), []
    start_clock()
    with pytest.raises(KeyboardInterrupt, match="4 of 5"):
        draw_batches(draw_with(g, stop_at=3), 5, 2, g, tmp_path / "w.json", {"seed": 3}, **count)
    assert log == [2, 2, 1]                              # two kept batches, the stopped one
    g, log[:] = torch.Generator().manual_seed(3), []
    start_clock()
    drawn = draw_batches(draw_with(g), 5, 2, g, tmp_path / "w.json", {"seed": 3}, **count)
    assert log == [1] and torch.equal(drawn.samples, plain)        # the missing batch alone
    assert drawn.calls == [3, 3, 2] and drawn.seconds == pytest.approx(30.0)
    g, log[:] = torch.Generator().manual_seed(3), []
    with pytest.raises(KeyboardInterrupt, match="^$"):
        draw_batches(draw_with(g, stop_at=2), 5, 2, g, None)


def test_kept_files_are_the_partial_file_and_the_row_files_of_one_output(tmp_path):
    """kept_files("t.json") lists t.json.partial.pt and t.json.row<i>.partial.pt, sorted, and nothing of
    another output (t.json2…, other.json…) nor t.json itself. Catches: a glob that takes another command's
    samples (and trilemma would delete them)."""
    from ddpm_lib.sample_batches import kept_files
    names = ["t.json", "t.json.partial.pt", "t.json.row1.partial.pt", "t.json.row2.partial.pt",
             "t.json2.partial.pt", "t.json.rowing.txt", "other.json.partial.pt"]
    for name in names:
        (tmp_path / name).touch()
    assert [p.name for p in kept_files(tmp_path / "t.json")] == names[1:4]
    assert kept_files(tmp_path / "none.json") == []


def test_warm_up_calls_the_network_once_at_the_batch_shape_off_the_cpu_and_never_on_it():
    """On the meta device (standing in for a GPU) warm_up calls ``net`` once, without recording gradients,
    with x of the batch shape and long t of its batch size; on the CPU it does not call it. Catches: a
    warm-up at another shape (the timed batches would load their kernels themselves), a warm-up that costs
    CPU users a whole network call for nothing."""
    from ddpm_lib.sample_batches import warm_up
    seen = []

    def net(x, t):
        seen.append((tuple(x.shape), x.device.type, tuple(t.shape), t.dtype, torch.is_grad_enabled()))
        return x

    warm_up(net, (5, 1, 8, 8), "cpu")
    assert seen == []
    warm_up(net, (5, 1, 8, 8), "meta")
    assert seen == [((5, 1, 8, 8), "meta", (5,), torch.long, False)]


def test_machine_name_is_the_gpu_model_on_cuda_and_cpu_otherwise(monkeypatch):
    """The key of kept samples names the processor: the GPU's model for a CUDA device (asked of
    ``torch.cuda.get_device_name`` for that device), "cpu" for the CPU. Catches: every machine called
    "cpu" (samples of an H100 resumed on an A100 would mix values of two machines)."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: asked.append(device) or "NVIDIA H100 80GB HBM3")
    assert sample_batches.machine_name(torch.device("cuda", 1)) == "NVIDIA H100 80GB HBM3"
    assert asked == [torch.device("cuda", 1)]
    assert sample_batches.machine_name(torch.device("cpu")) == "cpu" and len(asked) == 1


_CODE_RAN = []


def _record_code_ran():
    _CODE_RAN.append(True)
    return "ran"


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (_record_code_ran, ())


def test_a_file_of_another_kind_is_refused_and_counts_no_samples(tmp_path):
    """At ``<out>.partial.pt``: a torch file of another format, a tensor, or a file of the right format that
    would run code when unpickled. Each is refused with the "not a file of kept samples" line (the last
    without running its code: the file is read with ``weights_only``), and ``kept_count`` counts 0 samples.
    Catches: the format tag unchecked (a KeyError instead), a non-dict file taken for a dict, a kept file
    unpickled in full."""
    from ddpm_lib.sample_batches import kept_count
    out = tmp_path / "r.json"
    g = torch.Generator().manual_seed(0)
    valid = {"format": sample_batches.FORMAT, "key": {"seed": 0}, "batches": [torch.zeros(2, dtype=torch.float16)],
             "seconds": 1.0, "calls": [], "generator": g.get_state()}
    for content in ({"format": "ddpm_lib-checkpoint-1", "key": {"seed": 0}}, torch.zeros(3),
                    {**valid, "extra": _RunsCodeWhenUnpickled()}):
        torch.save(content, partial_path(out))
        assert kept_count(out) == 0
        with pytest.raises(ValueError, match="is not a file of kept samples"):
            draw_batches(lambda start, b: torch.zeros(b), 4, 2, g, out, {"seed": 0})
    assert _CODE_RAN == []
    torch.save(valid, partial_path(out))                      # the same file without the object: read
    assert kept_count(out) == 2


def test_kept_count_counts_samples_not_batches(tmp_path):
    """After batches of 2, 2 and 1 are kept, ``kept_count`` is 5; without a file it is 0. Catches: the number
    of batches reported (``evaluate --compile`` decides from it whether a padded last batch is needed)."""
    from ddpm_lib.sample_batches import kept_count
    g = torch.Generator().manual_seed(0)
    assert kept_count(tmp_path / "r.json") == 0
    draw_batches(lambda start, b: torch.randn(b, 2, generator=g), 5, 2, g, tmp_path / "r.json", {"seed": 0})
    assert kept_count(tmp_path / "r.json") == 5


def test_kept_files_take_only_row_files_and_names_with_glob_characters(tmp_path):
    """Beside ``run[1].json`` (a name with glob's brackets) its partial and row files are found, and neither
    ``run[1].json.old.partial.pt`` (not a row file) nor ``run1.json.partial.pt`` (which the unescaped
    pattern ``run[1].json*`` would match) is taken; ``remove_kept`` removes exactly those found. Catches: a
    name not escaped for glob, any ``<out>.<anything>.partial.pt`` removed."""
    from ddpm_lib.sample_batches import kept_files, remove_kept
    names = ["run[1].json.partial.pt", "run[1].json.row1.partial.pt", "run[1].json.row12.partial.pt",
             "run[1].json.old.partial.pt", "run1.json.partial.pt", "run[1].json"]
    for name in names:
        (tmp_path / name).touch()
    assert [p.name for p in kept_files(tmp_path / "run[1].json")] == names[:3]
    remove_kept(tmp_path / "run[1].json")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])

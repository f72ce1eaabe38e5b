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

"""Files: atomic writes survive a failure midway, output names are checked before any work, JSON cards hold the
sha256 of the file they describe, and a tagged file of another kind is named for what it is."""
import pytest
import torch

from ddpm_lib import checkpoint, files
from ddpm_lib.checkpoint import load_checkpoint
from ddpm_lib.files import check_card, prepare_output, save_with_card


def test_a_json_write_cut_off_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    """write_json (cards, results, metrics) replaces a file atomically too. Catches: a card rewritten in
    place, which a crash leaves half-written beside complete weights."""
    path = files.write_json({"step": 1}, tmp_path / "card.json")
    real_dumps = files.json.dumps

    def dumps_then_crash(obj, **kwargs):
        raise RuntimeError(f"killed after {len(real_dumps(obj, **kwargs))} characters (simulated)")

    monkeypatch.setattr(files.json, "dumps", dumps_then_crash)
    with pytest.raises(RuntimeError, match="simulated"):
        files.write_json({"step": 2}, path)
    monkeypatch.undo()
    original = files.replace_atomically

    def write_half_then_crash(target, write):
        def half(f):
            write(f)
            f.seek(f.tell() // 2)
            f.truncate()
            raise RuntimeError("killed while writing (simulated)")
        return original(target, half)

    monkeypatch.setattr(files, "replace_atomically", write_half_then_crash)
    with pytest.raises(RuntimeError, match="simulated"):
        files.write_json({"step": 3}, path)
    assert path.read_text() == '{\n  "step": 1\n}\n' and [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_output_names_are_checked_before_any_work(tmp_path):
    """prepare_output: the suffix, a folder given as the file, and the parent folder created."""
    assert files.prepare_output(tmp_path / "a" / "b" / "x.PNG", (".png", ".pt")) == tmp_path / "a" / "b" / "x.PNG"
    assert (tmp_path / "a" / "b").is_dir()
    with pytest.raises(ValueError, match=r"must end in \.png or \.pt"):
        files.prepare_output(tmp_path / "x", (".png", ".pt"))
    with pytest.raises(ValueError, match="is a folder"):
        files.prepare_output(tmp_path / "a", (".json",))


def test_a_weights_file_named_by_the_python_api_is_not_called_a_flag(tmp_path):
    """``save_with_card`` (behind ``dl.save_classifier``, ``dl.export_ema_weights``, …) called from Python with a
    bad name says "the weights file", and a command line says its flag. Catches: "--out x.json: …" told to
    a student who typed no --out."""
    with pytest.raises(ValueError) as err:
        files.save_with_card({}, tmp_path / "w.json", {})
    assert str(err.value) == f"the weights file {tmp_path / 'w.json'}: the name must end in .pt"
    with pytest.raises(ValueError, match=r"^--out .* is a folder"):
        files.prepare_output(tmp_path, (".pt",))


def test_a_file_of_another_known_kind_is_named_with_the_commands_that_read_it(tmp_path):
    """Each format tag a command reads is in FILE_KINDS, and a file of one kind given where another is
    expected is named for what it is. Catches: "is not a ddpm_lib checkpoint (no format tag …)" for an
    exported DDGAN, which leaves the user to guess that ``sample-ddgan`` reads it; a tag added without an entry."""
    from ddpm_lib import classifier, ddgan_train, export, noisy_classifier
    tags = {checkpoint.FORMAT, export.FORMAT, ddgan_train.WEIGHTS_FORMAT, noisy_classifier.FORMAT, classifier.FORMAT}
    assert set(files.FILE_KINDS) == tags
    torch.save({"format": ddgan_train.WEIGHTS_FORMAT}, tmp_path / "gan.pt")
    with pytest.raises(ValueError) as err:
        files.read_tagged_file(tmp_path / "gan.pt", (checkpoint.FORMAT, export.FORMAT), "checkpoint or weights")
    assert str(err.value) == (f"{tmp_path / 'gan.pt'} is an exported DDGAN generator (sample-ddgan, trilemma "
                              f"--ddgan), not a ddpm_lib checkpoint or weights")
    torch.save({"format": "ddpm_lib-something-9"}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="is not a ddpm_lib checkpoint \\(no format tag 'ddpm_lib-checkpoint-1'\\)"):
        load_checkpoint(tmp_path / "new.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_recorded_path_is_relative_below_the_working_directory_and_a_bare_name_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    inside = tmp_path / "data" / "model.pt"
    monkeypatch.chdir(tmp_path)
    assert files.recorded_path(inside) == "data/model.pt"
    assert files.recorded_path("data/model.pt") == "data/model.pt"
    monkeypatch.chdir(tmp_path / "data")
    assert files.recorded_path(tmp_path / "elsewhere" / "other.pt") == "other.pt"


def test_an_out_two_folders_under_a_file_is_refused_in_one_line(tmp_path):
    """K2: the first existing ancestor is a file, not only the direct parent."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="afile is a file, not a folder"):
        prepare_output(tmp_path / "afile" / "sub" / "s.pt", (".pt",))


def test_cards_without_a_file_or_not_an_object(tmp_path):
    """K3: a card whose weights file is missing is no check (the loader names the missing file);
    K7: a card that is JSON but not an object is damaged, not an AttributeError."""
    path = tmp_path / "w.pt"
    save_with_card({"x": torch.zeros(2)}, path, {"step": 1})
    path.unlink()
    assert check_card(path) is None
    save_with_card({"x": torch.zeros(2)}, path, {"step": 1})
    path.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="the card holds none"):
        check_card(path)


def test_the_card_holds_the_sha256_of_the_files_bytes_and_a_required_card_must_exist(tmp_path):
    """save_with_card writes sha256(file bytes), computed here with hashlib on the bytes read back; a file
    with no card passes check_card as None, but raises ValueError with required=True. Catches: another
    digest (sha3, md5) recorded under the name sha256, ``required`` ignored (an exported model shipped
    without its card would load unchecked)."""
    import hashlib
    path = tmp_path / "w.pt"
    card = save_with_card({"x": torch.arange(5.0)}, path, {"step": 3})
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").unlink()
    assert check_card(path) is None
    with pytest.raises(ValueError, match="no card"):
        check_card(path, required=True)


def test_the_bytes_are_flushed_to_the_temporary_file_before_its_fsync(tmp_path, monkeypatch):
    """fsync makes durable what the operating system holds; bytes still in Python's write buffer are not there
    yet. Recorded by wrapping os.fsync: at the fsync of the temporary file its size on disk is already the size
    of the finished file. Catches: ``f.flush()`` dropped (a small card stays in the buffer, the fsync syncs an
    empty file, and after a power cut the renamed card can be empty)."""
    import os
    import stat
    sizes, real_fsync = [], os.fsync

    def fsync(fd):
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            sizes.append(info.st_size)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = files.write_json({"step": 12, "loss": 0.25}, tmp_path / "card.json")
    assert sizes == [path.stat().st_size] and sizes[0] > 0


def test_a_folder_given_as_the_output_names_a_file_with_the_first_suffix(tmp_path):
    """The whole message for a folder: the name, and an example file in it with the first allowed suffix.
    Catches: an example with another suffix than the first (``out.pt`` offered where ``.png`` comes first)."""
    with pytest.raises(ValueError) as err:
        prepare_output(tmp_path, (".png", ".pt"))
    assert str(err.value) == f"--out {tmp_path} is a folder: name a file in it, e.g. {tmp_path / 'out.png'}"


def test_a_card_is_refused_wherever_its_weights_file_is_expected(tmp_path):
    """A card (``.json``, in any case) named where the weights file belongs is refused by name, with the file
    to pass, by refuse_a_card (the message starts with the path when no flag named it), by check_card and by
    read_tagged_file. Catches: ``W.JSON`` let through; a message starting with a space; check_card comparing
    the card with its own sha256 ("does not match … the file is damaged", blaming an intact file);
    read_tagged_file handing the JSON to torch.load ("truncated, damaged or not a PyTorch file")."""
    from pathlib import Path
    upper = Path("w.JSON")
    with pytest.raises(ValueError) as err:
        files.refuse_a_card(upper)
    assert str(err.value) == "w.JSON is a JSON card: pass the file it describes, w.pt"
    with pytest.raises(ValueError, match=r"^--classifier w\.JSON is a JSON card"):
        files.refuse_a_card(upper, "--classifier")
    path = tmp_path / "w.pt"
    save_with_card({"format": checkpoint.FORMAT, "x": torch.zeros(2)}, path, {"step": 1})
    card = path.with_suffix(".json")
    with pytest.raises(ValueError, match=f"^{card} is a JSON card: pass the file it describes, {path}$"):
        check_card(card)
    with pytest.raises(ValueError, match=f"^{card} is a JSON card: pass the file it describes, {path}$"):
        files.read_tagged_file(card, checkpoint.FORMAT, "checkpoint")


def test_the_card_names_its_file_by_name_alone_and_is_what_was_written(tmp_path):
    """The card beside ``runs/x/w.pt`` says ``"file": "w.pt"`` (a shipped card holds no machine's folders,
    and stays true when the pair is moved), and the card returned is the card on disk. Catches: the full
    path recorded, or a returned card that differs from the one written."""
    import json
    path = tmp_path / "sub" / "w.pt"
    card = save_with_card({"x": torch.arange(3.0)}, path, {"step": 4, "data": "mnist-5k"})
    assert card["file"] == "w.pt" and card["step"] == 4 and card["data"] == "mnist-5k"
    assert json.loads(path.with_suffix(".json").read_text()) == card


def test_a_required_card_of_a_missing_file_is_left_to_the_loader(tmp_path):
    """check_card(required=True) when the weights file itself is missing returns None, so the loader reports
    the missing file. Catches: "w.pt has no card w.json to check its sha256 against" for a file that is not
    there at all (the user looks for a card, not for the file)."""
    assert check_card(tmp_path / "w.pt", required=True) is None
    save_with_card({"x": torch.zeros(1)}, tmp_path / "w.pt", {})
    (tmp_path / "w.pt").unlink()
    assert check_card(tmp_path / "w.pt", required=True) is None


def test_a_missing_file_or_a_folder_is_not_found_named_by_its_kind(tmp_path):
    """read_tagged_file of a path that is no file: FileNotFoundError "no checkpoint file at …", and for a kind
    named "… file" no doubled word ("no weights file at …"); a folder is no file either. Catches: "no weights
    file file at", and a folder handed to torch.load (reported as a damaged PyTorch file)."""
    with pytest.raises(FileNotFoundError, match=f"^no checkpoint file at {tmp_path / 'none.pt'}$"):
        files.read_tagged_file(tmp_path / "none.pt", checkpoint.FORMAT, "checkpoint")
    with pytest.raises(FileNotFoundError, match=f"^no weights file at {tmp_path / 'none.pt'}$"):
        files.read_tagged_file(tmp_path / "none.pt", checkpoint.FORMAT, "weights file")
    (tmp_path / "run.pt").mkdir()
    with pytest.raises(FileNotFoundError, match="^no checkpoint file at"):
        files.read_tagged_file(tmp_path / "run.pt", checkpoint.FORMAT, "checkpoint")

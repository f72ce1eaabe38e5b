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

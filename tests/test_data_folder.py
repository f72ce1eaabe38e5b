"""ddpm_lib.data_folder: the course's data/ folder from a clone, or fetched once from the repository's archive.

The fetch is tested on a local zip archive laid out as GitHub's (``<repo>-main/data/…``), opened through a
``file://`` URL: the real download is the same ``urllib`` call on an https URL.
"""
import tempfile
import zipfile
from pathlib import Path

import pytest

import ddpm_lib as dl
from ddpm_lib import data_folder
from ddpm_lib.classifier import DEFAULT_CLASSIFIER, MNISTClassifier

REPO = Path(__file__).resolve().parent.parent


def make_archive(path: Path, members: dict) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path.as_uri()


@pytest.fixture
def no_clone(tmp_path, monkeypatch):
    """The package as pip installs it without the clone: no data/ beside it, a working folder outside any
    clone, an empty cache."""
    monkeypatch.setattr(data_folder, "CLONE_DATA", tmp_path / "site-packages" / "data")
    monkeypatch.setenv("DDPM_COURSE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def test_from_a_clone_it_is_the_clones_data_folder(no_clone, monkeypatch):
    monkeypatch.setattr(data_folder, "CLONE_DATA", REPO / "data")
    assert dl.course_data("laptop") == REPO / "data" / "laptop"
    assert dl.course_data() == REPO / "data" / "."
    assert dl.course_data(no_clone / "elsewhere") == no_clone / "elsewhere"      # absolute: as it is
    assert not (no_clone / "cache").exists()                                    # nothing fetched


def test_a_package_installed_apart_finds_the_clone_it_is_used_from(no_clone, monkeypatch):
    """A non-editable install used from a clone's notebooks/ folder: the clone around the working folder is
    found (a folder holding ddpm_lib/ and data/mnist_classifier.pt), and nothing is fetched. Catches: a
    download from the internet while the clone's own data/ sits one folder up."""
    monkeypatch.chdir(REPO / "notebooks")
    assert dl.course_data("laptop") == REPO / "data" / "laptop"
    assert not (no_clone / "cache").exists()


def test_without_a_clone_the_folder_is_fetched_once_and_only_data_is_kept(no_clone, monkeypatch):
    shipped = DEFAULT_CLASSIFIER.read_bytes()
    url = make_archive(no_clone / "course.zip", {
        "ddpm-course-main/README.md": "# course",
        "ddpm-course-main/notebooks/06_training.ipynb": "{}",
        "ddpm-course-main/data/mnist_classifier.pt": shipped,
        "ddpm-course-main/data/laptop/results/ddpm_mnist_eval.json": '{"fid": 32.9}',
    })
    monkeypatch.setenv("DDPM_COURSE_ARCHIVE", url)
    got = dl.course_data("laptop")
    cached = no_clone / "cache" / "data"
    assert got == cached / "laptop"
    assert (got / "results" / "ddpm_mnist_eval.json").read_text() == '{"fid": 32.9}'
    assert sorted(p.name for p in cached.iterdir()) == ["laptop", "mnist_classifier.pt"]
    assert [p.name for p in (no_clone / "cache").iterdir()] == ["data"]          # no temporary left behind
    (no_clone / "course.zip").unlink()                                           # a second call downloads nothing
    assert dl.course_data("mnist_classifier.pt").read_bytes() == shipped
    assert isinstance(dl.load_classifier(), MNISTClassifier)                     # the CLI's default classifier


def test_a_failed_download_says_what_to_do_and_leaves_nothing(no_clone, monkeypatch):
    monkeypatch.setenv("DDPM_COURSE_ARCHIVE", (no_clone / "missing.zip").as_uri())
    with pytest.raises(RuntimeError, match="could not download .* clone https://github.com/ddpm-course"):
        dl.course_data("laptop")
    assert list((no_clone / "cache").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="no course data/ folder"):
        dl.course_data("laptop", fetch=False)
    (no_clone / "page.html").write_text("<html>rate limited</html>")
    monkeypatch.setenv("DDPM_COURSE_ARCHIVE", (no_clone / "page.html").as_uri())
    with pytest.raises(RuntimeError, match="did not send a zip archive"):
        dl.course_data("laptop")
    assert list((no_clone / "cache").iterdir()) == []


def test_an_archive_that_is_not_the_course_is_refused(no_clone, monkeypatch):
    url = make_archive(no_clone / "other.zip", {"other-main/data/weights.pt": b"x"})
    monkeypatch.setenv("DDPM_COURSE_ARCHIVE", url)
    with pytest.raises(RuntimeError, match="not the course's archive"):
        dl.course_data("laptop")
    assert list((no_clone / "cache").iterdir()) == []
    url = make_archive(no_clone / "evil.zip", {"c-main/data/mnist_classifier.pt": b"x", "c-main/data/../../evil": b"x"})
    monkeypatch.setenv("DDPM_COURSE_ARCHIVE", url)
    with pytest.raises(RuntimeError, match="refusing the archive member"):
        dl.course_data("laptop")
    assert not (no_clone / "evil").exists() and list((no_clone / "cache").iterdir()) == []


def test_cache_folder_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("DDPM_COURSE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_folder.cache_folder() == tmp_path / "xdg" / "ddpm_course"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_folder.cache_folder() == tmp_path / "home" / ".cache" / "ddpm_course"


def test_only_a_clone_with_the_package_and_the_marker_counts(no_clone, monkeypatch):
    """DF5/DF6: a data/ with the marker but no ddpm_lib/ beside it, or a clone whose data/ lacks the marker."""
    (no_clone / "data").mkdir()
    (no_clone / "data" / "mnist_classifier.pt").write_bytes(b"x")     # around work/, but no ddpm_lib/
    (no_clone / "work" / "ddpm_lib").mkdir()
    (no_clone / "work" / "data").mkdir()                               # a clone-like folder without the marker
    with pytest.raises(FileNotFoundError, match="no course data/ folder"):
        dl.course_data("laptop", fetch=False)


def github_archive(path):
    shipped = DEFAULT_CLASSIFIER.read_bytes()
    return make_archive(path, {
        "ddpm-course-main/": b"", "ddpm-course-main/data/": b"", "ddpm-course-main/data/laptop/": b"",
        "ddpm-course-main/data/laptop/results/": b"",
        "ddpm-course-main/data/mnist_classifier.pt": shipped,
        "ddpm-course-main/data/laptop/results/eval.json": "{}",
        "ddpm-course-main/tests/data/fixture.bin": b"not course data",
    })


def test_a_github_archive_with_folder_entries_and_other_data_folders(no_clone, monkeypatch):
    """DF16: GitHub's archives list folders as members; DF10: only the top data/ is kept."""
    monkeypatch.setenv("DDPM_COURSE_ARCHIVE", github_archive(no_clone / "c.zip"))
    got = dl.course_data("laptop")
    assert (got / "results" / "eval.json").read_text() == "{}"
    assert sorted(p.name for p in got.parent.iterdir()) == ["laptop", "mnist_classifier.pt"]


def test_a_folder_fetched_meanwhile_is_kept(no_clone):
    """DF12: another process renamed its copy into place first: the fetch keeps it and leaves no temporary."""
    dest = no_clone / "cache" / "data"
    dest.mkdir(parents=True)
    (dest / "mnist_classifier.pt").write_bytes(b"theirs")
    assert data_folder.fetch_course_data(github_archive(no_clone / "c.zip"), dest) == dest
    assert (dest / "mnist_classifier.pt").read_bytes() == b"theirs"
    assert [p.name for p in (no_clone / "cache").iterdir()] == ["data"]


def test_the_fetch_stages_beside_its_destination(no_clone, monkeypatch):
    """DF15: staged in dest's folder (a rename across file systems fails), not the system temp folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(no_clone / "no-such-tmp"))
    monkeypatch.setenv("DDPM_COURSE_ARCHIVE", github_archive(no_clone / "c.zip"))
    assert (dl.course_data("laptop") / "results" / "eval.json").is_file()


def test_an_incomplete_cache_folder_is_replaced_by_the_fetch(no_clone, monkeypatch):
    """A cache data/ folder without the marker (copied in by hand, half deleted) is fetched over, once. Catches:
    a fetch at every call that then keeps the incomplete folder, whose files the notebooks then lack."""
    url = make_archive(no_clone / "course.zip", {"c-main/data/mnist_classifier.pt": b"x", "c-main/data/laptop/a": b"1"})
    monkeypatch.setenv("DDPM_COURSE_ARCHIVE", url)
    (no_clone / "cache" / "data" / "stale").mkdir(parents=True)
    assert (dl.course_data("laptop") / "a").read_bytes() == b"1"
    assert sorted(p.name for p in (no_clone / "cache" / "data").iterdir()) == ["laptop", "mnist_classifier.pt"]


def test_an_absolute_path_needs_no_data_folder(no_clone):
    """An absolute path is returned as it is even where no data/ folder exists and none may be fetched.
    Catches: a download (or a FileNotFoundError) before an absolute path is recognised."""
    assert dl.course_data(no_clone / "mine" / "w.pt", fetch=False) == no_clone / "mine" / "w.pt"
    assert not (no_clone / "cache").exists()


def test_the_clone_beside_the_package_comes_before_the_one_around_the_working_folder(no_clone, monkeypatch):
    """Both the package's own clone and another clone around the working folder have a data/ folder: the
    package's is taken (the one whose models match its code). Catches: the search order reversed."""
    monkeypatch.setattr(data_folder, "CLONE_DATA", REPO / "data")
    other = no_clone / "other_clone"
    (other / "ddpm_lib").mkdir(parents=True)
    (other / "data").mkdir()
    (other / "data" / "mnist_classifier.pt").write_bytes(b"x")
    (other / "notebooks").mkdir()
    monkeypatch.chdir(other / "notebooks")
    assert dl.course_data("laptop") == REPO / "data" / "laptop"
    monkeypatch.setattr(data_folder, "CLONE_DATA", no_clone / "site-packages" / "data")
    assert dl.course_data("laptop") == other / "data" / "laptop"


def test_an_archive_with_an_absolute_member_is_refused(no_clone, monkeypatch):
    """A member named with a leading "/" under data/ is refused like one with "..", and nothing is kept.
    Catches: absolute member names accepted."""
    url = make_archive(no_clone / "abs.zip", {"c-main/data/mnist_classifier.pt": b"x", "/data/laptop/a": b"1"})
    monkeypatch.setenv("DDPM_COURSE_ARCHIVE", url)
    with pytest.raises(RuntimeError, match="refusing the archive member '/data/laptop/a'"):
        dl.course_data("laptop")
    assert list((no_clone / "cache").iterdir()) == []

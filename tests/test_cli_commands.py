"""The commands besides the trainers (``sample``, ``evaluate``, ``export``, ``bench``, ``sample-ddgan``,
``export-ddgan``, ``evaluate-guidance``, ``trilemma``): inputs they must not overwrite, JSON cards given
where a model file belongs, what their JSON records, and progress bars on the slow ones."""
import hashlib
import json
from pathlib import Path

import pytest

from ddpm_lib import cli, cli_evaluate, guidance_eval, trilemma
from ddpm_lib.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CLASSIFIER = ROOT / "data" / "mnist_classifier.pt"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Tiny mnist-5k models (T = 6, cosine): a DDPM run, its export, a DDGAN run, its export and a noisy
    classifier for the same schedule, each made by the command line."""
    d = tmp_path_factory.mktemp("models")
    quick = ["--preset", "tiny", "--steps", "1", "--batch-size", "8", "--sample-every", "0", "--device", "cpu",
             "--no-progress"]
    assert main(["train", "--data", "mnist-5k", "--T", "6", "--schedule", "cosine", "--warmup", "1",
                 "--out-dir", str(d / "ddpm"), *quick]) == 0
    assert main(["train-ddgan", "--data", "mnist-5k", "--out-dir", str(d / "gan"), *quick]) == 0
    assert main(["export", "--checkpoint", str(d / "ddpm"), "--out", str(d / "ddpm.pt")]) == 0
    assert main(["export-ddgan", "--checkpoint", str(d / "gan"), "--out", str(d / "gan.pt")]) == 0
    assert main(["train-noisy-classifier", "--preset", "tiny", "--schedule", "cosine", "--T", "6", "--steps", "1",
                 "--batch-size", "4", "--device", "cpu", "--out", str(d / "nc.pt")]) == 0
    return {"ddpm": d / "ddpm", "ckpt": next((d / "ddpm").glob("ckpt_*.pt")), "gan": d / "gan",
            "gan_ckpt": next((d / "gan").glob("ckpt_*.pt")), "exported": d / "ddpm.pt", "gan_exported": d / "gan.pt",
            "nc": d / "nc.pt"}


OVERWRITES = {   # name → (argv with {placeholders}, the input file that --out names)
    "sample over its checkpoint": (["sample", "--checkpoint", "{ddpm}", "--n", "2", "--out", "{ckpt}"], "ckpt"),
    "sample over its classifier": (["sample", "--checkpoint", "{ddpm}", "--n", "2", "--label", "1",
                                    "--classifier", "{nc}", "--out", "{nc}"], "nc"),
    "export over its checkpoint": (["export", "--checkpoint", "{ckpt}", "--out", "{ckpt}"], "ckpt"),
    "sample-ddgan over its checkpoint": (["sample-ddgan", "--checkpoint", "{gan}", "--n", "2", "--out",
                                          "{gan_ckpt}"], "gan_ckpt"),
    "export-ddgan over its checkpoint": (["export-ddgan", "--checkpoint", "{gan}", "--out", "{gan_ckpt}"],
                                         "gan_ckpt"),
    "evaluate over the card of its model": (["evaluate", "--checkpoint", "{exported}", "--n", "2",
                                             "--out", "{exported_card}"], "exported_card"),
    "evaluate-guidance over the card of its classifier": (
        ["evaluate-guidance", "--checkpoint", "{ddpm}", "--classifier", "{nc}", "--scales", "1",
         "--n-per-class", "2", "--out", "{nc_card}"], "nc_card"),
    "trilemma over the card of its DDGAN": (["trilemma", "--ddpm", "{ddpm}", "--ddgan", "{gan_exported}", "--n", "2",
                                             "--out", "{gan_exported_card}"], "gan_exported_card"),
}


@pytest.mark.parametrize("case", list(OVERWRITES))
def test_an_output_over_one_of_the_commands_inputs_is_refused_and_the_input_kept(case, models, capsys, monkeypatch):
    """--out naming an input file (or an input's JSON card) ends in one line before any work, and the input
    keeps its bytes. Catches: `export --checkpoint run/ckpt.pt --out run/ckpt.pt` replacing the training
    checkpoint by fp16 weights; `sample --out` a checkpoint replacing it by a tensor; `evaluate --out` the
    model's card, after which the model no longer loads (its sha256 is gone)."""
    paths = {k: str(v) for k, v in models.items()}
    paths.update({f"{k}_card": str(Path(paths[k]).with_suffix(".json")) for k in ("exported", "nc", "gan_exported")})
    argv, victim = OVERWRITES[case]
    argv = [a.format(**paths) for a in argv] + (["--device", "cpu"] if argv[0] not in ("export", "export-ddgan")
                                                 else [])
    before = Path(paths[victim]).read_bytes()
    for module in (cli_evaluate, guidance_eval, trilemma):
        monkeypatch.setattr(module, "load_sampling_model",
                            lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded before the check")))
    assert main(argv) == 1
    assert f"--out {paths[victim]} would overwrite" in one_error_line(capsys)
    assert Path(paths[victim]).read_bytes() == before


CARDS = {   # name → argv with {placeholders}; the flag whose value is a JSON card
    "sample --checkpoint": (["sample", "--checkpoint", "{exported_card}", "--out", "{tmp}/s.png"], "--checkpoint"),
    "sample --classifier": (["sample", "--checkpoint", "{ddpm}", "--label", "1", "--classifier", "{nc_card}",
                             "--out", "{tmp}/s.png"], "--classifier"),
    "export": (["export", "--checkpoint", "{exported_card}", "--out", "{tmp}/e.pt"], "--checkpoint"),
    "sample-ddgan": (["sample-ddgan", "--checkpoint", "{gan_exported_card}", "--out", "{tmp}/g.png"], "--checkpoint"),
    "export-ddgan": (["export-ddgan", "--checkpoint", "{gan_exported_card}", "--out", "{tmp}/g.pt"], "--checkpoint"),
    "evaluate --classifier": (["evaluate", "--checkpoint", "{ddpm}", "--classifier", "{clean_card}",
                               "--out", "{tmp}/r.json"], "--classifier"),
    "evaluate-guidance --fid-classifier": (["evaluate-guidance", "--checkpoint", "{ddpm}", "--classifier", "{nc}",
                                            "--scales", "1", "--fid-classifier", "{clean_card}",
                                            "--out", "{tmp}/g.json"], "--fid-classifier"),
    "trilemma --ddpm": (["trilemma", "--ddpm", "{exported_card}", "--ddgan", "{gan}", "--out", "{tmp}/t.json"],
                        "--ddpm"),
}


@pytest.mark.parametrize("case", list(CARDS))
def test_a_json_card_given_for_a_model_file_names_the_file_it_describes(case, models, tmp_path, capsys):
    """A model's JSON card passed where the model belongs is named as such, with the file to pass. Catches:
    'X.json does not match the sha256 in X.json: the file is damaged or was replaced' (the card compared with
    itself, blaming an intact file) and 'truncated, damaged or not a PyTorch file (Weights only load failed…)'."""
    paths = {k: str(v) for k, v in models.items()}
    paths.update({f"{k}_card": str(Path(paths[k]).with_suffix(".json")) for k in ("exported", "nc", "gan_exported")})
    paths.update(clean_card=str(SHIPPED_CLASSIFIER.with_suffix(".json")), tmp=str(tmp_path))
    argv, flag = CARDS[case]
    argv = [a.format(**paths) for a in argv]
    card = argv[argv.index(flag) + 1]
    assert main(argv) == 1
    assert one_error_line(capsys) == (f"error: {flag} {card} is a JSON card: pass the file it describes, "
                                      f"{Path(card).with_suffix('.pt')}")
    assert not list(tmp_path.iterdir())


def test_a_diffusion_checkpoint_as_the_guiding_classifier_is_named_the_wrong_kind(models, tmp_path, capsys):
    """Catches: 'ckpt_00000001.pt has no card ckpt_00000001.json to check its sha256 against', which sends the
    user looking for a card when the file is not a noisy classifier at all."""
    assert main(["sample", "--checkpoint", str(models["ddpm"]), "--label", "1", "--classifier", str(models["ckpt"]),
                 "--n", "2", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 1
    assert "ckpt_00000001.pt is a training checkpoint (diffusion runs: sample, evaluate, export; DDGAN runs: " \
           "sample-ddgan, export-ddgan), not a ddpm_lib noisy classifier" in one_error_line(capsys)


def test_trilemma_records_its_inputs_and_classifier_and_shows_each_rows_progress(models, tmp_path, capsys,
                                                                                 monkeypatch):
    """The table's JSON names the ε-model, the DDGAN and the FID-MNIST classifier with their sha256 (as
    ``evaluate`` does), and each row shows a bar over its samples and over the sampler's steps. Catches: a
    table whose FID-MNIST cannot be traced to the classifier that measured it; minutes of DDPM sampling with
    no sign of life."""
    monkeypatch.chdir(tmp_path)
    assert main(["trilemma", "--ddpm", str(models["ddpm"]), "--ddgan", str(models["gan_exported"]), "--ddim-steps",
                 "2", "--n", "4", "--batch-size", "2", "--device", "cpu", "--out", "t.json"]) == 0
    err = capsys.readouterr().err
    assert "DDPM (6 steps)" in err and "/4 [" in err.split("DDPM (6 steps)")[-1]       # a bar over the samples
    assert "DDPM sampling" in err and "DDIM sampling" in err
    table = json.loads((tmp_path / "t.json").read_text())

    def sha(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    assert table["ddpm_sha256"] == sha(models["ckpt"]) and table["ddpm"] == models["ckpt"].name
    assert table["ddgan_sha256"] == sha(models["gan_exported"])
    assert table["classifier_sha256"] == sha(SHIPPED_CLASSIFIER) and table["classifier"] == "mnist_classifier.pt"


def test_evaluate_guidance_shows_a_bar_over_each_batchs_steps(models, tmp_path, capsys):
    """A batch of 500 digits takes minutes on a CPU: like ``evaluate``, each batch shows the sampler's bar.
    Catches: a bar over the batches that sits at 0/2 for a quarter of an hour."""
    assert main(["evaluate-guidance", "--checkpoint", str(models["exported"]), "--classifier", str(models["nc"]),
                 "--scales", "0", "--n-per-class", "2", "--batch-size", "20", "--device", "cpu",
                 "--out", str(tmp_path / "g.json")]) == 0
    err = capsys.readouterr().err
    assert "DDPM sampling" in err and "/6 [" in err.split("DDPM sampling")[-1]          # a bar over the T = 6 steps


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--sample-batch", "0"), ("--iters", "0"),
                                         ("--warmup", "-1"), ("--ddim-steps", "0")])
def test_bench_names_the_flag_out_of_range(flag, value, capsys, monkeypatch):
    """Catches: 'batch sizes and iters must be at least 1, warmup at least 0', which names no flag."""
    monkeypatch.setattr(cli, "bench", lambda *a, **k: (_ for _ in ()).throw(ValueError("benchmark reached")))
    argv = ["bench", "--preset", "tiny", "--batch-size", "4", "--sample-batch", "4", "--iters", "2", "--warmup", "1",
            "--ddim-steps", "2", "--compile-backend", "eager", "--device", "cpu", flag, value]
    assert main(argv) == 1
    message = one_error_line(capsys)
    assert flag in message and "benchmark reached" not in message


def test_trilemma_refuses_a_batch_size_below_one_by_its_flag(models, tmp_path, capsys, monkeypatch):
    """Catches: 'batch_size must be at least 1, got 0' (no flag), raised only after both models are loaded."""
    monkeypatch.setattr(trilemma, "load_sampling_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded before the check")))
    assert main(["trilemma", "--ddpm", str(models["ddpm"]), "--ddgan", str(models["gan"]), "--n", "4",
                 "--batch-size", "0", "--device", "cpu", "--out", str(tmp_path / "t.json")]) == 1
    assert "--batch-size at least 1" in one_error_line(capsys)


def test_sigterm_ends_a_command_like_ctrl_c_with_one_line_and_status_130(tmp_path):
    """A scheduler's stop or `kill` (SIGTERM) during ``evaluate`` ends it as Ctrl-C does: status 130, one line
    saying the command stopped, no output file. Catches: the default SIGTERM, which killed the process with
    status 143 (-15 here) and no word, while the module's docstring promised 130."""
    import subprocess
    import sys
    script = ("import os, signal, time\n"
              "from ddpm_lib import cli\n"
              "def evaluate(args):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(30)\n"
              "cli.run_evaluate = evaluate\n"
              f"raise SystemExit(cli.main(['evaluate', '--checkpoint', 'x.pt', '--out', {str(tmp_path / 'r.json')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert done.stderr.strip() == "interrupted: evaluate stopped before finishing (it writes its output at the end)"
    assert not (tmp_path / "r.json").exists()

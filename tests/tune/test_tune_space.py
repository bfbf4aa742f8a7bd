"""The search-space file and the trial arithmetic, without Ray."""
import pytest

from hashgan_ray.cli import main
from hashgan_ray.config import TrainConfig
from hashgan_ray.tuning.search import default_space_path, read_space, trials_that_fit


def test_the_default_space_searches_margin_lr_and_alpha():
    space = read_space(default_space_path())
    assert space == {"margin": ("uniform", [0.5, 4.0]), "lr": ("loguniform", [1e-4, 3e-3]),
                     "alpha_scale": ("uniform", [0.5, 2.0])}


def test_numbers_without_a_dot_and_choices_are_read(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {loguniform: [1e-4, 3e-3]}\nbits: {choice: [16, 32]}\n")
    assert read_space(path) == {"lr": ("loguniform", [1e-4, 3e-3]), "bits": ("choice", [16, 32])}


@pytest.mark.parametrize("text, key, message", [
    ("margn: {uniform: [1, 2]}", "margn", "not a training option"),
    ("epochs: {choice: [1, 2]}", "epochs", "set by the search's own options"),
    ("margin: [1, 2]", "margin", "expected {uniform: [low, high]}"),
    ("margin: {normal: [1, 2]}", "margin", "expected {uniform: [low, high]}"),
    ("margin: {uniform: [2, 1]}", "margin", "low < high"),
    ("margin: {uniform: [a, 1]}", "margin", "two numbers"),
    ("margin: {uniform: [1]}", "margin", "two numbers"),
    ("lr: {loguniform: [0, 1.0e-3]}", "lr", "0 < low < high"),
    ("bits: {uniform: [8, 64]}", "bits", "list them with choice"),
    ("bits: {choice: [16, 12]}", "bits", "choice 12 is not a valid value"),
    ("backbone: {choice: []}", "backbone", "non-empty list"),
])
def test_a_bad_entry_names_the_file_and_the_key(tmp_path, text, key, message):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {loguniform: [1.0e-4, 3.0e-3]}\n" + text + "\n")
    with pytest.raises(ValueError) as e:
        read_space(path)
    assert str(e.value).startswith(f"{path}: {key}: ") and message in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("margin: {uniform: [1, 2]\n", "not valid YAML"),
    ("", "expected training options mapped to distributions"),
    ("- margin\n", "expected training options mapped to distributions"),
])
def test_a_file_that_is_no_space_is_refused(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_space(path)


def test_the_cli_refuses_a_bad_space_before_starting_ray(synth_data, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("margin: {uniform: [4, 0.5]}\n")
    assert main(["tune", "--data", str(synth_data), "--out", str(tmp_path / "out"),
                 "--samples", "2", "--epochs", "1", "--space", str(path)]) == 2
    assert f"{path}: margin: uniform needs low < high" in capsys.readouterr().err
    assert main(["tune", "--data", str(synth_data), "--out", str(tmp_path / "out"), "--samples",
                 "2", "--space", str(tmp_path / "missing.yaml")]) == 2
    assert "no search-space file at" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers, cpus, gpus, cluster, fits", [
    (1, 1.0, 0.0, {"CPU": 2}, 1),          # the 2-core machine: one trial at a time
    (1, 1.0, 0.0, {"CPU": 1}, 1),          # never 0
    (1, 1.0, 0.0, {"CPU": 8}, 6),          # 1 CPU for Ray Data, 1.01 per trial
    (2, 1.0, 1.0, {"CPU": 16, "GPU": 4}, 2),
    (1, 1.0, 0.5, {"CPU": 16, "GPU": 1}, 2),
])
def test_concurrent_trials_follow_the_cluster(workers, cpus, gpus, cluster, fits):
    cfg = TrainConfig(workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)
    assert trials_that_fit(cfg, cluster) == fits

import subprocess
import sys

from hashgan_ray.cli import main
from hashgan_ray.data.format import read_meta


def test_synth_then_info(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), "--pairs", "50", "--seed", "2",
                 "--query", "5", "--train", "20"]) == 0
    assert read_meta(out).counts == {"query": 5, "train": 20, "database": 25, "total": 50}
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pairs: 50 = query 5 + train 20 + database 25" in text
    assert "retrieval database = train + database = 45" in text
    assert main(["data", "synth", "--out", str(tmp_path / "clutter"), "--pairs", "30",
                 "--clutter"]) == 0
    assert read_meta(tmp_path / "clutter").extra["synth"]["clutter"] is True
    assert (tmp_path / "clutter" / "oracle.parquet").is_file()


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "meta.json: missing" in capsys.readouterr().err
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), "--pairs", "10"]) == 0
    assert main(["data", "synth", "--out", str(out), "--pairs", "10"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--pairs", "10",
                 "--query", "8", "--train", "8"]) == 2
    assert not (tmp_path / "x").exists()


def test_console_script_and_module_entry_point():
    exe = [sys.executable, "-m", "hashgan_ray"]
    for sub in (["--help"], ["data", "convert", "--help"]):
        done = subprocess.run(exe + sub, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in ("nuswide", "mirflickr", "iapr", "dcmh-mat"))

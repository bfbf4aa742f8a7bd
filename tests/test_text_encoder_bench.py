"""benchmarks/text_encoder_bench.py runs, and the two text paths it times agree."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "text_encoder_bench.py"


def test_text_encoder_bench_times_both_paths_and_their_codes_agree():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] != []
            and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 4, 8, 16, 32]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert all(r[4] == "True" for r in rows), proc.stdout        # same codes on both paths

"""benchmarks/gpu_check.py in its CPU fallback, as the lent GPU machine would run
it: without Ray, FAISS or the other packages that machine lacks."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
# Installed here, absent on the lent GPU machine (torch, torchvision, numpy,
# pyarrow and pillow only): importing any of them fails as if not installed.
ABSENT = ("ray", "faiss", "scipy", "h5py", "matplotlib", "tqdm", "httpx", "psutil")

# A None entry in sys.modules is how Python marks a module as not importable:
# `import ray` raises ModuleNotFoundError and importlib.util.find_spec says None.
RUN_WITHOUT = f"""
import runpy, sys
for name in {ABSENT!r}:
    sys.modules[name] = None
sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""


def test_gpu_check_runs_without_ray_and_falls_back_to_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-c", RUN_WITHOUT, "--cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPU FALLBACK" in proc.stdout
    result = json.loads(out.read_text())

    assert result["device"]["type"] == "cpu" and result["device"]["fallback_to_cpu"]
    assert result["imports_ray"] is False
    for key in ("train_bf16", "train_fp32", "forward_bf16", "forward_fp32"):
        assert result["vgg19"][key]["per_s"] > 0
    for backbone in ("small", "vgg19"):
        assert result["hashgan_train"][backbone]["per_s"] > 0
        assert result["hashgan_train"][backbone]["steps"] >= 1
        for precision in ("fp32", "bf16"):
            assert result["encode"][backbone][precision]["per_s"] > 0

    equality = result["equality"]
    assert equality["passed"] and equality["tolerance"] > 0
    assert {(c["backbone"], c["attention"]) for c in equality["cases"]} == {
        (b, a) for b in ("small", "vgg19") for a in ("fresh", "random")}
    for case in equality["cases"]:
        for modality in ("image", "text"):
            row = case[modality]
            assert row["max_abs_diff"] <= equality["tolerance"]
            assert row["bits_total"] == case["pairs"] * result["sizes"]["bits"]
            assert row["bits_differ_not_near_zero"] == 0

"""Exact binary search on the GPU (hashgan_ray/index/gpu.py) against FAISS's CPU index:
equal results, ties included, and the time of each, as ratios to the CPU in this run.

    python benchmarks/faiss_gpu_check.py [--n 1000000] [--queries 1000] [--bits 16 32 64]

Needs FAISS with GPU support (pip install 'hashgan-ray[gpu]', docs/install.md) and a
visible GPU; exits with status 2 saying so otherwise. Codes are uniform random, so
ties at the k-th distance are many at 16 bits and few at 64.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hashgan_ray.index import gpu  # noqa: E402


def timed(fn, repeats: int = 3):
    """(result, best seconds of `repeats` calls after one warm-up)."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database codes")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    if gpu.visible_gpus() == 0:
        print("needs FAISS with GPU support and a visible GPU "
              f"(installed: {gpu.installed_faiss()}, GPU build: {gpu.faiss_gpu_build()})")
        return 2
    import faiss

    print(f"FAISS {faiss.__version__}, {gpu.visible_gpus()} GPU(s); n={args.n:,}, "
          f"{args.queries} queries; best of 3 after a warm-up")
    print(f"{'bits':>4} {'k':>5} {'CPU s':>9} {'GPU s':>9} {'GPU/CPU':>8}  equal")
    rng = np.random.default_rng(0)
    for bits in args.bits:
        db = rng.integers(0, 256, (args.n, bits // 8), dtype=np.uint8)
        queries = rng.integers(0, 256, (args.queries, bits // 8), dtype=np.uint8)
        cpu = gpu.flat_index(db)
        on_gpu = gpu.exact_index(cpu, gpu=True)
        assert isinstance(on_gpu, gpu.GpuExactBinaryIndex)
        for k in args.k:
            (D, I), cpu_s = timed(lambda: cpu.search(queries, k))
            (gD, gI), gpu_s = timed(lambda: on_gpu.search(queries, k))
            equal = np.array_equal(D, gD) and np.array_equal(I, gI)
            print(f"{bits:>4} {k:>5} {cpu_s:>9.4f} {gpu_s:>9.4f} {gpu_s / cpu_s:>8.3f}  {equal}")
            if not equal:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The service's text encoder per query batch: transposed weights (addmm) against nn.Linear.

    .venv/bin/python benchmarks/text_encoder_bench.py [--repeats 200]

The paper's text network (1,000-word bag -> 8192 -> 1000 -> 64 bits, untrained
weights: speed does not depend on them), 1 torch thread like the service's
replica. For search batches of 1-32 queries of 3-11 words it times
`WordListEncoder` (embedding bag, then the later layers as x @ W^T with W^T
stored row-major) against the same embedding bag followed by the model's own
layers (`nn.Linear`, weights (out, in)), both in this run, best of 3 rounds of
CPU time; and checks that both give the same codes.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def cpu_ms(fn, repeats: int) -> float:
    """Best of 3 rounds, CPU milliseconds per call."""
    for _ in range(5):
        fn()
    rounds = []
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(repeats):
            fn()
        rounds.append((time.process_time() - t0) / repeats * 1000)
    return min(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    from hashgan_ray.model.hashgan import HashGAN, WordListEncoder, pack_codes

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = HashGAN(bits=64, vocab_size=1000).eval()
    encoder = WordListEncoder(model)

    @torch.no_grad()
    def with_linear(words):                 # the same bag, then the model's nn.Linear layers
        return model.hash_text_feats(model.net.text_net[1:](encoder.bag(words)))

    rng = np.random.default_rng(1)
    print(f"text encoder, 1 torch thread, CPU ms per batch (best of 3 x {args.repeats})")
    print(f"{'queries':>8} {'nn.Linear':>10} {'addmm W^T':>10} {'ratio':>6}  codes equal")
    for n in (1, 2, 4, 8, 16, 32):
        words = [rng.choice(1000, rng.integers(3, 12), replace=False) for _ in range(n)]
        base, new = cpu_ms(lambda: with_linear(words), args.repeats), cpu_ms(
            lambda: encoder(words), args.repeats)
        same = (pack_codes(encoder(words)) == pack_codes(with_linear(words))).all()
        print(f"{n:8d} {base:10.3f} {new:10.3f} {new / base:6.2f}  {bool(same)}")


if __name__ == "__main__":
    main()

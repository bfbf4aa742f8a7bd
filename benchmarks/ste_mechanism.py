"""Do the attention masks ratchet down under G's gradient ascent? Identity vs saturating STE.

    .venv/bin/python benchmarks/ste_mechanism.py [--pairs 3000] [--warmup-epochs 2] \
        [--g-steps 60] [--alpha-scale 0.75] [--seed 0] [--clutter] [--threads 2]

The mechanism of issue 15, measured as the review described it: HashGAN
(attention both, the demo's training options at 16 bits) trains --warmup-epochs
on the synthetic default, with the identity estimator; then E and D are frozen
(BatchNorm in eval mode)
and only G steps run (eq. 9: gradient ascent of the adversarial loss), from
that one warmed-up model, once with each estimator (hashgan_ray/model/attention.py).
Every 15 G steps it prints the attended share of text features and image
positions over the batch and the mean adversarial loss of those steps. If G's
ascent works, the loss rises; the identity estimator can instead lower every
other P while raising an attended one, masking more and more without a larger
loss. One seed, one run: a mechanism, not a result.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hashgan_ray.config import (
    STE,  # noqa: E402
    TrainConfig,  # noqa: E402
)
from hashgan_ray.data.synth import SynthConfig, generate  # noqa: E402
from hashgan_ray.train.local import load_split, train_in_memory  # noqa: E402
from hashgan_ray.train.methods.hashgan import g_step  # noqa: E402

EVERY = 15


def attended(model, batch) -> tuple[float, float]:
    """(share of text features, share of image positions) attended over the batch."""
    with torch.no_grad():
        maps = model.net.image_maps(batch["image"])
        z_img, z_txt = model.attention(maps, model.net.text_feats(batch["text"]))
    return float(z_txt.mean()), float(z_img.mean())


def g_only(model, cfg: TrainConfig, train: dict, steps: int, ste: str) -> list[tuple]:
    """`steps` G steps on shuffled batches with E and D fixed; a row every EVERY steps."""
    model = copy.deepcopy(model)
    for module in (model.attention.image, model.attention.text):
        module.ste = ste
    optimizer = torch.optim.Adam(model.attention.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    tensors = {k: torch.as_tensor(v) for k, v in train.items()}
    order = torch.randperm(len(tensors["id"]), generator=torch.Generator().manual_seed(cfg.seed))
    batches = [order[s:s + cfg.batch_size]
               for s in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    rows, losses = [(0, *attended(model, {k: v[batches[0]] for k, v in tensors.items()}), None)], []
    for step in range(1, steps + 1):
        batch = {k: v[batches[(step - 1) % len(batches)]] for k, v in tensors.items()}
        losses.append(g_step(model, model.attention, batch, optimizer, cfg.margin,
                             mining=cfg.mining)["g_adversarial"])
        if step % EVERY == 0:
            rows.append((step, *attended(model, batch), sum(losses) / len(losses)))
            losses = []
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--g-steps", type=int, default=60)
    parser.add_argument("--alpha-scale", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clutter", action="store_true", help="the clutter benchmark")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, pairs=args.pairs, seed=0, cfg=SynthConfig(clutter=args.clutter))
        cfg = TrainConfig(data=str(data), epochs=args.warmup_epochs, seed=args.seed, bits=16,
                          attention="both", alpha_scale=args.alpha_scale, text_hidden=1024,
                          text_features=512, lr=1e-3, batch_size=64)
        train = load_split(str(data), "train")
        model = train_in_memory(cfg, train=train)
        print(f"{'clutter' if args.clutter else 'default'} benchmark, {args.pairs} pairs; "
              f"{args.warmup_epochs} warm-up epochs (identity), α × {args.alpha_scale}, then "
              f"{args.g_steps} G steps with E/D fixed; seed {args.seed}")
        print("\n| estimator | G steps | attended text features | attended image positions "
              f"| adversarial loss (mean of the last {EVERY} steps) |")
        print("|---|---|---|---|---|")
        for ste in STE:
            for step, text, image, loss in g_only(model, cfg, train, args.g_steps, ste):
                print(f"| {ste} | {step} | {text:.0%} | {image:.0%} | "
                      f"{'–' if loss is None else f'{loss:.3f}'} |", flush=True)


if __name__ == "__main__":
    main()

"""One-GPU check of the plain-PyTorch core: speed on the GPU and equality to the CPU.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --json gpu_check.json

Needs only PyTorch, torchvision, NumPy (and pyarrow/pillow, which the
repository's own modules import); no Ray, no data set, nothing downloaded.
Inputs are random; speed does not depend on them or on the weights.

Measures, on one GPU (about 2-3 minutes on an H100):
  * VGG19 at 224x224: training step (forward+backward+SGD) and forward
    throughput, images/s, in bf16 autocast against fp32 in the same run;
  * HashGAN training steps (hashgan_ray.train.methods.hashgan.HashGANTrainer, its 4:1
    E/D:G schedule, bf16 autocast as in training), samples/s, with the `small`
    backbone at 64 px and with vgg19 at 224 px; the vgg19 figure against the
    bare VGG19 bf16 step (the cost of HashGAN's two players on top);
  * encoding (hashgan_ray.model.encode.encode_arrays, fp32, host arrays in and
    packed codes out, as the index build does), pairs/s, and the same under bf16;
  * equality: the same weights and inputs encoded on the CPU and on the GPU
    in fp32 (TF32 off): max |tanh output difference| and packed bits that differ.

Without CUDA it falls back to the CPU with tiny sizes and says so: the figures
then check that the script runs, not how fast anything is.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from hashgan_ray.config import TrainConfig  # noqa: E402
from hashgan_ray.model.encode import encode_arrays  # noqa: E402
from hashgan_ray.model.hashgan import HashGAN, pack_codes  # noqa: E402
from hashgan_ray.data.format import DatasetMeta  # noqa: E402
from hashgan_ray.train.methods import build_trainer  # noqa: E402
from hashgan_ray.train.steps import autocast  # noqa: E402

# Equality tolerance on tanh outputs (fp32, TF32 off on both sides). CPU and GPU
# sum in different orders: fp32 rounds at 2^-24 ~ 6e-8 relative, and a dot
# product of K terms (K up to 25,088 in VGG19's fc6) drifts by about
# sqrt(K) * 6e-8 ~ 1e-5 of its scale; tanh' <= 1 carries that to the code.
# 1e-4 leaves 10x room, while a real fault (a wrong kernel, an attention
# mask position that flips) moves codes by 1e-2 or more.
TOLERANCE = 1e-4

SIZES = {   # per mode: what runs in about 3 minutes on an H100 / seconds on a laptop CPU
    "cuda": dict(vgg_size=224, vgg_batch=64, vgg_encode_batch=256, small_size=64,
                 train_batch=64, encode_batch=256, equality_batch=8, vocab=1000, labels=21,
                 bits=64, text_hidden=8192, text_features=1000, warmup=3, min_steps=10,
                 min_seconds=5.0),
    "cpu": dict(vgg_size=32, vgg_batch=2, vgg_encode_batch=2, small_size=32, train_batch=8,
                encode_batch=8, equality_batch=4, vocab=200, labels=21, bits=16,
                text_hidden=256, text_features=64, warmup=1, min_steps=1, min_seconds=0.0),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step, items_per_step: int, device: torch.device, s: dict) -> dict:
    """Runs `step()` `warmup` times, then at least `min_steps` times and
    `min_seconds`; items/s of the timed steps and the peak GPU memory."""
    for _ in range(s["warmup"]):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, started = 0, time.perf_counter()
    while steps < s["min_steps"] or time.perf_counter() - started < s["min_seconds"]:
        step()
        steps += 1
        if steps % 5 == 0:
            sync(device)
    sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"per_s": items_per_step * steps / seconds, "batch": items_per_step, "steps": steps,
            "seconds": round(seconds, 3), "peak_gpu_gib": peak}


def random_pairs(n: int, s: dict, size: int, seed: int) -> dict[str, np.ndarray]:
    """Decoded-batch arrays (hashgan_ray.data.loading.decode_batch's shapes):
    uint8 images, word counts of 5-20 words, 1-3 of the labels per pair."""
    rng = np.random.default_rng(seed)
    text = np.zeros((n, s["vocab"]), dtype=np.float32)
    labels = np.zeros((n, s["labels"]), dtype=np.float32)
    for i in range(n):
        np.add.at(text[i], rng.integers(0, s["vocab"], rng.integers(5, 21)), 1.0)
        labels[i, rng.choice(s["labels"], rng.integers(1, 4), replace=False)] = 1.0
    return {"image": rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
            "text": text, "labels": labels}


def build_hashgan(backbone: str, size: int, s: dict, seed: int = 0) -> HashGAN:
    torch.manual_seed(seed)
    return HashGAN(bits=s["bits"], vocab_size=s["vocab"], backbone=backbone, image_size=size,
                   text_hidden=s["text_hidden"], text_features=s["text_features"])


# -- VGG19 alone ----------------------------------------------------------------------

def vgg19_rates(device: torch.device, s: dict) -> dict:
    """Training step and forward of torchvision's VGG19, bf16 autocast and fp32."""
    torch.manual_seed(0)
    model = torchvision.models.vgg19(weights=None).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    size, batch = s["vgg_size"], s["vgg_batch"]
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    x_encode = torch.randn(s["vgg_encode_batch"], 3, size, size, device=device)
    out = {}
    for precision in ("bf16", "fp32"):
        enabled = precision == "bf16" and device.type == "cuda"   # CPU fallback: fp32 only

        def train_step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
                loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def forward():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
                model(x_encode)

        model.train()
        out[f"train_{precision}"] = {**rate(train_step, batch, device, s), "autocast": enabled}
        model.eval()
        out[f"forward_{precision}"] = {**rate(forward, s["vgg_encode_batch"], device, s),
                                       "autocast": enabled}
    return out


# -- HashGAN --------------------------------------------------------------------------

def hashgan_train_rate(device: torch.device, backbone: str, size: int, s: dict) -> dict:
    """samples/s of HashGANTrainer.step (E/D step, and a G step every 4th batch)."""
    model = build_hashgan(backbone, size, s).to(device).train()
    cfg = TrainConfig(bits=s["bits"], backbone=backbone, image_size=size,
                      text_hidden=s["text_hidden"], text_features=s["text_features"],
                      batch_size=s["train_batch"])
    meta = DatasetMeta(name="random", source="synthetic", vocabulary=[""] * s["vocab"],
                       label_names=[str(i) for i in range(s["labels"])], image_size=size, seed=0,
                       counts={})
    trainer = build_trainer(cfg, model, meta=meta)      # meta: the label head's label count
    batches = []
    for seed in range(4):      # 4 batches: one full E/D:G cycle (d_steps=4)
        arrays = random_pairs(s["train_batch"], s, size, seed)
        batches.append({k: torch.as_tensor(v, device=device) for k, v in arrays.items()})
    counter = iter(range(10**9))

    def step():
        i = next(counter)
        trainer.step(i, batches[i % len(batches)])

    return rate(step, s["train_batch"], device, s)


def encode_rate(device: torch.device, backbone: str, size: int, s: dict) -> dict:
    """pairs/s of encode_arrays (host uint8 images and counts -> packed codes),
    fp32 as the index build runs it, and under bf16 autocast."""
    model = build_hashgan(backbone, size, s).to(device).eval()
    arrays = random_pairs(s["encode_batch"], s, size, seed=0)
    out = {}
    for precision in ("fp32", "bf16"):
        enabled = precision == "bf16" and device.type == "cuda"   # CPU fallback: fp32 only

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
                encode_arrays(model, arrays["image"], arrays["text"], device)

        out[precision] = {**rate(step, s["encode_batch"], device, s), "autocast": enabled}
    return out


# -- equality to the CPU --------------------------------------------------------------

@torch.no_grad()
def tanh_outputs(model: HashGAN, arrays: dict, device: torch.device, one_at_a_time: bool):
    model = model.to(device).eval()
    image = torch.as_tensor(arrays["image"], device=device)
    text = torch.as_tensor(arrays["text"], device=device)
    if one_at_a_time:
        parts = [(model.encode_image(image[i:i + 1]), model.encode_text(text[i:i + 1]))
                 for i in range(len(image))]
        img, txt = (torch.cat(p) for p in zip(*parts))
    else:
        img, txt = model.encode_image(image), model.encode_text(text)
    return img.float().cpu(), txt.float().cpu()


def compare(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Max |difference|, packed bits that differ, and those of them not explained
    by rounding (a bit may flip only where the reference is within TOLERANCE of 0)."""
    ref_bits = np.unpackbits(pack_codes(reference), axis=1)
    other_bits = np.unpackbits(pack_codes(other), axis=1)
    differ = ref_bits != other_bits
    near_zero = reference.abs().numpy() <= TOLERANCE
    return {"max_abs_diff": float((reference - other).abs().max()),
            "bits_differ": int(differ.sum()), "bits_total": int(differ.size),
            "bits_differ_not_near_zero": int((differ & ~near_zero).sum())}


def equality(device: torch.device, s: dict) -> dict:
    """The same weights and input encoded in fp32 on the CPU (all at once) and on
    `device` (on the CPU fallback: one pair at a time, other kernels and shapes).

    Two attention states: `fresh` (G's scores start at zero, so every
    probability equals the threshold α exactly and the mask is all ones only if
    both sides round 1/(H·W) alike) and `random` (random scores: masks with
    holes, as a trained G makes)."""
    cases = []
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for backbone, size in (("small", s["small_size"]), ("vgg19", s["vgg_size"])):
            arrays = random_pairs(s["equality_batch"], s, size, seed=1)
            for attention in ("fresh", "random"):
                model = build_hashgan(backbone, size, s, seed=1)
                if attention == "random":
                    torch.manual_seed(2)
                    for p in model.attention.parameters():
                        nn.init.normal_(p, 0.0, 0.05)
                ref = tanh_outputs(model, arrays, torch.device("cpu"), one_at_a_time=False)
                other = tanh_outputs(copy.deepcopy(model), arrays, device,
                                     one_at_a_time=device.type == "cpu")
                row = {"backbone": backbone, "image_size": size, "attention": attention,
                       "pairs": s["equality_batch"]}
                for name, r, o in (("image", ref[0], other[0]), ("text", ref[1], other[1])):
                    row[name] = compare(r, o)
                if device.type == "cuda":   # information: what bf16 autocast changes
                    with autocast(device):
                        bf16 = tanh_outputs(copy.deepcopy(model), arrays, device, False)
                    row["bf16_vs_cpu_fp32"] = {"image": compare(ref[0], bf16[0]),
                                               "text": compare(ref[1], bf16[1])}
                row["passed"] = all(row[m]["max_abs_diff"] <= TOLERANCE
                                    and row[m]["bits_differ_not_near_zero"] == 0
                                    for m in ("image", "text"))
                cases.append(row)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {"tolerance": TOLERANCE, "reference": "cpu fp32, whole batch",
            "compared": ("cuda fp32, TF32 off" if device.type == "cuda"
                         else "cpu fp32, one pair at a time (CPU fallback)"),
            "cases": cases, "passed": all(c["passed"] for c in cases)}


# -- report ---------------------------------------------------------------------------

def device_info(device: torch.device, fallback_reason: str | None) -> dict:
    info = {"type": device.type, "fallback_to_cpu": device.type == "cpu",
            "fallback_reason": fallback_reason, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "cpu_threads": torch.get_num_threads(),
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def table(results: dict) -> str:
    v, t, e = results["vgg19"], results["hashgan_train"], results["encode"]
    s = results["sizes"]
    rows = [
        (f"VGG19 {s['vgg_size']}px train step bf16", v["train_bf16"], "images/s",
         f"{v['train_bf16']['per_s'] / v['train_fp32']['per_s']:.2f}x fp32"),
        (f"VGG19 {s['vgg_size']}px train step fp32", v["train_fp32"], "images/s", "baseline"),
        (f"VGG19 {s['vgg_size']}px forward bf16", v["forward_bf16"], "images/s",
         f"{v['forward_bf16']['per_s'] / v['forward_fp32']['per_s']:.2f}x fp32"),
        (f"VGG19 {s['vgg_size']}px forward fp32", v["forward_fp32"], "images/s", "baseline"),
        (f"HashGAN train small {s['small_size']}px", t["small"], "samples/s", ""),
        (f"HashGAN train vgg19 {s['vgg_size']}px", t["vgg19"], "samples/s",
         f"{t['vgg19']['per_s'] / v['train_bf16']['per_s']:.2f}x VGG19 bf16 step"),
        (f"encode small {s['small_size']}px fp32", e["small"]["fp32"], "pairs/s", "baseline"),
        (f"encode small {s['small_size']}px bf16", e["small"]["bf16"], "pairs/s",
         f"{e['small']['bf16']['per_s'] / e['small']['fp32']['per_s']:.2f}x fp32"),
        (f"encode vgg19 {s['vgg_size']}px fp32", e["vgg19"]["fp32"], "pairs/s", "baseline"),
        (f"encode vgg19 {s['vgg_size']}px bf16", e["vgg19"]["bf16"], "pairs/s",
         f"{e['vgg19']['bf16']['per_s'] / e['vgg19']['fp32']['per_s']:.2f}x fp32"),
    ]
    lines = ["fp32 = torch's defaults (cuDNN TF32 on, matmul TF32 off); bf16 = autocast (GPU "
             "only: on the CPU fallback the bf16 rows run fp32); HashGAN training autocasts "
             "as training does",
             f"{'measurement':36s} {'rate':>10s} {'unit':9s} {'batch':>5s} {'steps':>5s} "
             f"{'peak GiB':>8s}  vs"]
    for name, r, unit, vs in rows:
        peak = f"{r['peak_gpu_gib']:8.2f}" if r["peak_gpu_gib"] is not None else f"{'-':>8s}"
        lines.append(f"{name:36s} {r['per_s']:10.1f} {unit:9s} {r['batch']:5d} {r['steps']:5d} "
                     f"{peak}  {vs}")
    eq = results["equality"]
    lines.append(f"\nequality: {eq['compared']} vs {eq['reference']}, tolerance {eq['tolerance']:g} "
                 "on tanh outputs; a bit may differ only where |reference| <= tolerance")
    for c in eq["cases"]:
        parts = [f"{m} max|diff| {c[m]['max_abs_diff']:.2e}, bits differ {c[m]['bits_differ']}"
                 f"/{c[m]['bits_total']} ({c[m]['bits_differ_not_near_zero']} not near 0)"
                 for m in ("image", "text")]
        lines.append(f"  {c['backbone']:6s} {c['image_size']:3d}px attention {c['attention']:6s} "
                     f"{'PASS' if c['passed'] else 'FAIL'}: " + "; ".join(parts))
        if "bf16_vs_cpu_fp32" in c:
            b = c["bf16_vs_cpu_fp32"]
            lines.append(f"    (bf16 autocast vs cpu fp32, not a pass criterion: image max|diff| "
                         f"{b['image']['max_abs_diff']:.2e}, bits differ {b['image']['bits_differ']}; "
                         f"text {b['text']['max_abs_diff']:.2e}, {b['text']['bits_differ']})")
    lines.append(f"equality {'PASSED' if eq['passed'] else 'FAILED'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results (JSON)")
    parser.add_argument("--cpu", action="store_true", help="use the CPU fallback even with CUDA")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.cpu or not torch.cuda.is_available():
        reason = "--cpu given" if args.cpu else "CUDA is not available"
        device, mode = torch.device("cpu"), "cpu"
        print(f"*** NO GPU: {reason}. CPU FALLBACK with tiny sizes: the figures below only "
              "show that the script runs; they say nothing about GPU speed. ***", flush=True)
    else:
        reason, device, mode = None, torch.device("cuda", 0), "cuda"
    s = SIZES[mode]
    results = {"device": device_info(device, reason), "sizes": s}
    print(json.dumps(results["device"]), flush=True)

    print("VGG19 ...", flush=True)
    results["vgg19"] = vgg19_rates(device, s)
    print("HashGAN training ...", flush=True)
    results["hashgan_train"] = {
        "small": hashgan_train_rate(device, "small", s["small_size"], s),
        "vgg19": hashgan_train_rate(device, "vgg19", s["vgg_size"], s)}
    print("encoding ...", flush=True)
    results["encode"] = {"small": encode_rate(device, "small", s["small_size"], s),
                         "vgg19": encode_rate(device, "vgg19", s["vgg_size"], s)}
    print("equality to the CPU ...", flush=True)
    results["equality"] = equality(device, s)
    results["imports_ray"] = sys.modules.get("ray") is not None
    results["total_seconds"] = round(time.perf_counter() - started, 1)

    print()
    print(table(results))
    print(f"total {results['total_seconds']:.0f} s on {results['device']['name']}"
          + (" (CPU FALLBACK, tiny sizes)" if device.type == "cpu" else ""))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)
    print(f"results written to {path}")
    return 0 if results["equality"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""HashGAN's triplets over the global batch under DDP (steps.gathered): two gloo
workers with half a batch each take exactly the step one process takes on the
whole batch. No Ray: torch.distributed on this machine's loopback."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from hashgan_ray.data.loading import iter_batches
from hashgan_ray.model.hashgan import HashGAN
from hashgan_ray.train.loop import gather_for
from hashgan_ray.train.methods.hashgan import ed_step, g_step
from hashgan_ray.train.methods.schgan import labelled_loss
from hashgan_ray.train.steps import LabelHead, build_optimizers

OBJECTIVE = dict(margin=1.0, balance=1.0)


def model_for(vocab: int) -> HashGAN:
    torch.manual_seed(0)
    model = HashGAN(bits=16, vocab_size=vocab, text_hidden=32, text_features=16)
    # eval(): BatchNorm from its running statistics, the same for half and whole batches
    return model.eval()


def step_grads(model, net, attention, batch, gather, wrap=lambda m: m) -> dict[str, torch.Tensor]:
    opt_ed, opt_g = build_optimizers(model, 1e-3, (0.5, 0.999))
    head = LabelHead(model.bits, batch["labels"].shape[1], 1.0, opt_ed, wrap, "cpu")
    ed_step(model, net, batch, opt_ed, mining="all", gather=gather, label_head=head, **OBJECTIVE)
    grads = {f"net.{k}": p.grad.clone() for k, p in model.net.named_parameters()}
    grads.update({f"label_head.{k}": p.grad.clone() for k, p in head.layer.named_parameters()})
    g_step(model, attention, batch, opt_g, 1.0, gather=gather)
    grads.update({f"attention.{k}": p.grad.clone() for k, p in model.attention.named_parameters()})
    return grads


def worker(rank: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        saved = torch.load(path, weights_only=True)
        half = {k: v.chunk(2)[rank] for k, v in saved["batch"].items()}
        model = model_for(saved["vocab"])
        net = torch.nn.parallel.DistributedDataParallel(model.net)
        attention = torch.nn.parallel.DistributedDataParallel(model.attention)
        grads = step_grads(model, net, attention, half, gather_for(2),
                           wrap=torch.nn.parallel.DistributedDataParallel)
        if rank == 0:
            torch.save(grads, path + ".ddp")
    finally:
        dist.destroy_process_group()


def test_two_workers_with_gather_take_the_one_process_step(synth_data, tmp_path):
    # (Without the gather, the same workers' step differs from the first layer on.)
    raw = next(iter_batches(synth_data, "train", 16))
    batch = {k: torch.as_tensor(v) for k, v in raw.items()}
    vocab = batch["text"].shape[1]
    path = str(tmp_path / "batch.pt")
    torch.save({"batch": batch, "vocab": vocab}, path)

    model = model_for(vocab)
    whole = step_grads(model, model.net, model.attention, batch, gather=None)
    mp.spawn(worker, args=(free_port(), path), nprocs=2, join=True)
    ddp = torch.load(path + ".ddp", weights_only=True)

    assert set(ddp) == set(whole) and any(k.startswith("attention.") for k in whole)
    assert any(k.startswith("label_head.") for k in whole)            # the label term too
    for name, g in whole.items():
        assert torch.allclose(ddp[name], g, rtol=1e-4, atol=1e-6), name


def test_one_worker_gathers_nothing():
    assert gather_for(1) is None


def schgan_worker(rank: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        saved = torch.load(path, weights_only=True)
        half = {k: v.chunk(2)[rank] for k, v in saved.items()}
        img, txt = half["img"].clone().requires_grad_(), half["txt"].clone().requires_grad_()
        loss = labelled_loss(img, txt, half, 1.0, "all", 0.0, 1.0, gather_for(2),
                             label_head=plain_head())["full"]
        loss.backward()
        # DDP averages parameter gradients over the 2 ranks: halve to compare rows.
        torch.save({"loss": loss.detach(), "img": img.grad / 2, "txt": txt.grad / 2},
                   f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def plain_head() -> LabelHead:
    """The label term's head for 8 bits and 5 labels, unwrapped: with the codes
    gathered, every rank computes the same term (its start is seeded)."""
    return LabelHead(8, 5, 1.0, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0),
                     lambda module: module, "cpu")


def test_schgan_labelled_term_is_mined_over_both_workers(tmp_path):
    gen = torch.Generator().manual_seed(0)
    batch = {"img": torch.randn(12, 8, generator=gen).tanh(),
             "txt": torch.randn(12, 8, generator=gen).tanh(),
             "labels": (torch.rand(12, 5, generator=gen) > 0.6).to(torch.uint8),
             "labeled": torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)}
    path = str(tmp_path / "batch.pt")
    torch.save(batch, path)

    img, txt = batch["img"].clone().requires_grad_(), batch["txt"].clone().requires_grad_()
    whole = labelled_loss(img, txt, batch, 1.0, "all", 0.0, 1.0, label_head=plain_head())["full"]
    whole.backward()
    mp.spawn(schgan_worker, args=(free_port(), path), nprocs=2, join=True)
    ranks = [torch.load(f"{path}.{r}", weights_only=True) for r in range(2)]

    assert whole > 0
    for rank, part in enumerate(ranks):
        assert torch.allclose(part["loss"], whole.detach())
        assert torch.allclose(part["img"], img.grad.chunk(2)[rank], atol=1e-7)
        assert torch.allclose(part["txt"], txt.grad.chunk(2)[rank], atol=1e-7)

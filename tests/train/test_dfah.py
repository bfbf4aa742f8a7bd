import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashgan_ray.config import TrainConfig
from hashgan_ray.data.loading import iter_batches
from hashgan_ray.evaluation.metrics import mean_average_precision
from hashgan_ray.model.hashgan import HashGAN, pack_codes
from hashgan_ray.train.methods import dfah
from hashgan_ray.train.losses import label_similarity, pairwise_nll
from hashgan_ray.train.methods import build_trainer, trainer_class

CFG = TrainConfig(method="dfah", bits=16, text_hidden=64, text_features=32, lr=1e-3)


@pytest.fixture(scope="module")
def batch(synth_data):
    """16 pairs, images averaged down to 16 px: a step costs ~16x less than at
    64 px (the small CNN's global max pool takes any size)."""
    raw = next(iter_batches(synth_data, "train", 16))
    batch = {k: torch.as_tensor(v) for k, v in raw.items()}
    batch["image"] = F.avg_pool2d(batch["image"].float(), 4).round().to(torch.uint8)
    return batch


def tiny_trainer(batch, seed=0, train_ids=None):
    torch.manual_seed(seed)
    model = HashGAN(bits=16, vocab_size=batch["text"].shape[1], text_hidden=64, text_features=32,
                    image_attention=False, text_attention=False)
    ids = batch["id"].numpy() if train_ids is None else train_ids
    return build_trainer(CFG, model, train_ids=np.sort(ids))


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def moved(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def random_codes(n, q, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(2 * torch.randn(n, q, generator=g))


# -- each loss term against its definition, written out element by element -- #

def test_pairwise_nll_is_dcmh_negative_log_likelihood():
    x, y = random_codes(5, 8, 0), random_codes(5, 8, 1)
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]])
    sim = label_similarity(labels, labels)
    total = 0.0
    for i in range(5):
        for j in range(5):
            theta = 0.5 * float(x[i] @ y[j])
            p = 1 / (1 + math.exp(-theta))                       # σ(Θ): P(S_ij = 1)
            total -= math.log(p) if sim[i, j] else math.log(1 - p)
    assert pairwise_nll(x, y, sim).item() == pytest.approx(total / 25, rel=1e-5)


def test_embedding_and_quantization_terms_match_their_definitions():
    f, g, u = (random_codes(4, 6, s) for s in range(3))
    codes = torch.sign(random_codes(4, 6, 3))
    codes[1] = 0                                                  # row 1 has no code yet
    emb = sum(float((f[i, k] - u[i, k]) ** 2 + (g[i, k] - u[i, k]) ** 2)
              for i in range(4) for k in range(6)) / 24
    quant = sum(float((codes[i, k] - x[i, k]) ** 2) for x in (f, g, u)
                for i in (0, 2, 3) for k in range(6)) / 18
    assert dfah.embedding_loss(f, g, u).item() == pytest.approx(emb, rel=1e-5)
    assert dfah.quantization_loss(codes, f, g, u).item() == pytest.approx(quant, rel=1e-5)
    assert dfah.quantization_loss(torch.zeros(4, 6), f, g, u).item() == 0.0


def test_embedding_term_does_not_move_the_fused_code():
    f, g, u = (random_codes(3, 4, s).requires_grad_() for s in range(3))
    dfah.embedding_loss(f, g, u).backward()
    assert u.grad is None and f.grad.abs().sum() > 0 and g.grad.abs().sum() > 0


def test_modality_loss_is_gan_binary_cross_entropy():
    img, txt = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = lambda v: 1 / (1 + math.exp(-v))                        # noqa: E731
    want = (-sum(math.log(sig(v)) for v in img.tolist()) / 2
            - sum(math.log(1 - sig(v)) for v in txt.tolist()) / 2)
    assert dfah.modality_loss(img, txt).item() == pytest.approx(want, rel=1e-6)


# -- the discrete step ------------------------------------------------------- #

def sdh_objective(b, w, y, f, g, u):
    """O(B, W) written out in full: ‖Y − BW‖² + ρ‖W‖² + ν Σ ‖B − X‖², X = F, G, U."""
    fit = sum(((b - x) ** 2).sum() for x in (f, g, u))
    return float(((y - b @ w) ** 2).sum() + dfah.RIDGE * (w ** 2).sum() + dfah.CODE_FIT * fit)


def test_discrete_step_gives_binary_codes_that_do_not_increase_its_objective():
    n, q = 40, 16
    f, g, u = (random_codes(n, q, s) for s in range(3))
    y = (torch.rand(n, 5, generator=torch.Generator().manual_seed(4)) < 0.3).float()
    previous = torch.sign(random_codes(n, q, 5))
    w = dfah.label_classifier(previous.T @ previous, previous.T @ y)
    codes = dfah.dcc_codes(previous, w, dfah.code_target(y, w, f + g + u))
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    before, after = sdh_objective(previous, w, y, f, g, u), sdh_objective(codes, w, y, f, g, u)
    assert after < before
    # the implementation's objective differs from the full one by a constant
    assert (dfah.discrete_objective(codes, w, y, f + g + u)
            - dfah.discrete_objective(previous, w, y, f + g + u)) == pytest.approx(after - before, rel=1e-4)
    # the W step then lowers it again (ridge regression is its exact minimiser)
    w2 = dfah.label_classifier(codes.T @ codes, codes.T @ y)
    assert sdh_objective(codes, w2, y, f, g, u) <= after + 1e-4


class SumOverThreads:
    """all_reduce for trainers run in threads, one per simulated rank."""

    def __init__(self, world):
        self.barrier, self.slots = threading.Barrier(world), [None] * world

    def for_rank(self, rank):
        def all_reduce(tensor):
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()
            return tensor.copy_(total)
        return all_reduce


def fill_epoch(trainer, rows, outputs, labels):
    trainer.outputs[rows], trainer.seen[rows] = outputs[rows], True
    trainer.labels = torch.zeros(len(trainer.ids), labels.shape[1])
    trainer.labels[rows] = labels[rows]


def test_two_ranks_each_updating_their_rows_give_the_codes_of_one(batch):
    n = len(batch["id"])
    outputs = 3 * random_codes(n, 16, 0)
    rows = torch.arange(n - 3)                        # the last 3 rows unseen this epoch
    one = tiny_trainer(batch)
    fill_epoch(one, rows, outputs, batch["labels"])
    one.update_codes()

    reduce = SumOverThreads(2)
    ranks = [tiny_trainer(batch) for _ in range(2)]
    threads = []
    for r, trainer in enumerate(ranks):
        trainer.all_reduce = reduce.for_rank(r)
        fill_epoch(trainer, rows[r::2], outputs, batch["labels"])
        threads.append(threading.Thread(target=trainer.update_codes))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert torch.equal(ranks[0].codes, ranks[1].codes)
    assert torch.equal(ranks[0].codes, one.codes)
    assert (one.codes[rows].abs() == 1).all() and (one.codes[n - 3:] == 0).all()


# -- the two players' steps ----------------------------------------------------- #

def test_discriminator_step_moves_only_the_discriminator(batch, one_thread):
    trainer = tiny_trainer(batch)
    model = trainer.model
    model.eval()              # no batch-norm statistics updates: only optimisers move weights
    net, fusion, disc = snapshot(model.net), snapshot(trainer.fusion), snapshot(trainer.discriminator)
    with torch.no_grad():
        f, g, _ = trainer.extractors(batch["image"], batch["text"])
    before = dfah.modality_loss(*trainer.discriminator(torch.cat([f, g])).split(len(f))).item()
    for _ in range(5):
        dfah.discriminator_step(trainer.critic, f, g, trainer.opt_discriminator)
    assert moved(net, model.net) == set() and moved(fusion, trainer.fusion) == set()
    assert moved(disc, trainer.discriminator) == set(disc)
    after = dfah.modality_loss(*trainer.discriminator(torch.cat([f, g])).split(len(f))).item()
    assert after < before


def test_extractor_step_moves_the_extractors_and_fusion_but_not_the_discriminator(batch, one_thread):
    trainer = tiny_trainer(batch)
    trainer.model.eval()
    net, fusion, disc = snapshot(trainer.model.net), snapshot(trainer.fusion), snapshot(trainer.discriminator)
    codes = torch.sign(random_codes(len(batch["id"]), 16, 0))
    for _ in range(2):
        stats, _ = dfah.extractor_step(trainer.extractors, trainer.discriminator, batch, codes,
                                       trainer.opt_extractors)
    assert moved(disc, trainer.discriminator) == set()
    assert {"image_code.weight", "text_code.weight", "text_net.0.weight",
            "image_head.2.weight"} <= moved(net, trainer.model.net)
    assert moved(fusion, trainer.fusion) == set(fusion)
    assert {"pair", "fusion", "embedding", "quantization", "adversarial", "full"} <= set(stats)
    assert stats["quantization"] > 0


def test_trainer_state_round_trips_through_weights_only_load(batch, tmp_path, one_thread):
    trainer = tiny_trainer(batch)
    for step in range(2):
        trainer.step(step, batch)
    trainer.end_epoch()
    assert (trainer.codes.abs() == 1).all()              # every row of the batch has a code
    torch.save(trainer.state_dict(), tmp_path / "state.pt")
    again = tiny_trainer(batch, seed=1)
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert torch.equal(again.codes, trainer.codes)
    for a, b in ((again.fusion, trainer.fusion), (again.discriminator, trainer.discriminator)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert again.opt_extractors.state_dict()["state"][0]["step"] == 2
    assert again.opt_discriminator.state_dict()["state"][0]["step"] == 2
    assert again.optimizers.schedulers[0].last_epoch == 1


def test_method_is_registered():
    assert trainer_class("dfah") is dfah.DFAHTrainer and not dfah.DFAHTrainer.uses_unlabeled


def in_batch_map(trainer, batch):
    model = trainer.model
    model.eval()
    with torch.no_grad():
        img = pack_codes(model.encode_image(batch["image"]))
        txt = pack_codes(model.encode_text(batch["text"]))
    model.train()
    labels = batch["labels"].numpy()
    return (mean_average_precision(img, txt, labels, labels)
            + mean_average_precision(txt, img, labels, labels)) / 2


def test_training_on_a_batch_raises_in_batch_map(batch, one_thread):
    trainer = tiny_trainer(batch)
    before = in_batch_map(trainer, batch)
    for step in range(200):
        trainer.step(step, batch)
        if step % 25 == 24:
            trainer.end_epoch()              # the discrete step, as at an epoch's end
    after = in_batch_map(trainer, batch)
    assert after > before + 0.1, (before, after)


# -- on Ray Train, then through the index ------------------------------------ #

def test_two_ray_workers_train_dfah_and_its_model_is_indexed_and_served_unchanged(ray3, synth_data, tmp_path):
    # ray3: tests/train/conftest.py
    from hashgan_ray.model.encode import encode_split
    from hashgan_ray.index.build import build_index
    from hashgan_ray.index.store import HashIndex, read_codes
    from hashgan_ray.model.checkpoint import TRAIN_STATE, fingerprint, load_model
    from hashgan_ray.train.loop import fit

    cfg = TrainConfig(data=str(synth_data), out=str(tmp_path / "run"), epochs=1, workers=2,
                      method="dfah", bits=16, text_hidden=64, text_features=32, batch_size=16,
                      val_database=40, lr=1e-3)
    result = fit(cfg)
    assert result.metrics["epoch"] == 1 and result.metrics["replicas_in_sync"] == 1.0
    assert result.metrics["map_i2t"] > 0 and result.metrics["map_t2i"] > 0
    state = torch.load(Path(result.checkpoint.path) / TRAIN_STATE, weights_only=True)["trainer"]
    # 120 train pairs over 2 workers, batches of 16: 3 steps = 48 rows per worker.
    # Rank 0 saved the codes of both workers' rows: the all_reduce gathered them.
    assert int((state["codes"].abs().sum(1) > 0).sum()) == 96

    model_dir = Path(cfg.out) / "model"
    model, config = load_model(model_dir)
    assert config["method"] == "dfah" and model.bits == 16
    build_index(model_dir, synth_data, tmp_path / "index", batch_size=64)    # the Ray Data job
    index = tmp_path / "index"
    database = encode_split(model, synth_data, "database")           # what `eval` ranks
    indexed = read_codes(index)
    assert np.array_equal(indexed.ids, database.ids)
    assert np.array_equal(indexed.image, database.image_codes)
    assert np.array_equal(indexed.text, database.text_codes)
    served = HashIndex(index, bits=16, checkpoint_fingerprint=fingerprint(model_dir))
    distances, ids = served.search(database.image_codes[:5], "image", 3)
    assert (distances[:, 0] == 0).all() and np.isin(ids, database.ids).all()

    # The Serve application takes the DFAH model and its index as they are.
    import httpx
    from helpers import brute, free_port
    from ray import serve

    from hashgan_ray.data.format import read_meta, read_pairs
    from hashgan_ray.serving.app import build_app

    vocab = read_meta(synth_data).vocabulary
    words = [vocab[i] for i in read_pairs(synth_data, "query", columns=["text"]).column("text")[0].as_py()]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"checkpoint": str(model_dir), "index": str(index)}), name="dfah",
                  route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            assert client.get("/v1/info").json()["model"]["bits"] == 16
            code = client.post("/v1/encode", json={"text": words}).json()["code"]
            found = client.post("/v1/search", json={"text": words, "k": 1000}).json()
    finally:
        serve.shutdown()
    assert found["results"] == brute(code, indexed.image, indexed.ids)

import math

import pytest
import torch

from hashgan_ray.train.losses import hashgan_losses, label_similarity, triplet_ranking_loss


def test_label_similarity_is_share_at_least_one_label():
    a = torch.tensor([[1, 0, 1], [0, 1, 0]])
    b = torch.tensor([[0, 0, 1], [1, 1, 0], [0, 0, 0]])
    assert label_similarity(a, b).tolist() == [[True, True, False], [False, True, False]]


def test_triplet_loss_hand_computed():
    # one query at the origin; database: j0 positive at distance 1, k1 negative at
    # distance 2, k2 negative at distance 0.5.  Triplets <0,0,1>, <0,0,2>:
    # max(0, 1 + 1 - 2) = 0 and max(0, 1 + 1 - 0.5) = 1.5  -> mean 0.75
    q = torch.tensor([[0.0, 0.0]])
    db = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.0]])
    sim = torch.tensor([[True, False, False]])
    assert triplet_ranking_loss(q, db, sim, margin=1.0).item() == pytest.approx(0.75)


def test_intra_modal_excludes_the_query_itself():
    # codes 0 and 1 share a label, 2 does not.  Without self-pairs the triplets
    # are <0,1,2> and <1,0,2>:  d01 = 1, d02 = 2, d12 = sqrt(5).
    h = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    sim = label_similarity(torch.tensor([[1, 0], [1, 0], [0, 1]]), torch.tensor([[1, 0], [1, 0], [0, 1]]))
    expected = (max(0, 3 + 1 - 2) + max(0, 3 + 1 - math.sqrt(5))) / 2
    assert triplet_ranking_loss(h, h, sim, 3.0, same_modality=True).item() == pytest.approx(expected)


def test_no_valid_triplet_is_zero_with_a_graph():
    h = torch.randn(3, 4, requires_grad=True)
    sim = torch.ones(3, 3, dtype=torch.bool)
    loss = triplet_ranking_loss(h, h, sim, 1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert h.grad is not None


def test_full_objective_sums_the_terms_and_respects_the_ablation():
    torch.manual_seed(0)
    codes = {k: torch.tanh(torch.randn(6, 8)) for k in ("img", "img_un", "txt", "txt_un")}
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 1]])
    sim = label_similarity(labels, labels)
    both = hashgan_losses(codes, sim, 1.0, image_attention=True, text_attention=True)
    assert both["t2i_adv"].item() == pytest.approx(
        triplet_ranking_loss(codes["txt"], codes["img_un"], sim, 1.0).item())
    assert both["full"].item() == pytest.approx(sum(both[k].item() for k in (
        "t2i", "i2t", "i2i", "t2t", "t2i_adv", "i2t_adv")))
    image_only = hashgan_losses(codes, sim, 1.0, image_attention=True, text_attention=False)
    assert image_only["i2t_adv"].item() == 0.0 and image_only["t2i_adv"].item() > 0


# One query at the origin. Database: positives at distance 1 and 3, negatives at
# distance 2 and 5; margin 2. The four triplets <p, n>:
#   (1, 2): 2 + 1 - 2 = 1     (1, 5): 2 + 1 - 5 < 0 -> 0
#   (3, 2): 2 + 3 - 2 = 3     (3, 5): 2 + 3 - 5 = 0
MINING_Q = torch.tensor([[0.0, 0.0]])
MINING_DB = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 5.0]])
MINING_SIM = torch.tensor([[True, True, False, False]])


@pytest.mark.parametrize("mining, expected", [
    ("all", (1 + 0 + 3 + 0) / 4),        # every valid triplet
    ("active", (1 + 3) / 2),             # only those that violate the margin
    ("hardest", 2 + 3 - 2),              # farthest positive (3) vs nearest negative (2)
])
def test_mining_rules_hand_computed(mining, expected):
    loss = triplet_ranking_loss(MINING_Q, MINING_DB, MINING_SIM, 2.0, mining=mining)
    assert loss.item() == pytest.approx(expected)


def test_hardest_mining_skips_queries_without_a_negative():
    # query 0: positive at 1, negative at 1.5 -> 2 + 1 - 1.5 = 1.5; query 1 shares a
    # label with every item, so it has no negative and does not count.
    q = torch.tensor([[0.0, 0.0], [9.0, 9.0]])
    db = torch.tensor([[1.0, 0.0], [0.0, 1.5]])
    sim = torch.tensor([[True, False], [True, True]])
    assert triplet_ranking_loss(q, db, sim, 2.0, mining="hardest").item() == pytest.approx(1.5)


def test_active_mining_with_every_triplet_satisfied_is_zero_with_a_graph():
    q = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = triplet_ranking_loss(q, MINING_DB, MINING_SIM, 0.1, mining="active")
    # (1, 2): 0.1 + 1 - 2 < 0, (3, 5): 0.1 + 3 - 5 < 0, but (3, 2): 0.1 + 3 - 2 = 1.1
    assert loss.item() == pytest.approx(1.1)
    far = triplet_ranking_loss(q, torch.tensor([[1.0, 0.0], [0.0, 9.0]]),
                               torch.tensor([[True, False]]), 0.1, mining="active")
    assert far.item() == 0.0
    far.backward()
    assert q.grad is not None


def test_unknown_mining_is_refused():
    with pytest.raises(ValueError, match="mining"):
        triplet_ranking_loss(MINING_Q, MINING_DB, MINING_SIM, 2.0, mining="semi")


def test_quantization_term_hand_computed_and_added_to_the_objective():
    from hashgan_ray.train.losses import quantization_loss

    # |h| - 1: (-0.5, 0) and (0, -1) -> squares 0.25, 0, 0, 1; mean per tensor 0.125, 0.5
    a, b = torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 0.0]])
    assert quantization_loss(a, b).item() == pytest.approx((0.125 + 0.5) / 2)
    codes = {"img": a, "img_un": a, "txt": b, "txt_un": b}
    sim = torch.tensor([[True]])
    plain = hashgan_losses(codes, sim, 1.0, image_attention=False, text_attention=False)
    with_q = hashgan_losses(codes, sim, 1.0, image_attention=False, text_attention=False,
                            quantization=2.0)
    assert "quantization" not in plain
    assert with_q["full"].item() == pytest.approx(plain["full"].item() + 2.0 * 0.3125)


def test_balance_term_hand_computed_and_added_to_the_objective():
    from hashgan_ray.train.losses import balance_loss

    # bit means over the batch: a -> (1, 0) -> mean of squares 0.5; b -> (0, 0) -> 0
    a = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    b = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert balance_loss(a, b).item() == pytest.approx(0.25)
    codes = {"img": a, "img_un": a, "txt": b, "txt_un": b}
    sim = torch.eye(2, dtype=torch.bool)
    plain = hashgan_losses(codes, sim, 1.0, image_attention=False, text_attention=False)
    with_b = hashgan_losses(codes, sim, 1.0, image_attention=False, text_attention=False,
                            balance=4.0)
    assert with_b["full"].item() == pytest.approx(plain["full"].item() + 4.0 * 0.25)


def test_label_loss_is_softmax_cross_entropy_against_the_labels_as_a_distribution():
    from hashgan_ray.train.losses import label_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    log_p = torch.log_softmax(logits, 1)
    # one label: the classifier's loss; two labels: half of each
    labels = torch.tensor([[1, 0, 0], [0, 1, 1]])
    expected = (-log_p[0, 0] - 0.5 * (log_p[1, 1] + log_p[1, 2])) / 2
    assert label_loss(logits, labels).item() == pytest.approx(expected.item())


def test_the_label_head_term_is_added_to_the_objective_with_its_weight():
    from hashgan_ray.train.losses import label_loss
    from hashgan_ray.train.steps import LabelHead

    img, txt = torch.tensor([[0.5, -1.0], [1.0, 0.2]]), torch.tensor([[1.0, 0.0], [-0.3, 0.9]])
    labels = torch.tensor([[1, 0, 0], [0, 0, 1]])
    codes = {"img": img, "img_un": img, "txt": txt, "txt_un": txt}
    sim = label_similarity(labels, labels)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    head = LabelHead(2, 3, 0.5, optimizer, lambda module: module, "cpu")
    assert len(optimizer.param_groups) == 2                # the head trains with E/D
    plain = hashgan_losses(codes, sim, 1.0, image_attention=False, text_attention=False)
    with_head = hashgan_losses(codes, sim, 1.0, image_attention=False, text_attention=False,
                               label_head=head, labels=labels)
    term = label_loss(head.layer(img), labels) + label_loss(head.layer(txt), labels)
    assert with_head["label"].item() == pytest.approx(term.item())
    assert with_head["full"].item() == pytest.approx(plain["full"].item() + 0.5 * term.item())
    with_head["full"].backward()
    assert head.layer.weight.grad.abs().sum() > 0

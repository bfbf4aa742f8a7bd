import torch

from hashgan_ray.model.attention import Attention, ImageAttention, TextAttention, threshold_st


def test_threshold_is_hard_forward_and_identity_backward():
    p = torch.tensor([[0.1, 0.25, 0.3, 0.35]], requires_grad=True)
    z = threshold_st(p, 0.25)
    assert z.tolist() == [[0.0, 1.0, 1.0, 1.0]]             # P >= α, the boundary included
    (z * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert p.grad.tolist() == [[1.0, 2.0, 3.0, 4.0]]        # straight through: dZ/dP = 1


def test_image_mask_uses_alpha_over_hw():
    att = ImageAttention(channels=2, alpha_scale=1.0)
    with torch.no_grad():
        att.score.weight.copy_(torch.tensor([[[[1.0]], [[0.0]]]]))
        att.score.bias.zero_()
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    z, p = att(maps)
    expected_p = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0).view(1, 1, 2, 2)
    assert torch.allclose(p, expected_p)
    assert z.tolist() == (expected_p >= 0.25).float().tolist()   # α = 1/(H·W) = 1/4
    z2, _ = ImageAttention(2, alpha_scale=2.0).requires_grad_(False)(maps)
    assert z2.shape == (1, 1, 2, 2)


def test_text_mask_alpha_over_d_and_ablation_switches():
    att = TextAttention(features=4, alpha_scale=1.0)
    feats = torch.randn(3, 4)
    z, p = att(feats)
    assert torch.equal(z, (p >= 0.25).float())
    off = Attention(channels=2, text_features=4, image=False, text=False)
    assert list(off.parameters()) == []
    maps = torch.randn(3, 2, 5, 5)
    z_img, z_txt = off(maps, feats)
    assert z_img.shape == (3, 1, 5, 5) and bool((z_img == 1).all()) and bool((z_txt == 1).all())


def test_fresh_attention_attends_to_everything():
    # Zero-initialised scores: P is uniform, exactly α at scale 1, so the first
    # masks are all ones (the no-attention model) for any input and any d.
    for d in (4, 512, 1000):
        att = Attention(channels=3, text_features=d, image=True, text=True)
        z_img, z_txt = att(torch.randn(2, 3, 7, 7), torch.rand(2, d))
        assert bool((z_img == 1).all()) and bool((z_txt == 1).all())


def test_saturating_gradient_only_where_the_mask_can_flip():
    # α = 0.25: the band is [α/2, 2α] = [0.125, 0.5]
    p = torch.tensor([[0.01, 0.13, 0.25, 0.49, 0.9]], requires_grad=True)
    weights = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    z = threshold_st(p, 0.25, "saturating")
    assert z.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]]        # forward: the same hard mask
    (z * weights).sum().backward()
    # far below α (0.01) and far above (0.9): no gradient; near α: straight through
    assert p.grad.tolist() == [[0.0, 2.0, 3.0, 4.0, 0.0]]
    q = p.detach().clone().requires_grad_(True)
    (threshold_st(q, 0.25, "identity") * weights).sum().backward()
    assert q.grad.tolist() == weights.tolist()              # identity passes the far ones too


def test_saturating_text_attention_gives_no_gradient_to_a_dominant_feature():
    # Feature 0 scored far above the others: P_0 ≈ 1 >> α = 1/4. Under the
    # identity estimator its gradient reaches the scores (pushing P_0 up lowers
    # the other P through the softmax); under saturating it does not.
    feats = torch.ones(1, 4)
    grads = {}
    for ste in ("identity", "saturating"):
        att = TextAttention(features=4, ste=ste)
        with torch.no_grad():
            att.score.weight.zero_()
            att.score.bias.copy_(torch.tensor([8.0, 0.0, 0.0, 0.0]))
        z, p = att(feats)
        assert z.tolist() == [[1.0, 0.0, 0.0, 0.0]] and p[0, 0] > 0.99
        z[0, 0].backward()                                  # only the dominant feature's mask
        grads[ste] = att.score.bias.grad.clone()
    assert grads["identity"].abs().sum() > 0
    assert grads["saturating"].abs().sum() == 0


def test_ste_reaches_every_module_and_survives_a_checkpoint(tmp_path):
    import pytest

    from hashgan_ray.config import TrainConfig
    from hashgan_ray.model.checkpoint import load_model, write_model_files
    from hashgan_ray.model.hashgan import HashGAN

    with pytest.raises(ValueError, match="ste must be one of"):
        TrainConfig(ste="clipped")
    with pytest.raises(ValueError, match="ste must be one of"):
        threshold_st(torch.zeros(1, 2), 0.5, "clipped")
    model = HashGAN(bits=8, vocab_size=10, text_hidden=8, text_features=4, ste="saturating")
    assert model.attention.image.ste == model.attention.text.ste == "saturating"
    write_model_files(tmp_path, model, vocabulary=[str(i) for i in range(10)], label_names=["a"],
                      train_config={})
    loaded, config = load_model(tmp_path)
    assert config["model"]["ste"] == "saturating"
    assert loaded.attention.image.ste == loaded.attention.text.ste == "saturating"

import pytest
import torch
from torchvision import models

from hashgan_ray.model.hashgan import HashGAN


def test_pretrained_resnet18_loads_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    reference = models.resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    model = HashGAN(bits=16, vocab_size=10, backbone="resnet18", image_size=64,
                    text_hidden=8, text_features=8)
    model.load_pretrained_backbone(str(path))
    trunk = model.net.image_trunk
    assert torch.equal(trunk[0].weight, reference.conv1.weight)
    assert torch.equal(trunk[7][1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.net.image_maps(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 512, 2, 2)


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = HashGAN(bits=16, vocab_size=10, backbone="vgg19", image_size=64,
                    text_hidden=8, text_features=8)
    with pytest.raises(FileNotFoundError, match=r"hub/checkpoints/vgg19-dcbb9e9d.pth.*--backbone-weights"):
        model.load_pretrained_backbone(None)
    small = HashGAN(bits=16, vocab_size=10, text_hidden=8, text_features=8)
    with pytest.raises(ValueError, match="no pretrained weights exist for the 'small' backbone"):
        small.load_pretrained_backbone(None)


def test_small_grid_head_is_a_4x4_grid_at_64px_and_a_masked_position_changes_it():
    from hashgan_ray.model.backbones import build_image_backbone

    torch.manual_seed(0)
    trunk, head, channels, width = build_image_backbone("small", 64, small_head="grid")
    maps = trunk(torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, channels, 8, 8)                  # attention's 64 positions
    assert head[1](head[0](maps)).shape == (2, channels * 4 * 4)   # pool5-like grid, flattened
    out = head(maps)
    assert out.shape == (2, width)
    # Masking one position (zeroing every channel there, as the attention mask does)
    # removes its contribution: the grid cell it falls in changes, so the output does.
    masked = maps.clone()
    masked[:, :, 3, 5] = 0
    assert not torch.allclose(head(masked), out)


@pytest.mark.parametrize("size", [32, 48, 64, 72])
def test_small_grid_head_fits_other_image_sizes(size):
    from hashgan_ray.model.backbones import build_image_backbone

    trunk, head, _, width = build_image_backbone("small", size, small_head="grid")
    assert head(trunk(torch.zeros(1, 3, size, size))).shape == (1, width)


def test_unknown_small_head_is_refused():
    from hashgan_ray.model.backbones import build_image_backbone

    with pytest.raises(ValueError, match="small_head"):
        build_image_backbone("small", 64, small_head="avg")

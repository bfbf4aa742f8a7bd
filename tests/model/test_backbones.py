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

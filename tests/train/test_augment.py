"""The training images' random shift (train/augment.py, TrainConfig.augment_shift)."""
import pytest
import torch

from hashgan_ray.config import TrainConfig
from hashgan_ray.train.augment import random_shift
from hashgan_ray.train.local import train_in_memory

TINY = dict(bits=16, text_hidden=32, text_features=16, batch_size=16, epochs=1)


def dots(n: int, size: int = 12) -> torch.Tensor:
    """n white images, each with one black pixel at (5, 6)."""
    images = torch.full((n, 3, size, size), 255, dtype=torch.uint8)
    images[:, :, 5, 6] = 0
    return images


def test_each_image_moves_by_at_most_the_shift_its_edges_replicated():
    images = dots(200)
    moved = random_shift(images, 3, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape and moved.dtype == torch.uint8
    offsets = set()
    for image in moved:
        black = (image[0] == 0).nonzero().tolist()
        assert len(black) == 1                      # the dot kept, nothing else dark
        (row, col), = black
        assert abs(row - 5) <= 3 and abs(col - 6) <= 3
        assert bool((image[:, row, col] == 0).all())
        offsets.add((row - 5, col - 6))
    assert len(offsets) > 30                       # 49 shifts possible, drawn per image
    # the border replicates the edge: an image with a dark left column, moved right
    # by k, has k + 1 dark columns; moved left, none
    edge = torch.full((100, 3, 8, 8), 200, dtype=torch.uint8)
    edge[..., 0] = 10
    widths = set()
    for image in random_shift(edge, 2, torch.Generator().manual_seed(1)):
        dark = (image == 10).all(dim=(0, 1)).nonzero().flatten().tolist()
        assert dark == list(range(len(dark))) and len(dark) <= 3
        assert set(image.unique().tolist()) <= {10, 200}
        widths.add(len(dark))
    assert widths == {0, 1, 2, 3}


def test_no_shift_returns_the_images_and_draws_nothing():
    images, generator = dots(4), torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert random_shift(images, 0, generator) is images
    assert torch.equal(generator.get_state(), state)


def test_the_option_changes_what_training_sees(synth_data):
    """The same seed with and without the shift trains different weights; the
    option is checked (negative, or with the oracle masks of unshifted images)."""
    def weights(shift):
        cfg = TrainConfig(data=str(synth_data), augment_shift=shift, **TINY)
        return torch.cat([p.detach().flatten() for p in train_in_memory(cfg).parameters()])

    plain, again, shifted = weights(0), weights(0), weights(2)
    assert torch.equal(plain, again)
    assert not torch.allclose(plain, shifted)
    with pytest.raises(ValueError, match="augment_shift must be at least 0"):
        TrainConfig(augment_shift=-1)
    with pytest.raises(ValueError, match="cannot be combined with augment_shift"):
        TrainConfig(attention="oracle", augment_shift=2)

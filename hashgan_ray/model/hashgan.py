"""HashGAN (section 3.2): feature modules E, attention G, hashing modules D.

E and D live in `FeatureHashing` and G in `Attention`, two separate modules,
because training updates them in alternation and wraps each in its own DDP
(see hashgan_ray/train/loop.py). `HashGAN` holds both and its constructor
arguments, which travel with the weights so a checkpoint rebuilds the model
without the training code.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashgan_ray.model.attention import Attention
from hashgan_ray.model.backbones import build_image_backbone, load_pretrained

# ImageNet statistics: torchvision's pretrained backbones expect them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureHashing(nn.Module):
    """E^I, E^T (features) and D^I, D^T (features -> q-bit code in [-1, 1])."""

    def __init__(self, *, bits: int, backbone: str, image_size: int, vocab_size: int,
                 text_hidden: int, text_features: int, small_head: str = "maxpool"):
        super().__init__()
        self.image_trunk, self.image_head, self.channels, width = build_image_backbone(
            backbone, image_size, small_head)
        # BoW -> 8192 -> 1000 (section 3.2)
        self.text_net = nn.Sequential(nn.Linear(vocab_size, text_hidden), nn.ReLU(inplace=True),
                                      nn.Linear(text_hidden, text_features), nn.ReLU(inplace=True))
        self.image_code = nn.Linear(width, bits)
        self.text_code = nn.Linear(text_features, bits)
        # "all parameters [of the text modality] are randomly initialized with a
        # Gaussian with mean zero and standard deviation 0.01" (section 4.1)
        for layer in (*self.text_net, self.text_code):
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, 0.01)
                nn.init.zeros_(layer.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def image_maps(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> feature maps (N, C, H, W)."""
        x = (image.float() / 255.0 - self.mean) / self.std
        return self.image_trunk(x)

    def text_feats(self, text: torch.Tensor) -> torch.Tensor:
        """BoW counts (N, V) -> features (N, d)."""
        return self.text_net(text)

    def hash_image(self, maps: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.image_code(self.image_head(maps)))     # (N, bits)

    def hash_text(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.text_code(feats))                      # (N, bits)

    def forward(self, image: torch.Tensor, text: torch.Tensor, masks,
                word_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Codes of the attended and unattended features. `masks(maps, feats)`
        returns the two attention masks; the caller decides whether G is
        differentiated through (see train/loop.py). `word_mask` (N, V), the
        text oracle (data/oracle.py): attended text features come from the
        masked words, unattended ones from the rest, and the text mask is unused."""
        maps, feats = self.image_maps(image), self.text_feats(text)
        z_img, z_txt = masks(maps, feats)
        if word_mask is None:
            attended, unattended = z_txt * feats, (1 - z_txt) * feats
        else:
            attended = self.text_feats(word_mask * text)
            unattended = self.text_feats((1 - word_mask) * text)
        return {
            "img": self.hash_image(z_img * maps),            # H^I   (attended)
            "img_un": self.hash_image((1 - z_img) * maps),   # Ĥ^I   (unattended)
            "txt": self.hash_text(attended),                 # H^T
            "txt_un": self.hash_text(unattended),            # Ĥ^T
        }


class HashGAN(nn.Module):
    def __init__(self, *, bits: int, vocab_size: int, backbone: str = "small",
                 image_size: int = 64, text_hidden: int = 8192, text_features: int = 1000,
                 image_attention: bool = True, text_attention: bool = True, ste: str = "identity",
                 alpha_scale: float = 1.0, small_head: str = "maxpool"):
        super().__init__()
        self.args = dict(bits=bits, vocab_size=vocab_size, backbone=backbone,
                         image_size=image_size, text_hidden=text_hidden,
                         text_features=text_features, image_attention=image_attention,
                         text_attention=text_attention, ste=ste, alpha_scale=alpha_scale,
                         small_head=small_head)
        self.net = FeatureHashing(bits=bits, backbone=backbone, image_size=image_size,
                                  vocab_size=vocab_size, text_hidden=text_hidden,
                                  text_features=text_features, small_head=small_head)
        self.attention = Attention(self.net.channels, text_features, image=image_attention,
                                   text=text_attention, alpha_scale=alpha_scale, ste=ste)

    @property
    def bits(self) -> int:
        return self.args["bits"]

    def load_pretrained_backbone(self, weights: str | None) -> None:
        load_pretrained(self.net.image_trunk, self.net.image_head, self.args["backbone"], weights)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(image, text, self.attention)

    # -- test time: "we use only the attended features to construct the binary codes"
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        maps = self.net.image_maps(image)
        return self.net.hash_image(self.attention.image_mask(maps) * maps)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.hash_text_feats(self.net.text_feats(text))

    def hash_text_feats(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.hash_text(self.attention.text_mask(feats) * feats)

    def image_attention_map(self, image: torch.Tensor) -> torch.Tensor:
        """(N, H, W) attention probabilities P^I, for the mask figures."""
        if self.attention.image is None:
            raise ValueError("this model has no image attention")
        return self.attention.image(self.net.image_maps(image))[1][:, 0]


class WordListEncoder:
    """`HashGAN.encode_text` for lists of word ids, without the dense bag of words:
    the service's text path, tuned for the few queries of one search batch.

    A query holds a few words of a vocabulary of thousands, so the first text
    layer (vocabulary -> 8192) is a sum of the weight columns of its words
    (an embedding bag) instead of a matrix product over the whole vocabulary:
    about half the time per query batch on CPU (the layer's 32 MB of weights are
    no longer read for every call). The later layers multiply by transposed
    copies of their weights (x @ W^T as `addmm` with W^T stored row-major): for
    batches of 4-16 queries the encoder takes a median 0.57-0.63x the CPU of
    `nn.Linear`'s (out, in) layout (benchmarks/text_encoder_bench.py; single
    runs vary). Same result up to float rounding. Holds the transposed copies
    of every text layer, made once.
    """

    def __init__(self, model: HashGAN):
        first, *rest = model.net.text_net
        self.model = model
        self.rows = first.weight.detach().t().contiguous()       # (vocabulary, hidden)
        self.bias = first.bias.detach()
        # Linear layers as (W^T (in, out), bias); the activations as they are
        self.layers = [(layer.weight.detach().t().contiguous(), layer.bias.detach())
                       if isinstance(layer, nn.Linear) else layer for layer in rest]

    @torch.no_grad()
    def bag(self, words: list) -> torch.Tensor:
        """Word-id lists (a repeated id counts twice) -> the first text layer's
        output before its activation (n, hidden)."""
        lengths = [len(w) for w in words]
        ids = torch.as_tensor(np.concatenate([np.asarray(w, dtype=np.int64) for w in words])
                              if sum(lengths) else np.zeros(0, dtype=np.int64))
        offsets = torch.as_tensor(np.cumsum([0] + lengths[:-1]), dtype=torch.int64)
        device = self.rows.device
        return F.embedding_bag(ids.to(device), self.rows, offsets.to(device), mode="sum") + self.bias

    @torch.no_grad()
    def __call__(self, words: list) -> torch.Tensor:
        """Word-id lists (a repeated id counts twice) -> tanh outputs (n, bits)."""
        x = self.bag(words)
        for layer in self.layers:
            x = torch.addmm(layer[1], x, layer[0]) if isinstance(layer, tuple) else layer(x)
        return self.model.hash_text_feats(x)


def pack_codes(h: torch.Tensor) -> np.ndarray:
    """tanh outputs (N, bits) -> packed uint8 (N, bits/8): bit = 1 where h > 0
    (sign(h), with sign(0) taken as the 0 bit)."""
    return np.packbits((h.detach().float().cpu().numpy() > 0), axis=1)

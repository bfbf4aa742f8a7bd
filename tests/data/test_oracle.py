import numpy as np
import pytest
import torch

from hashgan_ray.data.format import DataError, read_meta, read_pairs
from hashgan_ray.data.oracle import Oracle
from hashgan_ray.data.synth import WORDS_PER_LABEL, SynthConfig, World, generate


@pytest.mark.parametrize("clutter", [False, True])
def test_oracle_boxes_hold_the_label_patterns_and_words_the_label_words(tmp_path, clutter):
    cfg = SynthConfig(clutter=clutter)
    world = World(cfg)
    generate(tmp_path / "d", pairs=40, seed=1, cfg=cfg)
    oracle = Oracle(tmp_path / "d")
    import io

    from PIL import Image
    for r in read_pairs(tmp_path / "d").to_pylist():
        row = oracle._row[r["id"]]
        boxes, words = oracle._boxes[row], oracle._words[row]
        assert len(boxes) == len(r["labels"])
        img = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB"))
        # each box holds one of the pair's label patterns, whole, in its colour
        # (a later label pattern may overlap an earlier one, so at least one per pair)
        whole = [lab for lab in r["labels"] for y0, x0, y1, x1 in boxes
                 if (img[y0:y1, x0:x1][world.templates[lab]] == world.colors[lab]).all()]
        assert whole
        assert set(words) <= set(r["text"])
        assert all(w // WORDS_PER_LABEL in r["labels"] and w < world.n_label_words for w in words)
        assert [w for w in r["text"] if w < world.n_label_words
                and w // WORDS_PER_LABEL in r["labels"]] == words


def test_oracle_masks_at_the_feature_map_resolution(tmp_path):
    generate(tmp_path / "d", pairs=20, seed=0)
    oracle = Oracle(tmp_path / "d")
    # hand-made: one 8-px pattern at rows 22..30, columns 54..62 of a 64-px image
    oracle._boxes[0] = np.array([[22, 54, 30, 62]])
    oracle._words[0] = [3, 5]
    first = int(read_pairs(tmp_path / "d", columns=["id"]).column("id")[0].as_py())
    oracle._row = {first: 0, **{k: v for k, v in oracle._row.items() if k != first}}
    m = oracle.image_masks([first], 8, 8)[0, 0]                # S/8 positions, 8 px each
    expected = np.zeros((8, 8))
    expected[2:4, 6:8] = 1                                     # rows 16-31, columns 48-63
    assert np.array_equal(m, expected)
    assert np.array_equal(oracle.image_masks([first], 4, 4)[0, 0][1:2, 3:4], [[1.0]])
    assert oracle.image_masks([first], 4, 4).sum() == 1
    words = oracle.word_masks([first])
    assert words.shape == (1, read_meta(tmp_path / "d").vocab_size)
    assert words[0].nonzero()[0].tolist() == [3, 5]
    img = oracle.image_masks_like(torch.tensor([first]), torch.zeros(1, 16, 8, 8, dtype=torch.float64))
    assert img.dtype == torch.float64 and torch.equal(img[0, 0], torch.as_tensor(expected))
    txt = oracle.word_masks_like(torch.tensor([first]), torch.zeros(1, words.shape[1]))
    assert txt[0].nonzero().flatten().tolist() == [3, 5]
    with pytest.raises(DataError, match="no oracle for pair id 99999"):
        oracle.word_masks([99999])


def test_dataset_without_oracle_is_a_clear_error(tmp_path):
    generate(tmp_path / "d", pairs=20, seed=0)
    (tmp_path / "d" / "oracle.parquet").unlink()
    with pytest.raises(DataError, match="oracle.parquet: missing"):
        Oracle(tmp_path / "d")

"""Fixtures of the serving tests: a local Ray in Serve's high-throughput mode
(HAProxy, the service's default ingress), a dataset whose images are linked
files and whose names are hostile HTML, and a few real emoji with their names,
each with its own model and one-shard index."""
from collections import Counter

import pytest
from helpers import local_ray_running, write_exact_index, write_tiny_model
from support.emoji import skip_unless_installed, write_emoji_test

from hashgan_ray.data.format import DatasetWriter, read_meta, read_pairs

HOSTILE_LABEL = '<img src=x onerror="document.title=\'pwned\'">'
HOSTILE_WORD = "<b>bold</b>"


@pytest.fixture(scope="module")
def local_ray():
    """Serve behind HAProxy, as `hashgan-ray serve` runs by default: every serving
    test runs behind it unless it asks for `python_proxy_ray`."""
    yield from local_ray_running("haproxy")


@pytest.fixture(scope="module")
def python_proxy_ray():
    """Serve's Python HTTP proxy (`hashgan-ray serve --ingress python`)."""
    yield from local_ray_running("python")


def most_frequent(lists) -> int:
    return Counter(i for ids in lists for i in ids).most_common(1)[0][0]


@pytest.fixture(scope="session")
def hostile(linked_data) -> dict:
    """The label and the word of linked_data that are HTML, and the word's id."""
    return {"label": HOSTILE_LABEL, "word": HOSTILE_WORD,
            "word_id": read_meta(linked_data).vocabulary.index(HOSTILE_WORD)}


@pytest.fixture(scope="session")
def linked_data(synth_data, tmp_path_factory):
    """synth_data with `image_path` (as `--link-images` writes it), its most frequent
    label and word renamed to HTML; its splits are synth_data's (same ids, same seed)."""
    root = tmp_path_factory.mktemp("linked")
    meta = read_meta(synth_data)
    rows = read_pairs(synth_data, columns=["id", "image", "text", "labels", "split"]).to_pylist()
    images = root / "images"
    images.mkdir()
    vocabulary, labels = list(meta.vocabulary), list(meta.label_names)
    vocabulary[most_frequent(r["text"] for r in rows)] = HOSTILE_WORD
    labels[most_frequent(r["labels"] for r in rows)] = HOSTILE_LABEL
    with DatasetWriter(root / "data", vocabulary, labels, image_column="image_path") as writer:
        for r in rows:
            path = images / f"{r['id']}.png"
            path.write_bytes(r["image"])
            writer.add(r["id"], r["text"], r["labels"], image_path=str(path))
        writer.finish(name="linked", source="synthetic", image_size=meta.image_size,
                      n_query=meta.counts["query"], n_train=meta.counts["train"], seed=meta.seed)
    return root / "data"


@pytest.fixture(scope="session")
def linked_model(linked_data, tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("linked_model") / "model", linked_data)


@pytest.fixture(scope="session")
def linked_index(linked_data, linked_model, tmp_path_factory):
    """A one-shard exact index of linked_data's database: the `ingress` layout."""
    return write_exact_index(tmp_path_factory.mktemp("linked_index") / "index", linked_model,
                             linked_data)


@pytest.fixture(scope="session")
def emoji_data(tmp_path_factory):
    """Unicode's emoji from Debian's files, emoji-test.txt cut to 17 lines
    (tests/support/emoji.py): 12 pairs with `name` and `emoji`, 10 in the database."""
    from hashgan_ray.data.convert.emoji import convert

    skip_unless_installed()
    root = tmp_path_factory.mktemp("emoji")
    convert(root / "data", emoji_test=write_emoji_test(root / "emoji-test.txt"),
            n_query=2, n_train=4)
    return root / "data"


@pytest.fixture(scope="session")
def emoji_served(emoji_data, tmp_path_factory):
    """(model, one-shard index) of emoji_data."""
    root = tmp_path_factory.mktemp("emoji_served")
    model = write_tiny_model(root / "model", emoji_data)
    return model, write_exact_index(root / "index", model, emoji_data)

"""What a search request may say, checked: plain Python, no Ray, no web framework.

Every way a request can be wrong raises `BadRequest` with the HTTP status and
a sentence for a person; the Serve ingress (hashgan_ray.serving.app) turns it
into a JSON error. Nothing here trusts the client: sizes are bounded before
anything is decoded.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from hashgan_ray.data.format import OPTIONAL_COLUMNS
from hashgan_ray.data.images import decode_rgb
from hashgan_ray.serving.items import ItemNotFound

TARGETS = ("image", "text")
# what a result may carry besides id and distance (the optional columns, name
# and emoji: null where the dataset has no such column)
INCLUDE = ("labels", "words", "image", *OPTIONAL_COLUMNS)
ITEM_QUERIES = {"image_of": "image", "text_of": "text"}   # a query by an indexed item
THUMBNAIL_SIZES = (16, 1024)                # allowed longest side of /v1/items/{id}/image
WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")    # letters/digits, inner ' or -


@dataclass(frozen=True)
class Limits:
    """Request limits (defaults sized for a 4 MiB photo sent as base64 JSON)."""
    max_k: int = 1000                     # most results per query (the 1..1000)
    max_body_bytes: int = 6 << 20         # whole request body
    max_image_bytes: int = 4 << 20        # the encoded image
    max_image_pixels: int = 25_000_000    # width x height, checked from the header
    max_text_chars: int = 10_000
    max_tags: int = 1_000
    body_timeout_s: float = 10.0          # to receive the body (else 408)
    request_timeout_s: float = 20.0       # to answer once received (else 504)


class BadRequest(Exception):
    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass
class Query:
    modality: str                          # what the query is: "text" | "image"
    words: list[int] = field(default_factory=list)      # text: vocabulary ids
    unknown_words: list[str] = field(default_factory=list)
    image: np.ndarray | None = None        # image: uint8 (3, S, S)
    target: str = "image"                  # what to retrieve
    k: int = 10
    radius: int | None = None
    include: tuple[str, ...] = ()          # item fields each result carries


class Vocabulary:
    """Word -> id of the model's text vocabulary; exact match, then lowercase."""

    def __init__(self, words: list[str]):
        self.ids = {w: i for i, w in enumerate(words)}
        self.lower = {}
        for i, w in enumerate(words):
            self.lower.setdefault(w.lower(), i)

    def lookup(self, tokens: list[str]) -> tuple[list[int], list[str]]:
        ids, unknown = [], []
        for t in tokens:
            i = self.ids.get(t, self.lower.get(t.lower()))
            if i is None:
                if t not in unknown:
                    unknown.append(t)
            else:
                ids.append(i)
        return ids, unknown


def _text_tokens(text, limits: Limits) -> list[str]:
    """A free-text string (split into words) or a list of tags (taken whole)."""
    if isinstance(text, str):
        if len(text) > limits.max_text_chars:
            raise BadRequest(413, f"'text' is longer than {limits.max_text_chars} characters")
        tokens = WORD.findall(text)
    elif isinstance(text, list):
        if len(text) > limits.max_tags:
            raise BadRequest(413, f"'text' has more than {limits.max_tags} tags")
        if not all(isinstance(t, str) for t in text):
            raise BadRequest(400, "'text' as a list must hold only strings (tags)")
        if sum(len(t) for t in text) > limits.max_text_chars:
            raise BadRequest(413, f"'text' is longer than {limits.max_text_chars} characters")
        tokens = [t.strip() for t in text if t.strip()]
    else:
        raise BadRequest(400, "'text' must be a string or a list of strings, "
                              f"not {_json_type(text)}")
    if not tokens:
        raise BadRequest(400, "'text' is empty: give at least one word")
    return tokens


def parse_text(text, vocab: Vocabulary, limits: Limits) -> tuple[list[int], list[str]]:
    ids, unknown = vocab.lookup(_text_tokens(text, limits))
    if not ids:
        raise BadRequest(400, "none of the query's words is in the model's vocabulary",
                         unknown_words=unknown)
    return ids, unknown


def decode_base64(value, limits: Limits) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(400, f"'image' must be a base64 string, not {_json_type(value)}")
    if value.startswith("data:") and "," in value:          # a data: URL
        value = value.split(",", 1)[1]
    if len(value) > limits.max_image_bytes * 4 // 3 + 4:
        raise BadRequest(413, f"the image is larger than {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, "'image' is not valid base64") from None
    if not data:
        raise BadRequest(400, "'image' is empty")
    return data


def load_image(data: bytes, size: int, limits: Limits) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 (3, size, size), within the byte and pixel limits."""
    if len(data) > limits.max_image_bytes:
        raise BadRequest(413, f"the image is larger than {limits.max_image_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:          # reads the header only
                fmt, (w, h) = img.format, img.size
    except Image.DecompressionBombError:
        raise BadRequest(413, "the image has too many pixels") from None
    except Exception:
        raise BadRequest(400, "the bytes sent are not a JPEG or PNG image") from None
    if fmt not in ("JPEG", "PNG"):
        raise BadRequest(415, f"{fmt} images are not accepted; send a JPEG or PNG")
    if w * h > limits.max_image_pixels:
        raise BadRequest(413, f"the image is {w}x{h} pixels; at most "
                              f"{limits.max_image_pixels} pixels are accepted")
    try:
        pixels = decode_rgb(data, size)                                # (S, S, 3)
    except Exception as e:
        raise BadRequest(400, f"the image could not be decoded ({type(e).__name__})") from None
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))             # (3, S, S)


def parse_query(body, vocab: Vocabulary, image_size: int, limits: Limits, *,
                search: bool = True, bits: int = 0, items=None) -> Query:
    """A decoded JSON body of /v1/search (or /v1/encode with search=False) -> Query.
    `items` (hashgan_ray.serving.items.ItemStore) answers `image_of` and `text_of`."""
    if not isinstance(body, dict):
        raise BadRequest(400, f"the request body must be a JSON object, not {_json_type(body)}")
    sources = ("text", "image", *ITEM_QUERIES)
    allowed = set(sources) | ({"target", "k", "radius", "include"} if search else set())
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(400, f"unknown field(s) {', '.join(map(repr, unknown))}; "
                              f"expected {', '.join(sorted(allowed))}")
    given = [s for s in sources if body.get(s) is not None]
    if len(given) != 1:
        raise BadRequest(400, f"give exactly one of {', '.join(map(repr, sources))}"
                         + (f" ({' and '.join(given)} were given)" if given else
                            " (none was given)"))
    (source,) = given
    if source == "text":
        words, unknown_words = parse_text(body["text"], vocab, limits)
        query = Query("text", words=words, unknown_words=unknown_words)
    elif source == "image":
        query = Query("image", image=load_image(decode_base64(body["image"], limits),
                                                image_size, limits))
    else:
        query = item_query(source, body[source], items, image_size, limits)
    if search:
        search_options(query, body, limits, bits)
    return query


def item_id(value) -> int:
    """An item id from JSON or from a URL path segment."""
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -2**63 <= value < 2**63:
        raise BadRequest(400, f"an item id must be an integer, not {value!r:.40}")
    return value


def item_query(source: str, value, items, image_size: int, limits: Limits) -> Query:
    """`image_of`/`text_of`: the image or the words of an indexed item, as a query."""
    i = item_id(value)
    try:
        if source == "text_of":
            return Query("text", words=items.word_ids(i))
        return Query("image", image=load_image(items.image_bytes(i), image_size, limits))
    except ItemNotFound as e:
        raise BadRequest(404, str(e)) from None


def thumbnail_size(value) -> int:
    """The `size` query parameter of /v1/items/{id}/image."""
    low, high = THUMBNAIL_SIZES
    if value is None:
        return 256
    if not re.fullmatch(r"-?[0-9]{1,9}", value) or not low <= int(value) <= high:
        raise BadRequest(400, f"'size' must be an integer from {low} to {high}, not {value!r:.40}")
    return int(value)


def search_options(query: Query, options: dict, limits: Limits, bits: int,
                   form: bool = False) -> None:
    """target, k and radius of a search: JSON fields, or form fields (text) when `form`."""
    target = options.get("target")
    if target is None:
        target = "image" if query.modality == "text" else "text"
    if target not in TARGETS:
        raise BadRequest(400, f"'target' must be \"image\" or \"text\", not {target!r}")
    query.target = target
    radius = options.get("radius")
    if radius is not None:
        radius = _integer("radius", radius, form)
        if not 0 <= radius <= bits:
            raise BadRequest(400, f"'radius' must be between 0 and {bits} (the code length)")
    query.radius = radius
    k = options.get("k")
    # with a radius, k caps the answer and defaults to the most allowed
    k = (limits.max_k if radius is not None else 10) if k is None else _integer("k", k, form)
    if not 1 <= k <= limits.max_k:
        raise BadRequest(400, f"'k' must be between 1 and {limits.max_k}, not {k}")
    query.k = k
    query.include = parse_include(options.get("include"), form)


def parse_include(value, form: bool = False) -> tuple[str, ...]:
    """A list of INCLUDE names (or, in a form, one comma-separated string)."""
    if value is None:
        return ()
    if form and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(400, f"'include' must be a list of names from {', '.join(INCLUDE)}")
    unknown = [v for v in value if v not in INCLUDE]
    if unknown:
        raise BadRequest(400, f"'include' has unknown name(s) {', '.join(map(repr, unknown[:5]))}; "
                              f"expected some of {', '.join(INCLUDE)}")
    return tuple(dict.fromkeys(value))


def _integer(name: str, value, form: bool = False) -> int:
    if form and isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,9}", value.strip()):
        return int(value)                         # a form field arrives as text
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(400, f"'{name}' must be an integer, not {_json_type(value)}")
    return value


def _json_type(value) -> str:
    names = {str: "a string", list: "a list", dict: "an object", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)

"""The Ray Serve application: the search API, its items and the search page.

    serve run serve/config.yaml                   # imports hashgan_ray.serving.app:build_app
    hashgan-ray serve --checkpoint RUN/model --index INDEX_DIR [--host 127.0.0.1] [--port 8000]

Two layouts (`layout` in the app args):
  * ingress: `SearchAPI` holds the model and the whole index and answers a
    query in its own process (one hop: proxy -> ingress). The default for a
    one-shard index.
  * split: `SearchAPI` -> `QueryEncoder` -> `IndexShard` x S, one deployment
    per shard, answers merged by distance (hashgan_ray.index.store.merge). The
    default for a sharded index, and the layout for GPU encoders (give
    QueryEncoder `num_gpus` in the config's `deployments:`).
Replicas, CPUs, GPUs and custom resources of each deployment come from Serve's
own `deployments:` section of serve/config.yaml (or `options` of
`application` in Python); torch and FAISS use as many threads as the replica
has CPUs.

The ingress validates each request (hashgan_ray.serving.query) and queues it
for `_search`, one batch at a time (see MAX_BATCH): one batch of concurrent
queries makes one encoder call per modality and one search per shard and
target, so the encoder and FAISS see matrices rather than single queries.
"""

import asyncio
import ctypes
import functools
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from hashgan_ray.data.format import OPTIONAL_COLUMNS
from hashgan_ray.index.store import TARGETS, check_manifest, merge, open_shard, read_manifest
from hashgan_ray.serving.items import ItemNotFound, ItemStore, thumbnail
from hashgan_ray.serving.query import (BadRequest, Limits, Query, Vocabulary, item_id, load_image,
                                       parse_query, search_options, thumbnail_size)

log = logging.getLogger("ray.serve")
TOKEN_ENV = "HASHGAN_API_TOKEN"
LAYOUTS = ("auto", "ingress", "split")
APP_ARGS = {"checkpoint", "index", "layout", "limits", "token_file"}
# Serve queues what exceeds a replica's max_ongoing_requests in the proxy, where
# it cannot be batched: let the ingress hold many, it only awaits.
INGRESS_ONGOING, BACKEND_ONGOING = 256, 64
# Ingress batching without a timer: one batch is in flight at a time, and the
# queries that arrive meanwhile make the next one (up to MAX_BATCH). A lone query
# goes at once; under load batches grow by themselves. (serve.batch closes a
# batch after a fixed wait and queues it behind the running one: short waits
# made batches of 1-2 at 8 connections, long ones delayed every query.)
MAX_BATCH = 64
SEARCH_THREAD = "hashgan-search"  # its name in top -H, py-spy and /proc/PID/task/*/comm
THUMBNAILS_CACHED = 1024        # (id, size) -> JPEG bytes kept per ingress replica
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "search.js": "text/javascript",
              "search.css": "text/css"}
# The page's own files only; no inline script, nothing from elsewhere.
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")

api = FastAPI(title="hashgan-ray search", docs_url=None, redoc_url=None, openapi_url=None)


def error(status: int, message: str, **extra) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, "status": status, **extra}, status, headers=headers)


@api.exception_handler(HTTPException)
async def _http_error(request, exc: HTTPException):   # unknown path, wrong method
    return error(exc.status_code, str(exc.detail))


def replica_threads() -> int:
    """The CPUs Ray gave this replica (at least one): its torch and FAISS threads."""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


class Encoder:
    """The model on this process: word-id lists or uint8 images -> packed codes."""

    def __init__(self, checkpoint: str, threads: int, device: str = "cpu"):
        import torch

        from hashgan_ray.model.checkpoint import load_model
        from hashgan_ray.model.hashgan import WordListEncoder, pack_codes

        torch.set_num_threads(threads)
        self.torch, self.pack, self.device = torch, pack_codes, device
        self.model, _ = load_model(checkpoint, device)
        self.encode_words = WordListEncoder(self.model)

    def text(self, words: list[list[int]]) -> np.ndarray:
        return self.pack(self.encode_words(words))                       # (n, bits/8)

    def image(self, images: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():                                       # (n, 3, S, S) uint8
            return self.pack(self.model.encode_image(
                self.torch.as_tensor(images).to(self.device)))           # (n, bits/8)


def by_modality(queries: list[Query]) -> tuple[list[int], list[int]]:
    """Rows of the text queries and of the image queries."""
    return ([i for i, q in enumerate(queries) if q.modality == "text"],
            [i for i, q in enumerate(queries) if q.modality == "image"])


def by_target(queries: list[Query]):
    """(target, rows, k) for each target some query asks for; k = the largest."""
    for target in TARGETS:
        rows = [i for i, q in enumerate(queries) if q.target == target]
        if rows:
            yield target, rows, max(queries[i].k for i in rows)


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` (15 bytes at most) where the OS shows it
    (Linux: top -H, ps -L, /proc); Python 3.11 names only its own object."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(15, name.encode()[:15])               # 15: PR_SET_NAME


class LocalSearch:
    """Layout `ingress`: the encoder and every shard in the ingress replica,
    run by `thread`, one thread of the replica's own (named SEARCH_THREAD)."""

    def __init__(self, checkpoint: str, index: str, bits: int, checkpoint_fingerprint: str):
        import faiss

        from hashgan_ray.index.store import HashIndex

        self.faiss, self.threads = faiss, replica_threads()
        self.encoder = Encoder(checkpoint, self.threads)
        self.index = HashIndex(index, bits=bits, checkpoint_fingerprint=checkpoint_fingerprint)
        self.thread = ThreadPoolExecutor(1, SEARCH_THREAD, initializer=self._start_thread)

    def _start_thread(self) -> None:
        name_os_thread(SEARCH_THREAD)
        # OpenMP's thread count is per calling thread: without this FAISS would
        # get one OpenMP thread per core in this one.
        self.faiss.omp_set_num_threads(self.threads)

    async def run(self, fn, *args):
        """fn(*args) in the search thread."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    def encode(self, queries: list[Query]) -> np.ndarray:
        """Packed codes (n, bits/8) of the queries, one encoder call per modality."""
        texts, images = by_modality(queries)
        codes = np.empty((len(queries), self.encoder.model.bits // 8), np.uint8)
        if texts:
            codes[texts] = self.encoder.text([queries[i].words for i in texts])
        if images:
            codes[images] = self.encoder.image(np.stack([queries[i].image for i in images]))
        return codes

    def __call__(self, queries: list[Query]) -> list[tuple[np.ndarray, np.ndarray]]:
        codes = self.encode(queries)
        found: list = [None] * len(queries)
        for target, rows, k in by_target(queries):
            D, I = self.index.search(codes[rows], target, k)
            for j, i in enumerate(rows):
                found[i] = (D[j], I[j])
        return found


@serve.deployment(max_ongoing_requests=BACKEND_ONGOING, ray_actor_options={"num_cpus": 1})
class QueryEncoder:
    """Layout `split`: the model, batching concurrent calls (`@serve.batch`);
    each call brings the queries of one ingress batch. On a GPU when given one."""

    def __init__(self, checkpoint: str):
        import ray

        gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
        self.encoder = Encoder(checkpoint, replica_threads(), "cuda" if gpus else "cpu")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def encode_text(self, groups: list[list[list[int]]]) -> list[np.ndarray]:
        codes = self.encoder.text([w for g in groups for w in g])       # (n, bits/8)
        return np.split(codes, np.cumsum([len(g) for g in groups])[:-1])

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def encode_image(self, groups: list[np.ndarray]) -> list[np.ndarray]:
        codes = self.encoder.image(np.concatenate(groups))              # (n, bits/8)
        return np.split(codes, np.cumsum([len(g) for g in groups])[:-1])


@serve.deployment(max_ongoing_requests=BACKEND_ONGOING, ray_actor_options={"num_cpus": 0.25})
class IndexShard:
    """Layout `split`: one shard's FAISS indexes; refuses an index of another model."""

    def __init__(self, index_dir: str, shard: int, bits: int, checkpoint_fingerprint: str):
        import faiss
        import ray

        self.faiss, self.threads = faiss, replica_threads()
        self.shard = open_shard(index_dir, shard, bits=bits, checkpoint_fingerprint=checkpoint_fingerprint,
                                gpu=bool(ray.get_gpu_ids()))      # on a GPU when given one (index/gpu.py)

    def search(self, codes: np.ndarray, target: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.faiss.omp_set_num_threads(self.threads)     # per thread; Serve calls from a pool
        return self.shard.search(codes, target, k)


class RemoteSearch:
    """Layout `split`: the encoder and shard deployments, through their handles."""

    def __init__(self, encoder, shards: list, bits: int):
        self.encoder, self.shards, self.bits = encoder, shards, bits

    async def encode(self, queries: list[Query]) -> np.ndarray:
        """Packed codes (n, bits/8) of the queries, one encoder call per modality."""
        texts, images = by_modality(queries)
        calls, rows = [], []
        if texts:
            calls.append(self.encoder.encode_text.remote([queries[i].words for i in texts]))
            rows.append(texts)
        if images:
            calls.append(self.encoder.encode_image.remote(
                np.stack([queries[i].image for i in images])))
            rows.append(images)
        codes = np.empty((len(queries), self.bits // 8), np.uint8)
        for r, c in zip(rows, await asyncio.gather(*calls)):
            codes[r] = c
        return codes

    async def __call__(self, queries: list[Query]) -> list[tuple[np.ndarray, np.ndarray]]:
        codes = await self.encode(queries)
        found: list = [None] * len(queries)
        for target, rows, k in by_target(queries):
            D, I = merge(await asyncio.gather(*[s.search.remote(codes[rows], target, k)
                                                for s in self.shards]), k)
            for j, i in enumerate(rows):
                found[i] = (D[j], I[j])
        return found


@serve.deployment(max_ongoing_requests=INGRESS_ONGOING)
@serve.ingress(api)
class SearchAPI:
    def __init__(self, encoder, shards: list, *, checkpoint: str, index: str,
                 checkpoint_fingerprint: str, token: str | None = None,
                 limits: dict | None = None):
        """encoder None: layout `ingress` (model and index loaded here)."""
        from hashgan_ray.model.checkpoint import read_config

        self._waiting: list = []                   # (query, future) for the next batch
        self._dispatcher: asyncio.Task | None = None
        self.token = token.encode() if token else None
        self.limits = Limits(**(limits or {}))
        config = read_config(checkpoint)
        self.vocab = Vocabulary(config["vocabulary"])
        self.bits, self.image_size = config["model"]["bits"], config["model"]["image_size"]
        manifest = read_manifest(index)
        self.layout = "ingress" if encoder is None else "split"
        self.local = (LocalSearch(checkpoint, index, self.bits, checkpoint_fingerprint)
                      if encoder is None else None)
        self.remote = None if encoder is None else RemoteSearch(encoder, shards, self.bits)
        self.items = ItemStore(manifest.get("datasets", []))
        self._items_lock = threading.Lock()        # the store reads files from worker threads
        self._thumbnails: OrderedDict = OrderedDict()
        self.page = {name: resources.files("hashgan_ray.serving").joinpath("static", name)
                     .read_bytes() for name in PAGE_FILES}
        self.info = {"model": {"path": checkpoint, "fingerprint": checkpoint_fingerprint,
                               **config["model"]},
                     "index": {"path": index, **manifest},
                     "items": {"count": len(self.items), "load_s": round(self.items.load_s, 3)},
                     "layout": self.layout, "limits": asdict(self.limits)}

    # -- endpoints ------------------------------------------------------------
    @api.get("/")
    async def index_page(self):
        return self._page_file("index.html")

    @api.get("/static/{name}")
    async def static_file(self, name: str):
        if name not in PAGE_FILES or name == "index.html":
            return error(404, "Not Found")
        return self._page_file(name)

    @api.get("/v1/healthz")
    async def healthz(self):
        return {"status": "ok"}

    @api.get("/v1/info")
    async def info(self, request: Request):
        return await self._guarded(request, lambda: self._ok(self.info))

    @api.post("/v1/search")
    async def search(self, request: Request):
        return await self._guarded(request, lambda: self._search_json(request))

    @api.post("/v1/search/image")
    async def search_image(self, request: Request):
        return await self._guarded(request, lambda: self._search_upload(request))

    @api.post("/v1/encode")
    async def encode(self, request: Request):
        return await self._guarded(request, lambda: self._encode_json(request))

    @api.get("/v1/items/{item}")
    async def item(self, request: Request, item: str):
        return await self._guarded(request, lambda: self._item_json(request, item))

    @api.get("/v1/items/{item}/image")
    async def item_image(self, request: Request, item: str):
        return await self._guarded(request, lambda: self._item_image(request, item))

    # -- request handling -----------------------------------------------------
    async def _guarded(self, request: Request, work):
        """Auth, then `work()` within the time limit; every failure becomes a JSON
        error and nothing escapes to crash the replica."""
        try:
            self._authorize(request)
            async with asyncio.timeout(self.limits.request_timeout_s):   # no task per request
                answer = await work()
            # a dict straight to JSON: FastAPI's generic encoder costs more than the search
            return answer if isinstance(answer, Response) else JSONResponse(answer)
        except BadRequest as e:
            return error(e.status, e.message, **e.extra)
        except asyncio.TimeoutError:
            return error(504, f"the search took longer than {self.limits.request_timeout_s} s")
        except Exception:
            log.exception("request failed")
            return error(500, "internal error: the request could not be answered")

    async def _ok(self, payload):
        return payload

    def _page_file(self, name: str) -> Response:
        return Response(self.page[name], media_type=PAGE_FILES[name],
                        headers={"Content-Security-Policy": PAGE_POLICY,
                                 "X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-cache"})

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            raise BadRequest(401, "missing or wrong API token: send 'Authorization: Bearer <token>'")

    async def _body(self, request: Request) -> bytes:
        """The body, refused (413) past max_body_bytes and (408) past body_timeout_s."""
        limit = self.limits.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise BadRequest(413, f"the request body is larger than {limit} bytes")

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(413, f"the request body is larger than {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                return await read()
        except asyncio.TimeoutError:
            raise BadRequest(408, "the request body did not arrive in time") from None

    async def _json(self, request: Request):
        data = await self._body(request)
        if not data.strip():
            raise BadRequest(400, "the request body is empty; send a JSON object")
        try:
            return json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(400, "the request body is not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise BadRequest(400, f"the request body is not valid JSON: {e.msg} "
                                  f"(line {e.lineno}, column {e.colno})") from None

    async def _parse(self, body, search: bool) -> Query:
        """Off the event loop where it decodes an image or reads the item store."""
        parse = functools.partial(parse_query, body, self.vocab, self.image_size, self.limits,
                                  search=search, bits=self.bits, items=self.items)
        given = {f for f in ("image", "image_of", "text_of")
                 if isinstance(body, dict) and body.get(f) is not None}
        if given & {"image_of", "text_of"}:
            return await asyncio.to_thread(self._with_items, parse)
        return await asyncio.to_thread(parse) if given else parse()

    def _with_items(self, fn, *args, **kwargs):
        """fn(...) in a worker thread, one at a time against the item store."""
        with self._items_lock:
            return fn(*args, **kwargs)

    async def _search_json(self, request: Request):
        started = time.perf_counter()
        query = await self._parse(await self._json(request), search=True)
        return await self._answer(request, query, await self._batched(query), started)

    async def _search_upload(self, request: Request):
        started = time.perf_counter()
        form = await self._form(request)
        upload = form.get("file") or form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest(400, "upload the image as a multipart file field named 'file'")
        data = await upload.read()
        query = Query("image", image=await asyncio.to_thread(load_image, data, self.image_size,
                                                             self.limits))
        search_options(query, {k: form.get(k) for k in ("target", "k", "radius", "include")},
                       self.limits, self.bits, form=True)
        return await self._answer(request, query, await self._batched(query), started)

    async def _form(self, request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequest(415, "send the image as multipart/form-data")
        data = await self._body(request)

        async def stream():
            yield data
            yield b""
        try:
            return await MultiPartParser(request.headers, stream(), max_files=1, max_fields=8,
                                         max_part_size=64 << 10).parse()
        except MultiPartException as e:
            raise BadRequest(400, f"the multipart body is malformed: {e.message}") from None

    async def _encode_json(self, request: Request):
        query = await self._parse(await self._json(request), search=False)
        if self.local is not None:
            code = (await self.local.run(self.local.encode, [query]))[0]
        else:
            code = (await self.remote.encode([query]))[0]
        return {"code": code.tobytes().hex(), "bits": self.bits, "modality": query.modality,
                "unknown_words": query.unknown_words}

    async def _answer(self, request: Request, query: Query, found, started: float):
        D, I = found
        keep = I >= 0                                      # approximate kinds may find fewer
        if query.radius is not None:
            keep &= D <= query.radius
        results = [{"id": int(i), "distance": int(d)}
                   for d, i in zip(D[keep][:query.k], I[keep][:query.k])]
        if query.include:
            await asyncio.to_thread(self._with_items, self._add_items, results, query.include,
                                    request.scope.get("root_path", ""))
        return {"results": results, "bits": self.bits, "target": query.target,
                "took_ms": round((time.perf_counter() - started) * 1000, 3),
                "unknown_words": query.unknown_words}

    def _item(self, i: int, root: str) -> dict:
        """The item's JSON; `name` and `emoji` only where its dataset has them."""
        item = self.items.get(i)
        named = {k: v for k in OPTIONAL_COLUMNS if (v := getattr(item, k)) is not None}
        return {"id": i, **named, "labels": item.labels, "words": item.words,
                "image": f"{root}/v1/items/{i}/image"}

    def _add_items(self, results: list[dict], include: tuple[str, ...], root: str) -> None:
        """Each result gets the `include` fields of its item (null where the item's
        dataset is not reachable)."""
        for r in results:
            try:
                item = self._item(r["id"], root)
            except ItemNotFound:
                item = {}
            r.update({name: item.get(name) for name in include})

    async def _item_json(self, request: Request, item: str):
        i = item_id(item)
        try:
            return await asyncio.to_thread(self._with_items, self._item, i,
                                           request.scope.get("root_path", ""))
        except ItemNotFound as e:
            raise BadRequest(404, str(e)) from None

    async def _item_image(self, request: Request, item: str):
        i, size = item_id(item), thumbnail_size(request.query_params.get("size"))
        key = (i, size)
        data = self._thumbnails.get(key)
        if data is None:
            data = await asyncio.to_thread(self._make_thumbnail, i, size)
            self._thumbnails[key] = data
            if len(self._thumbnails) > THUMBNAILS_CACHED:
                self._thumbnails.popitem(last=False)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    def _make_thumbnail(self, i: int, size: int) -> bytes:
        try:
            data = self._with_items(self.items.image_bytes, i)
        except ItemNotFound as e:
            raise BadRequest(404, str(e)) from None
        try:
            return thumbnail(data, size)
        except Exception as e:                     # a linked file replaced by something else
            raise BadRequest(404, f"the image of item {i} cannot be decoded "
                                  f"({type(e).__name__})") from None

    # -- batched work ----------------------------------------------------------
    async def _batched(self, query: Query):
        """The query's (distances, ids), searched in a batch with whatever else waits."""
        found = asyncio.get_running_loop().create_future()
        self._waiting.append((query, found))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())
        return await found

    async def _dispatch(self):
        """Search the waiting queries batch after batch until none is left."""
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                results = await self._search([q for q, _ in batch])
            except Exception as e:                    # each caller gets the error
                results = [e] * len(batch)
            for (_, found), result in zip(batch, results):
                if found.done():                      # its request timed out meanwhile
                    continue
                if isinstance(result, Exception):
                    found.set_exception(result)
                else:
                    found.set_result(result)

    async def _search(self, queries: list[Query]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.local is not None:                    # torch and FAISS release the GIL
            return await self.local.run(self.local, queries)
        return await self.remote(queries)


def application(checkpoint, index, *, layout: str = "auto", limits: dict | None = None,
                token: str | None = None, options: dict | None = None) -> serve.Application:
    """The search application in Python (the CLI, tests, benchmarks). `options`:
    {deployment name: Serve deployment options}, as the config's `deployments:`
    would set them (names: SearchAPI; with layout split also QueryEncoder and
    IndexShard0..S-1).

    Refuses, before anything starts, an index of another code length or model."""
    from hashgan_ray.model.checkpoint import fingerprint, read_config

    checkpoint, index = str(Path(checkpoint).resolve()), str(Path(index).resolve())
    bits = read_config(checkpoint)["model"]["bits"]
    manifest = read_manifest(index)
    model_fp = fingerprint(checkpoint)
    check_manifest(manifest, index, bits=bits, checkpoint_fingerprint=model_fp)
    Limits(**(limits or {}))                                    # unknown limit names fail here
    layout, shards = resolve_layout(index, layout), len(manifest["shards"])
    options = dict(options or {})

    def opts(deployment: str, **defaults) -> dict:
        return {**defaults, **options.pop(deployment, {})}

    if layout == "ingress":
        encoder, handles = None, []
        api_cpus = 1.0                                          # it runs the model
    else:
        encoder = QueryEncoder.options(**opts("QueryEncoder")).bind(checkpoint)
        handles = [IndexShard.options(**opts(f"IndexShard{s}", name=f"IndexShard{s}"))
                   .bind(index, s, bits, model_fp) for s in range(shards)]
        api_cpus = 0.25
    app = SearchAPI.options(**opts("SearchAPI", ray_actor_options={"num_cpus": api_cpus})).bind(
        encoder, handles, checkpoint=checkpoint, index=index, checkpoint_fingerprint=model_fp,
        token=token, limits=limits)
    if options:
        raise ValueError(f"options for deployments this layout ({layout}) does not have: "
                         f"{', '.join(sorted(options))}")
    return app


def resolve_layout(index, layout: str = "auto") -> str:
    """`auto` -> `ingress` for a one-shard index, else `split`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if layout == "auto":
        return "ingress" if len(read_manifest(index)["shards"]) == 1 else "split"
    return layout


def read_token(token_file: str | None) -> str | None:
    """The API token: the first line of `token_file`, else $HASHGAN_API_TOKEN, else none."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"token_file {token_file}: cannot be read ({e.strerror})") from None
        if not token:
            raise ValueError(f"token_file {token_file}: is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def build_app(args: dict) -> serve.Application:
    """The application builder of serve/config.yaml (`import_path:
    hashgan_ray.serving.app:build_app`). args: checkpoint, index (paths); optional
    layout (auto | ingress | split), limits (Limits fields), token_file. Where
    Serve builds it (the cluster, for `serve deploy`), the token is read from
    token_file or from HASHGAN_API_TOKEN (set it in the application's
    `runtime_env.env_vars`)."""
    unknown = set(args) - APP_ARGS
    if unknown:
        raise ValueError(f"unknown application args: {', '.join(sorted(unknown))} (replicas "
                         "and resources go in the config's `deployments:` section)")
    return application(args["checkpoint"], args["index"], layout=args.get("layout", "auto"),
                       limits=args.get("limits"), token=read_token(args.get("token_file")))

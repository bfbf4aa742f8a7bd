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

Live updates (layout ingress; docs/serving.md, "Changes while serving"): each
replica serves one `Served` (a model and the index built with it) and replaces
it whole, never in part. It watches the index's manifest and loads a new
version (`index add`, `index remove`, `index build --overwrite`, which may name
a new model) within WATCH_S; `user_config: {checkpoint, index}` (Serve's
lightweight config update) swaps to another pair. A version or pair that does
not load, or does not match, is refused: the old one keeps serving and
/v1/info says why.
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
from dataclasses import asdict, dataclass
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
from hashgan_ray.index.store import (MANIFEST, TARGETS, IndexMismatch, check_manifest,
                                     manifest_version, merge, now, open_shard, read_ids,
                                     read_manifest)
from hashgan_ray.serving.items import ItemNotFound, ItemStore, thumbnail
from hashgan_ray.serving.query import (BadRequest, Limits, Query, Vocabulary, item_id, load_image,
                                       parse_query, search_options, thumbnail_size)

log = logging.getLogger("ray.serve")
TOKEN_ENV = "HASHGAN_API_TOKEN"
LAYOUTS = ("auto", "ingress", "split")
APP_ARGS = {"checkpoint", "index", "layout", "limits", "token_file", "watch_s"}
USER_CONFIG = {"checkpoint", "index"}     # SearchAPI's user_config: the pair to serve
# How often a replica looks at its index's manifest (one stat() when unchanged).
WATCH_S = 1.0
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
    """Layout `ingress`: the encoder and every shard of the index in the ingress
    replica; called in the replica's search thread (SearchThread)."""

    def __init__(self, encoder: Encoder, index):
        self.encoder, self.index = encoder, index

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

    def probe(self) -> None:
        """One search of an all-zero code in each index: the health check's."""
        zero = np.zeros((1, self.encoder.model.bits // 8), np.uint8)
        for target in TARGETS:
            self.index.search(zero, target, 1)


class SearchThread:
    """The replica's one search thread (named SEARCH_THREAD), which runs torch
    and FAISS for every Served the replica holds in turn."""

    def __init__(self, threads: int):
        import faiss

        self.faiss, self.threads = faiss, threads
        self.pool = ThreadPoolExecutor(1, SEARCH_THREAD, initializer=self._start)

    def _start(self) -> None:
        name_os_thread(SEARCH_THREAD)
        # OpenMP's thread count is per calling thread: without this FAISS would
        # get one OpenMP thread per core in this one.
        self.faiss.omp_set_num_threads(self.threads)

    async def run(self, fn, *args):
        """fn(*args) in the search thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


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


class IndexChanging(RuntimeError):
    """The index directory changed again while a version of it was being loaded."""


@dataclass
class Served:
    """What an ingress replica serves: one model and the index built with it,
    loaded together and replaced whole. A request holds one Served from its
    parsing to its items, so a swap never mixes two of them in one answer."""
    checkpoint: str
    index: str
    fingerprint: str           # of the checkpoint's weights; the index was built with it
    version: int               # the index manifest's
    config: dict               # the model's config.json
    vocab: Vocabulary
    search: LocalSearch | RemoteSearch
    items: ItemStore
    info: dict                 # /v1/info's model, index and items

    @property
    def bits(self) -> int:
        return self.config["model"]["bits"]

    @property
    def image_size(self) -> int:
        return self.config["model"]["image_size"]


def load_served(checkpoint: str, index: str, threads: int, *,
                previous: Served | None = None, remote: RemoteSearch | None = None) -> Served:
    """Load a model and its index, refusing a pair that does not match (IndexMismatch).
    The model of `previous` is reused when the checkpoint is the same. The manifest
    is read again at the end: a directory replaced meanwhile (IndexChanging) would
    have given files of two versions."""
    from hashgan_ray.index.store import HashIndex
    from hashgan_ray.model.checkpoint import fingerprint, read_config

    manifest = read_manifest(index)
    model_fp = fingerprint(checkpoint)
    config = read_config(checkpoint)
    bits = config["model"]["bits"]
    check_manifest(manifest, index, bits=bits, checkpoint_fingerprint=model_fp)
    if remote is not None:
        search = remote
    else:
        encoder = (previous.search.encoder if previous is not None and
                   previous.fingerprint == model_fp and isinstance(previous.search, LocalSearch)
                   else Encoder(checkpoint, threads))
        search = LocalSearch(encoder, HashIndex(index, bits=bits, checkpoint_fingerprint=model_fp))
    items = ItemStore(manifest.get("datasets", []), only_ids=read_ids(index))
    if read_manifest(index) != manifest:
        raise IndexChanging(f"{index} changed while it was loaded")
    return Served(checkpoint, index, model_fp, manifest_version(manifest), config,
                  Vocabulary(config["vocabulary"]), search, items, info={
                      "model": {"path": checkpoint, "fingerprint": model_fp, **config["model"]},
                      "index": {"path": index, **manifest},
                      "items": {"count": len(items), "load_s": round(items.load_s, 3)}})


@serve.deployment(max_ongoing_requests=INGRESS_ONGOING)
@serve.ingress(api)
class SearchAPI:
    def __init__(self, encoder, shards: list, *, checkpoint: str, index: str,
                 checkpoint_fingerprint: str, token: str | None = None,
                 limits: dict | None = None, watch_s: float = WATCH_S):
        """encoder None: layout `ingress` (model and index loaded here, kept up to
        date with the index directory every `watch_s` seconds; 0: never)."""
        from hashgan_ray.model.checkpoint import read_config

        self._waiting: list = []                   # (served, query, future) for the next batch
        self._dispatcher: asyncio.Task | None = None
        self.token = token.encode() if token else None
        self.limits = Limits(**(limits or {}))
        self.layout = "ingress" if encoder is None else "split"
        self.threads = replica_threads()
        self.replica = serve.get_replica_context().replica_id.unique_id   # which one answered
        self.search_thread = SearchThread(self.threads) if encoder is None else None
        self.remote = None if encoder is None else RemoteSearch(
            encoder, shards, read_config(checkpoint)["model"]["bits"])
        self._seen = self._manifest_stat(index)    # before loading: a change after it is seen
        follows = self.layout == "ingress" and watch_s > 0
        named = read_manifest(index)["checkpoint"]
        if follows and named["fingerprint"] != checkpoint_fingerprint:
            # The index was rebuilt for another model since the app was built (the
            # CLI's model swap): a replica started now (a lost one replaced, one
            # more by autoscaling) serves what the others moved to, the model the
            # index names (load_served checks that they match).
            log.info("%s names the model %s, which replaced %s", index, named["path"],
                     checkpoint)
            checkpoint = named["path"]
        self.served = load_served(checkpoint, index, self.threads, remote=self.remote)
        if self.served.fingerprint != checkpoint_fingerprint and not follows:
            raise IndexMismatch(f"{checkpoint}: its weights changed after the app was built")
        self._items_lock = threading.Lock()        # the store reads files from worker threads
        self._thumbnails: OrderedDict = OrderedDict()    # (fingerprint, version, id, size)
        self.page = {name: resources.files("hashgan_ray.serving").joinpath("static", name)
                     .read_bytes() for name in PAGE_FILES}
        # Swaps: the watcher thread and reconfigure, one at a time.
        self._swap_lock = threading.Lock()
        self.update = {"state": "serving", "at": now(), "version": self.served.version,
                       "error": None}
        self._stop = threading.Event()
        self._watcher = None
        if self.layout == "ingress" and watch_s > 0:
            self._watcher = threading.Thread(target=self._watch, args=(watch_s,),
                                             name="hashgan-watch", daemon=True)
            self._watcher.start()

    def __del__(self):
        if getattr(self, "_stop", None) is not None:
            self._stop.set()

    # -- live updates -----------------------------------------------------------
    @staticmethod
    def _manifest_stat(index: str):
        """What changes when the manifest is replaced (a new directory, a new file)."""
        try:
            st = os.stat(Path(index) / MANIFEST)
        except OSError:
            return None                            # mid-swap: the directory is being renamed
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _watch(self, every: float) -> None:
        """Load each new version of the served index directory as it appears."""
        while not self._stop.wait(every):
            served = self.served
            seen = self._manifest_stat(served.index)
            if seen is None or seen == self._seen:
                continue
            try:
                manifest = read_manifest(served.index)
            except (OSError, ValueError):
                continue                           # being replaced: look again next time
            changed_model = manifest["checkpoint"]["fingerprint"] != served.fingerprint
            if manifest_version(manifest) == served.version and not changed_model:
                self._seen = seen
                continue
            # a new version; with another model when the index was rebuilt for one
            checkpoint = manifest["checkpoint"]["path"] if changed_model else served.checkpoint
            if self._swap(checkpoint, served.index, "the index directory changed"):
                self._seen = seen

    def _swap(self, checkpoint: str, index: str, why: str) -> bool:
        """Load the pair and serve it from the next request on -> False only when
        the directory changed meanwhile (worth trying again). A pair that fails
        to load or match is refused: the old one stays served."""
        with self._swap_lock:
            old = self.served
            try:
                new = load_served(checkpoint, index, self.threads, previous=old,
                                  remote=self.remote)
            except IndexChanging:
                return False
            except Exception as e:                # mismatched, half-written, unreadable
                log.error("kept index version %d of %s: %s: %s", old.version, old.index,
                          why, e)
                self.update = {"state": "refused", "at": now(), "version": old.version,
                               "error": f"{why}: {type(e).__name__}: {e}"}
                return True                       # not tried again until it changes
            self.served = new                     # one assignment: requests see old or new
            self.update = {"state": "serving", "at": now(), "version": new.version,
                           "error": None}
            log.info("serving index version %d of %s (model %s...): %s", new.version,
                     new.index, new.fingerprint[:12], why)
            return True

    async def reconfigure(self, user_config: dict) -> None:
        """Serve's lightweight update (`user_config` in the config's SearchAPI entry):
        {checkpoint, index} swaps to that pair in place, without a new replica."""
        if set(user_config or {}) != USER_CONFIG:
            self.update = {"state": "refused", "at": now(), "version": self.served.version,
                           "error": f"user_config needs exactly {sorted(USER_CONFIG)}, got "
                                    f"{sorted(user_config or {})}"}
            log.error("user_config refused: %s", self.update["error"])
            return
        checkpoint, index = (str(Path(user_config[k]).resolve()) for k in ("checkpoint", "index"))
        if (checkpoint, index) == (self.served.checkpoint, self.served.index):
            return
        if self.layout == "split":
            self.update = {"state": "refused", "at": now(), "version": self.served.version,
                           "error": "layout split swaps models by a redeploy (changed args)"}
            log.error("user_config refused: %s", self.update["error"])
            return
        for _ in range(3):                         # the directory may be mid-swap
            if await asyncio.to_thread(self._swap, checkpoint, index, "user_config"):
                break
        self._seen = self._manifest_stat(self.served.index)

    async def check_health(self) -> None:
        """Serve's health check: the watcher runs, and the served index answers a
        one-code search in the search thread. A replica whose index failed to
        load never gets here: its constructor raised and Serve replaces it."""
        if self._watcher is not None and not self._watcher.is_alive():
            raise RuntimeError("the index watcher thread stopped")
        if self.search_thread is not None:
            await self.search_thread.run(self.served.search.probe)

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
        return {"status": "ok", "index_version": self.served.version}

    @api.get("/v1/info")
    async def info(self, request: Request):
        return await self._guarded(request, lambda: self._ok(self._info()))

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

    def _info(self) -> dict:
        return {**self.served.info, "layout": self.layout, "limits": asdict(self.limits),
                "live_updates": self._watcher is not None, "update": self.update,
                "replica": self.replica}

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

    async def _parse(self, served: Served, body, search: bool) -> Query:
        """Off the event loop where it decodes an image or reads the item store."""
        parse = functools.partial(parse_query, body, served.vocab, served.image_size,
                                  self.limits, search=search, bits=served.bits,
                                  items=served.items)
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
        started, served = time.perf_counter(), self.served
        query = await self._parse(served, await self._json(request), search=True)
        return await self._answer(request, served, query, await self._batched(served, query),
                                  started)

    async def _search_upload(self, request: Request):
        started, served = time.perf_counter(), self.served
        form = await self._form(request)
        upload = form.get("file") or form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest(400, "upload the image as a multipart file field named 'file'")
        data = await upload.read()
        query = Query("image", image=await asyncio.to_thread(load_image, data,
                                                             served.image_size, self.limits))
        search_options(query, {k: form.get(k) for k in ("target", "k", "radius", "include")},
                       self.limits, served.bits, form=True)
        return await self._answer(request, served, query, await self._batched(served, query),
                                  started)

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
        served = self.served
        query = await self._parse(served, await self._json(request), search=False)
        if self.search_thread is not None:
            code = (await self.search_thread.run(served.search.encode, [query]))[0]
        else:
            code = (await self.remote.encode([query]))[0]
        return {"code": code.tobytes().hex(), "bits": served.bits, "modality": query.modality,
                "unknown_words": query.unknown_words}

    async def _answer(self, request: Request, served: Served, query: Query, found,
                      started: float):
        D, I = found
        keep = I >= 0                                      # approximate kinds may find fewer
        if query.radius is not None:
            keep &= D <= query.radius
        results = [{"id": int(i), "distance": int(d)}
                   for d, i in zip(D[keep][:query.k], I[keep][:query.k])]
        if query.include:
            await asyncio.to_thread(self._with_items, self._add_items, served, results,
                                    query.include, request.scope.get("root_path", ""))
        return {"results": results, "bits": served.bits, "target": query.target,
                "took_ms": round((time.perf_counter() - started) * 1000, 3),
                "unknown_words": query.unknown_words}

    @staticmethod
    def _item(served: Served, i: int, root: str) -> dict:
        """The item's JSON; `name` and `emoji` only where its dataset has them."""
        item = served.items.get(i)
        named = {k: v for k in OPTIONAL_COLUMNS if (v := getattr(item, k)) is not None}
        return {"id": i, **named, "labels": item.labels, "words": item.words,
                "image": f"{root}/v1/items/{i}/image"}

    def _add_items(self, served: Served, results: list[dict], include: tuple[str, ...],
                   root: str) -> None:
        """Each result gets the `include` fields of its item (null where the item's
        dataset is not reachable)."""
        for r in results:
            try:
                item = self._item(served, r["id"], root)
            except ItemNotFound:
                item = {}
            r.update({name: item.get(name) for name in include})

    async def _item_json(self, request: Request, item: str):
        i = item_id(item)
        try:
            return await asyncio.to_thread(self._with_items, self._item, self.served, i,
                                           request.scope.get("root_path", ""))
        except ItemNotFound as e:
            raise BadRequest(404, str(e)) from None

    async def _item_image(self, request: Request, item: str):
        i, size = item_id(item), thumbnail_size(request.query_params.get("size"))
        served = self.served
        key = (served.fingerprint, served.version, i, size)
        data = self._thumbnails.get(key)
        if data is None:
            data = await asyncio.to_thread(self._make_thumbnail, served, i, size)
            self._thumbnails[key] = data
            if len(self._thumbnails) > THUMBNAILS_CACHED:
                self._thumbnails.popitem(last=False)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    def _make_thumbnail(self, served: Served, i: int, size: int) -> bytes:
        try:
            data = self._with_items(served.items.image_bytes, i)
        except ItemNotFound as e:
            raise BadRequest(404, str(e)) from None
        try:
            return thumbnail(data, size)
        except Exception as e:                     # a linked file replaced by something else
            raise BadRequest(404, f"the image of item {i} cannot be decoded "
                                  f"({type(e).__name__})") from None

    # -- batched work ----------------------------------------------------------
    async def _batched(self, served: Served, query: Query):
        """The query's (distances, ids) in `served`, searched in a batch with whatever
        else waits for the same Served."""
        found = asyncio.get_running_loop().create_future()
        self._waiting.append((served, query, found))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())
        return await found

    async def _dispatch(self):
        """Search the waiting queries batch after batch until none is left."""
        while self._waiting:
            served = self._waiting[0][0]
            # the queries of one Served: across a swap, the old one's go first
            n = next((i for i, w in enumerate(self._waiting[:MAX_BATCH]) if w[0] is not served),
                     min(MAX_BATCH, len(self._waiting)))
            batch, self._waiting = self._waiting[:n], self._waiting[n:]
            try:
                results = await self._search(served, [q for _, q, _ in batch])
            except Exception as e:                    # each caller gets the error
                results = [e] * len(batch)
            for (_, _, found), result in zip(batch, results):
                if found.done():                      # its request timed out meanwhile
                    continue
                if isinstance(result, Exception):
                    found.set_exception(result)
                else:
                    found.set_result(result)

    async def _search(self, served: Served,
                      queries: list[Query]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.search_thread is not None:            # torch and FAISS release the GIL
            return await self.search_thread.run(served.search, queries)
        return await self.remote(queries)


def application(checkpoint, index, *, layout: str = "auto", limits: dict | None = None,
                token: str | None = None, options: dict | None = None,
                watch_s: float = WATCH_S) -> serve.Application:
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
        token=token, limits=limits, watch_s=watch_s)
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
    layout (auto | ingress | split), limits (Limits fields), token_file, watch_s
    (how often a replica looks for a new index version; 0: never). Where
    Serve builds it (the cluster, for `serve deploy`), the token is read from
    token_file or from HASHGAN_API_TOKEN (set it in the application's
    `runtime_env.env_vars`)."""
    unknown = set(args) - APP_ARGS
    if unknown:
        raise ValueError(f"unknown application args: {', '.join(sorted(unknown))} (replicas "
                         "and resources go in the config's `deployments:` section)")
    return application(args["checkpoint"], args["index"], layout=args.get("layout", "auto"),
                       limits=args.get("limits"), token=read_token(args.get("token_file")),
                       watch_s=float(args.get("watch_s", WATCH_S)))

"""The Ray Serve application: SearchAPI (FastAPI ingress) -> QueryEncoder -> IndexShard x S.

    serve run serve/config.yaml                        # or
    hashgan-ray serve --checkpoint RUN/model --index INDEX_DIR [--host 127.0.0.1] [--port 8000]

The ingress validates each request (hashgan_ray.serving.query) and queues it
for `_search`, one batch at a time (see MAX_BATCH): one batch of concurrent
queries makes one call to the encoder per modality and one call per shard and
target, so the encoder and FAISS see matrices rather than single queries. The
encoder batches again across ingress replicas (`@serve.batch`). Shards hold
contiguous ranges of the database and their answers are merged by distance
(hashgan_ray.index.store.merge).
"""

import asyncio
import hmac
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from hashgan_ray.index.store import TARGETS, merge, open_shard, read_manifest, check_manifest
from hashgan_ray.serving.query import (BadRequest, Limits, Query, Vocabulary, load_image,
                                       parse_query, search_options)

log = logging.getLogger("ray.serve")
TOKEN_ENV = "HASHGAN_API_TOKEN"
# Serve queues what exceeds a replica's max_ongoing_requests in the proxy, where
# it cannot be batched: let the ingress hold many, it only awaits.
INGRESS_ONGOING, BACKEND_ONGOING = 256, 64
# Ingress batching without a timer: one batch is in flight at a time, and the
# queries that arrive meanwhile make the next one (up to MAX_BATCH). A lone query
# goes at once; under load batches grow by themselves. (serve.batch closes a
# batch after a fixed wait and queues it behind the running one: short waits
# made batches of 1-2 at 8 connections, long ones delayed every query.)
MAX_BATCH = 64

api = FastAPI(title="hashgan-ray search", docs_url=None, redoc_url=None, openapi_url=None)


def error(status: int, message: str, **extra) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, "status": status, **extra}, status, headers=headers)


@api.exception_handler(HTTPException)
async def _http_error(request, exc: HTTPException):   # unknown path, wrong method
    return error(exc.status_code, str(exc.detail))


@serve.deployment(max_ongoing_requests=BACKEND_ONGOING)
class QueryEncoder:
    """The model, batching concurrent queries: each call brings a list of
    queries (one ingress batch) and `@serve.batch` merges calls."""

    def __init__(self, checkpoint: str, threads: int = 1):
        import torch

        from hashgan_ray.model.checkpoint import load_model
        from hashgan_ray.model.hashgan import WordListEncoder, pack_codes

        torch.set_num_threads(threads)
        self.torch, self.pack = torch, pack_codes
        self.model, _ = load_model(checkpoint)
        self.encode_words = WordListEncoder(self.model)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def encode_text(self, groups: list[list[list[int]]]) -> list[np.ndarray]:
        codes = self.pack(self.encode_words([w for g in groups for w in g]))  # (n, bits/8)
        return np.split(codes, np.cumsum([len(g) for g in groups])[:-1])

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def encode_image(self, groups: list[np.ndarray]) -> list[np.ndarray]:
        with self.torch.no_grad():
            codes = self.pack(self.model.encode_image(
                self.torch.as_tensor(np.concatenate(groups))))               # (n, bits/8)
        return np.split(codes, np.cumsum([len(g) for g in groups])[:-1])


@serve.deployment(max_ongoing_requests=BACKEND_ONGOING)
class IndexShard:
    """One shard's FAISS indexes; refuses to start on an index of another model."""

    def __init__(self, index_dir: str, shard: int, bits: int, checkpoint_fingerprint: str,
                 threads: int = 1):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.shard = open_shard(index_dir, shard, bits=bits,
                                checkpoint_fingerprint=checkpoint_fingerprint)

    def search(self, codes: np.ndarray, target: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.shard.search(codes, target, k)


@serve.deployment(max_ongoing_requests=INGRESS_ONGOING)
@serve.ingress(api)
class SearchAPI:
    def __init__(self, encoder, shards: list, *, checkpoint: str, index: str,
                 checkpoint_fingerprint: str, token: str | None = None,
                 limits: dict | None = None):
        from hashgan_ray.model.checkpoint import read_config

        self.encoder, self.shards = encoder, shards
        self._waiting: list = []                   # (query, future) for the next batch
        self._dispatcher: asyncio.Task | None = None
        self.token = token.encode() if token else None
        self.limits = Limits(**(limits or {}))
        config = read_config(checkpoint)
        self.vocab = Vocabulary(config["vocabulary"])
        self.bits, self.image_size = config["model"]["bits"], config["model"]["image_size"]
        self.info = {"model": {"path": checkpoint, "fingerprint": checkpoint_fingerprint,
                               **config["model"]},
                     "index": {"path": index, **read_manifest(index)},
                     "limits": asdict(self.limits)}

    # -- endpoints ------------------------------------------------------------
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

    # -- request handling -----------------------------------------------------
    async def _guarded(self, request: Request, work):
        """Auth, then `work()` within the time limit; every failure becomes a JSON
        error and nothing escapes to crash the replica."""
        try:
            self._authorize(request)
            return await asyncio.wait_for(work(), self.limits.request_timeout_s)
        except BadRequest as e:
            return error(e.status, e.message, **e.extra)
        except asyncio.TimeoutError:
            return error(504, f"the search took longer than {self.limits.request_timeout_s} s")
        except Exception:
            log.exception("request failed")
            return error(500, "internal error: the request could not be answered")

    async def _ok(self, payload):
        return payload

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
            return await asyncio.wait_for(read(), self.limits.body_timeout_s)
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
        args = (body, self.vocab, self.image_size, self.limits)
        if isinstance(body, dict) and body.get("image") is not None:   # decoding: off the loop
            return await asyncio.to_thread(parse_query, *args, search=search, bits=self.bits)
        return parse_query(*args, search=search, bits=self.bits)

    async def _search_json(self, request: Request):
        started = time.perf_counter()
        query = await self._parse(await self._json(request), search=True)
        return self._answer(query, await self._batched(query), started)

    async def _search_upload(self, request: Request):
        started = time.perf_counter()
        form = await self._form(request)
        upload = form.get("file") or form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest(400, "upload the image as a multipart file field named 'file'")
        data = await upload.read()
        query = Query("image", image=await asyncio.to_thread(load_image, data, self.image_size,
                                                             self.limits))
        search_options(query, {k: form.get(k) for k in ("target", "k", "radius")},
                       self.limits, self.bits, form=True)
        return self._answer(query, await self._batched(query), started)

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
        code = (await self._encode([query]))[0]
        return {"code": code.tobytes().hex(), "bits": self.bits, "modality": query.modality,
                "unknown_words": query.unknown_words}

    def _answer(self, query: Query, found: tuple[np.ndarray, np.ndarray], started: float):
        D, I = found
        keep = I >= 0                                      # approximate kinds may find fewer
        if query.radius is not None:
            keep &= D <= query.radius
        D, I = D[keep][:query.k], I[keep][:query.k]
        return {"results": [{"id": int(i), "distance": int(d)} for d, i in zip(D, I)],
                "bits": self.bits, "target": query.target,
                "took_ms": round((time.perf_counter() - started) * 1000, 3),
                "unknown_words": query.unknown_words}

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
        """One encoder call per modality and one call per shard and target."""
        codes = await self._encode(queries)                                 # (n, bits/8)
        found: list = [None] * len(queries)
        for target in TARGETS:
            rows = [i for i, q in enumerate(queries) if q.target == target]
            if not rows:
                continue
            k = max(queries[i].k for i in rows)
            parts = await asyncio.gather(*[s.search.remote(codes[rows], target, k)
                                           for s in self.shards])
            D, I = merge(parts, k)
            for j, i in enumerate(rows):
                found[i] = (D[j], I[j])
        return found

    async def _encode(self, queries: list[Query]) -> np.ndarray:
        """Packed codes (n, bits/8) of the queries, one encoder call per modality."""
        texts = [i for i, q in enumerate(queries) if q.modality == "text"]
        images = [i for i, q in enumerate(queries) if q.modality == "image"]
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


def build_app(args: dict) -> serve.Application:
    """The application for `serve run` (args from serve/config.yaml) and
    `hashgan-ray serve`. args: checkpoint, index (paths); optional encoder_replicas,
    encoder_cpus, shard_cpus, ingress_cpus, limits (Limits fields), shard_resources (a
    list, one dict of custom Ray resources per shard: shard s runs on a node that has
    shard_resources[s], e.g. [{"shards_a": 1}, {"shards_b": 1}] over nodes started with
    `--resources '{"shards_a": 1}'` and `'{"shards_b": 1}'`). The API token comes from
    HASHGAN_API_TOKEN where the application is built.

    Refuses, before anything starts, an index of another code length or model."""
    from hashgan_ray.model.checkpoint import fingerprint, read_config

    unknown = set(args) - {"checkpoint", "index", "encoder_replicas", "encoder_cpus",
                           "shard_cpus", "ingress_cpus", "limits", "shard_resources"}
    if unknown:
        raise ValueError(f"unknown application args: {', '.join(sorted(unknown))}")
    checkpoint = str(Path(args["checkpoint"]).resolve())
    index = str(Path(args["index"]).resolve())
    bits = read_config(checkpoint)["model"]["bits"]
    manifest = read_manifest(index)
    model_fp = fingerprint(checkpoint)
    check_manifest(manifest, index, bits=bits, checkpoint_fingerprint=model_fp)
    Limits(**args.get("limits", {}))                            # unknown limit names fail here
    encoder_cpus = float(args.get("encoder_cpus", 1.0))
    shard_cpus = float(args.get("shard_cpus", 0.25))
    placed = args.get("shard_resources") or [{}] * len(manifest["shards"])
    if len(placed) != len(manifest["shards"]):
        raise ValueError(f"shard_resources has {len(placed)} entries for "
                         f"{len(manifest['shards'])} shards")
    encoder = QueryEncoder.options(
        num_replicas=int(args.get("encoder_replicas", 1)),
        ray_actor_options={"num_cpus": encoder_cpus}).bind(checkpoint, max(1, int(encoder_cpus)))
    shards = [IndexShard.options(name=f"IndexShard{s}", ray_actor_options={
                  "num_cpus": shard_cpus, "resources": dict(placed[s])})
              .bind(index, s, bits, model_fp, max(1, int(shard_cpus)))
              for s in range(len(manifest["shards"]))]
    return SearchAPI.options(ray_actor_options={"num_cpus": float(args.get("ingress_cpus", 0.25))}
                             ).bind(encoder, shards, checkpoint=checkpoint, index=index,
                                    checkpoint_fingerprint=model_fp,
                                    token=os.environ.get(TOKEN_ENV) or None,
                                    limits=args.get("limits"))

"""Ray Serve entry point of hashgan-ray's search service, for a checkout.

    serve run serve/config.yaml          # imports hashgan_ray.serving.app:build_app
    serve run serve.app:app checkpoint=RUN/model index=INDEX_DIR   # from the repository root

`app` is the application builder (hashgan_ray.serving.app.build_app): Serve
calls it with the `args` of a config file (or the key=value pairs above).
"""
from hashgan_ray.serving.app import build_app

app = build_app

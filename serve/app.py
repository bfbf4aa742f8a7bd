"""Ray Serve entry point of hashgan-ray's search service.

    serve run serve/config.yaml          # from the repository root
    serve run serve.app:app checkpoint=RUN/model index=INDEX_DIR

`app` is the application builder (hashgan_ray.serving.app.build_app): Serve
calls it with the `args` of config.yaml (or the key=value pairs above).
"""
from hashgan_ray.serving.app import build_app

app = build_app

#!/usr/bin/env bash
# The wheel, outside the checkout (`make wheel-test`; docs/install.md): build it
# from a clean copy of the tree, install it with constraints.txt into a fresh venv
# under /tmp, and from a directory outside the checkout run what a user runs:
# --version, a tiny `data synth`, a one-epoch `train`, `index build`, the default
# search space, and the Serve application built from serve/config.yaml by Serve
# (`serve run`, import path hashgan_ray.serving.app:build_app) answering a search.
# Proves that imports, entry points and package data work without the source tree.
#
#   WHEEL_TEST_DIR=DIR  work there (kept; its venv is reused if already made)
#   PYTHON=python3.12   the interpreter of the venv (3.11 is the one tested here)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [[ -n "${WHEEL_TEST_DIR:-}" ]]; then
    WORK="$WHEEL_TEST_DIR"; mkdir -p "$WORK"
else
    WORK="$(mktemp -d /tmp/hashgan-wheel-test.XXXXXX)"
    trap 'rm -rf "$WORK"' EXIT
fi
case "$WORK" in "$REPO"/*) echo "WHEEL_TEST_DIR must be outside the checkout" >&2; exit 2;; esac
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "a clean copy of the tree, and its wheel"
rm -rf "$WORK/src" "$WORK/dist" "$WORK/run"
mkdir -p "$WORK/src" "$WORK/run"
# Tracked and untracked-but-not-ignored files only: a stale build/ or egg-info of
# the checkout never reaches the wheel.
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -e "$f" || -L "$f" ]] && printf '%s\0' "$f"; done \
    | tar --null -cf - -T -) | tar -xf - -C "$WORK/src"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/hashgan_ray-*.whl)"
echo "$WHEEL"
"$PYTHON" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
shipped = [n for n in names if "cluster_local" in n or n.startswith("tests/")]
assert not shipped, f"the wheel ships test support: {shipped}"
for data in ("hashgan_ray/tuning/space.yaml", "hashgan_ray/serving/static/index.html"):
    assert data in names, f"the wheel lacks {data}"
assert any(n.endswith("licenses/LICENSE") for n in names), "the wheel lacks LICENSE"
EOF

step "a fresh venv, the wheel installed with constraints.txt"
test -x "$WORK/venv/bin/python" || "$PYTHON" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/python" -m pip install --quiet --upgrade pip
start=$SECONDS
"$V/python" -m pip install --quiet --force-reinstall --no-deps "$WHEEL"
"$V/python" -m pip install --quiet -c "$REPO/constraints.txt" "$WHEEL"
echo "installed in $((SECONDS - start)) s"
"$V/python" -m pip check
if "$V/python" -m pip list 2>/dev/null | grep -iE "^faiss-gpu|-cu12 "; then
    echo "a CPU install brought GPU FAISS or its CUDA 12 libraries" >&2; exit 1
fi

cd "$WORK/run"                  # outside the checkout from here on
export PYTHONNOUSERSITE=1 RAY_AUTH_MODE=token
unset PYTHONPATH

step "--version and where the package comes from"
"$V/hashgan-ray" --version
"$V/python" - "$REPO" <<'EOF'
import importlib.util, sys
from pathlib import Path
import hashgan_ray
from hashgan_ray.tuning.search import default_space_path, read_space
repo, package = Path(sys.argv[1]), Path(hashgan_ray.__file__).resolve()
assert "site-packages" in package.parts and repo not in package.parents, package
assert importlib.util.find_spec("hashgan_ray.cluster_local") is None, "test support shipped"
space = read_space(default_space_path())
assert Path(default_space_path()).resolve().is_relative_to(package.parent) and space
print(f"package {package.parent}; default search space {sorted(space)}")
EOF

step "data synth, train (1 epoch), index build"
"$V/hashgan-ray" data synth --out data --pairs 240 --seed 0 --query 24 --train 120
"$V/hashgan-ray" train --data data --out train-run --epochs 1 --workers 1 --num-cpus 2 \
    --batch-size 16 --bits 16 --text-hidden 64 --text-features 32 --val-database 60
"$V/hashgan-ray" index build --checkpoint train-run/model --data data --out index --num-cpus 2

step "the Serve application from serve/config.yaml, built by Serve"
cp "$REPO/serve/config.yaml" serve-config.yaml
"$V/python" - <<'EOF'
import json, os, socket, time, urllib.request
import ray, yaml
from click.testing import CliRunner
from ray import serve
from ray.serve.scripts import cli

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
config = yaml.safe_load(open("serve-config.yaml"))
config["http_options"]["port"] = port
(app,) = config["applications"]
assert app["import_path"] == "hashgan_ray.serving.app:build_app"
app["args"].update(checkpoint=os.path.abspath("train-run/model"), index=os.path.abspath("index"))
app["runtime_env"] = {"env_vars": {"HASHGAN_API_TOKEN": "wheel-test"}}
for d in app.get("deployments", []):
    d.setdefault("ray_actor_options", {})["num_cpus"] = 0.5
yaml.safe_dump(config, open("serve-config.yaml", "w"))
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    result = CliRunner().invoke(cli, ["run", "--non-blocking", "serve-config.yaml"])
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 300
    while (status := serve.status().applications.get("hashgan")) is None or status.status != "RUNNING":
        assert status is None or status.status not in ("DEPLOY_FAILED", "UNHEALTHY"), status
        assert time.monotonic() < deadline, status
        time.sleep(1)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/search", json.dumps({"text": ["sky"], "k": 3}).encode(),
        {"Authorization": "Bearer wheel-test", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:         # raises on a non-2xx
        results = json.load(r)["results"]
    assert len(results) == 3, results
    print(f"served from the installed package: {results[0]}")
finally:
    serve.shutdown()
    ray.shutdown()
EOF
step "wheel test passed"

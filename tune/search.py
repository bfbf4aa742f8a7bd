"""Ray Tune search over margin, lr and α: `python tune/search.py ...` = `hashgan-ray tune ...`.

    python tune/search.py --data DIR --out OUT --samples 16 --epochs 20 [--workers-per-trial 1] \
        [--space tune/space.yaml]
    ray job submit --working-dir . -- python tune/search.py --data /abs/data --out /abs/out ...

The logic is in hashgan_ray/tuning/search.py; the default search space in tune/space.yaml beside
this file (a link to hashgan_ray/tuning/space.yaml, which the package ships).
"""
import sys
from pathlib import Path

# Import the package from this checkout (as `python -m hashgan_ray.train` does from the
# working directory), so a job runs the code it uploaded with --working-dir.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hashgan_ray.cli import main  # noqa: E402

sys.exit(main(["tune", *sys.argv[1:]]))

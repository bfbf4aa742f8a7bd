"""`python -m hashgan_ray.train ...` = `hashgan-ray train ...`, for `ray job submit`:

    ray job submit --working-dir . -- python -m hashgan_ray.train --data DIR --out RUN_DIR
"""
import sys

from hashgan_ray.cli import main

sys.exit(main(["train", *sys.argv[1:]]))

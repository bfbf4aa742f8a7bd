"""`python -m hashgan_ray ...` = `hashgan-ray ...`, for `ray job submit --working-dir .`,
where the checkout is imported but its console script is not installed:

    ray job submit --working-dir . -- python -m hashgan_ray train --data DIR --out RUN_DIR
"""
import sys

from hashgan_ray.cli import main

sys.exit(main())

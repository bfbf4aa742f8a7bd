"""The paper's experiments: the grid of training runs (grid.py) and its report (report.py)."""

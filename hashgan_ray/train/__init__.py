"""Training: plain PyTorch steps (steps.py) and their Ray Train wiring (loop.py)."""

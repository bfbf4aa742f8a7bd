"""Hyperparameter search with Ray Tune (search.py); the default space is space.yaml."""

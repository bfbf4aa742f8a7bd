"""Evaluation: retrieval metrics (metrics.py, plain NumPy/FAISS) and the
evaluation of a trained model on a dataset (evaluate.py)."""

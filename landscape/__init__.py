"""Measurements on models and their outputs: tensors and batches in, numbers and small dataclasses out."""

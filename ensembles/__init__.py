"""Concrete ensembles: models, data, run folders, corruptions, optimizers, the trainer."""

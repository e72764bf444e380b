"""sharpdiv from Python: one import for notebooks and scripts.

Every name here is the real function or class of the module that defines it (documented there,
``help(sharpdiv.worst_case_sharpness)`` shows it), imported on first use so that ``import
sharpdiv`` stays quick and torch loads only when a measurement is asked for::

    import sharpdiv
    result = sharpdiv.worst_case_sharpness(model, loss_fn, loader, rho=0.5, n_batches=20)

``python -m sharpdiv`` runs the command-line interface (``sharpdiv --help``).
"""
from __future__ import annotations

import importlib

# name -> (module, attribute in it); the attribute is the name unless it differs
_EXPORTS = {
    # sharpness, curvature, Fisher (landscape: measurements on a model and batches)
    "worst_case_sharpness": ("landscape.sharpness", None),
    "average_case_sharpness": ("landscape.sharpness", None),
    "SharpnessResult": ("landscape.sharpness", None),
    "hessian_trace": ("landscape.hessian", None),
    "hessian_eigenvalues": ("landscape.hessian", None),
    "hessian_spectral_density": ("landscape.hessian", None),
    "per_sample_fisher_trace": ("landscape.fisher", None),
    # diversity, calibration and ensemble metrics (on member logits)
    "disagreement_error_ratio": ("landscape.diversity", None),
    "disagreement_matrix": ("landscape.diversity", None),
    "pairwise_kl": ("landscape.diversity", None),
    "pairwise_kl_matrix": ("landscape.diversity", None),
    "prediction_variance": ("landscape.diversity", None),
    "accuracy": ("landscape.calibration", None),
    "brier_score": ("landscape.calibration", None),
    "expected_calibration_error": ("landscape.calibration", None),
    "negative_log_likelihood": ("landscape.calibration", None),
    "reliability_bins": ("landscape.calibration", None),
    "combine": ("landscape.ensemble", None),
    "ensemble_predictions": ("landscape.ensemble", None),
    "ensemble_error": ("landscape.ensemble", None),
    "mean_member_error": ("landscape.ensemble", None),
    "ensemble_improvement_rate": ("landscape.ensemble", None),
    "divide_by_mean_member_error": ("landscape.ensemble", None),
    # connectivity between members
    "loss_barrier": ("landscape.connectivity", None),
    "barrier_matrix": ("landscape.connectivity", None),
    "pair_connectivity": ("landscape.connectivity", None),
    "interpolate": ("landscape.connectivity", None),
    "interpolated_model": ("landscape.connectivity", None),
    "plane": ("landscape.connectivity", None),
    "recompute_batchnorm_statistics": ("landscape.connectivity", None),
    # permutation alignment (before barriers: one basin or many), with the groups of any model
    "weight_matching": ("landscape.alignment", None),
    "activation_matching": ("landscape.alignment", None),
    "PermutationSpec": ("landscape.alignment", None),
    "permutation_spec": ("ensembles.models.permutation_specs", None),
    # robustness
    "robust_accuracy": ("landscape.robustness", None),
    # models
    "build_model": ("ensembles.models.zoo", "build"),
    "load_weights": ("ensembles.models.zoo", None),
    # run folders: train, import, measure, evaluate, read, report
    "TrainingSettings": ("ensembles.training.trainer", None),
    "train": ("ensembles.training.trainer", None),
    "import_checkpoints": ("ensembles.runs.checkpoint_import", None),
    "load_run": ("ensembles.runs.run_folder", None),
    "read_results": ("ensembles.runs.run_folder", None),
    "measure_sharpness": ("ensembles.studies.measurements", None),
    "measure_hessian": ("ensembles.studies.measurements", None),
    "measure_fisher": ("ensembles.studies.measurements", None),
    "measure_connectivity": ("ensembles.studies.measurements", None),
    "evaluate": ("ensembles.studies.evaluation", "evaluate_runs"),
    "evaluate_robustness": ("ensembles.studies.evaluation", None),
    "report": ("reports.site", "write_report"),
    "InputError": ("landscape.errors", None),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sharpdiv' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if __name__ == "__main__":
    from cli import main

    main(prog_name="sharpdiv")

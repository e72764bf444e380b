"""Theory against simulation: the data of SharpBalance §3 and App. C.3 (Lu et al., NeurIPS 2024).

Each figure sweeps SAM's radius ρ (and, for Figs. 1b and 9, the number of iterations k) on the
random quadratic problem of :mod:`landscape.theory` and computes the diversity against the
sharpness, as Theorems 1 and 2 predict them and as simulated (with standard errors over data
sets). :func:`write_theory_table` stores the points as a long-format CSV, one row per point and
quantity; :mod:`reports.theory` draws the figure and reads findings from that stored table.

- ``"2"``: Theorem 1 (SAM), both sharpness bounds, ρ from 0 to 1, k = 4, η = 0.1.
- ``"1b"``: SAM and SharpBalance (Theorems 1 and 2, upper bounds) on one grid: η = 0.3,
  k ∈ {1, 2, 4, 8, 16, 32}, ρ from 0 to 1, one line per k.
- ``"9"``: Theorem 2; (a) ρ from 1.0 to 0.4 at k = 8, (b) k from 1 to 15 at ρ = 0.5; η = 0.3.
- ``"10"``: Theorem 1, k ∈ {2, 4, 8} × η ∈ {0.1, 0.05, 0.01}, ρ from 0.3 to 0.5.
- ``"11"``: Theorem 2 (S = 10), k ∈ {4, 8, 12} × η ∈ {0.5, 0.3, 0.1}, ρ from 0.3 to 0.5.

η and ρ are in the paper's units: the step and radius for the objective divided by
``n_tr/d_in`` (unit-mean Hessian). The paper's grids diverge in the theorem's own units
(``λmax(AᵀA) ≈ 31`` for 3000×150), so the theorem is evaluated at ``η·d_in/n_tr`` and
``ρ·d_in/n_tr``, which gives the very same SAM iterates (docs/theory.md). Parameters the paper does not give
(k, η for Figs. 1b, 2, 9; σ, ‖θ*‖, ρ0) are choices recorded there.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
import sys
from typing import Literal

import pandas as pd
from tqdm.auto import tqdm

from ensembles.runs.files import atomic_path
from landscape.errors import InputError
from landscape.theory import QuadraticSetting, draw_problems, simulate_tradeoff, theorem_1, theorem_2

__all__ = ["FIGURES", "figure_title", "quick_setting", "theory_table", "theory_table_path", "write_theory_table"]

FIGURES = ("1b", "2", "9", "10", "11")
METHOD_NAMES = {"sam": "SAM", "sharpbalance": "SharpBalance"}
THEOREMS = {"sam": "Theorem 1", "sharpbalance": "Theorem 2"}


def quick_setting() -> QuadraticSetting:
    """A configuration small enough for tests: 300×30 training data, 8 data sets × 20 initialisations."""
    return QuadraticSetting(train_samples=300, test_samples=100, input_dim=30, datasets=8, initializations=20,
                            partitions=10)


@dataclass(frozen=True)
class _Panel:
    """One axes: which methods, which (k, η, ρ) points, and what varies along a line."""

    title: str
    methods: tuple[str, ...]
    points: tuple[tuple[int, float, float], ...]
    along: Literal["rho", "iterations"] = "rho"


def _grid(low: float, high: float, count: int) -> list[float]:
    return [round(low + (high - low) * i / (count - 1), 10) for i in range(count)]


def _panels(figure: str, quick: bool) -> tuple[str, list[_Panel]]:
    """The title and panels of a figure (App. C.3 grids; smaller ones when ``quick``)."""
    if figure == "2":
        rhos = _grid(0.0, 1.0, 5 if quick else 11)
        return ("Theorem 1 against simulation (SAM), k = 4, η = 0.1",
                [_Panel("SAM", ("sam",), tuple((4, 0.1, rho) for rho in rhos))])
    if figure == "1b":
        rhos = _grid(0.0, 1.0, 3 if quick else 5)
        ks = (1, 4, 16) if quick else (1, 2, 4, 8, 16, 32)
        return ("Sharpness-diversity trade-off: SAM (Theorem 1) and SharpBalance (Theorem 2), η = 0.3",
                [_Panel("lines: ρ from 0 to 1 for each k", ("sam", "sharpbalance"),
                        tuple((k, 0.3, rho) for k in ks for rho in rhos))])
    if figure == "9":
        rhos = _grid(1.0, 0.4, 3 if quick else 7)
        ks = (1, 5, 10, 15) if quick else tuple(range(1, 16))
        return ("Theorem 2 against simulation (SharpBalance), η = 0.3",
                [_Panel("(a) ρ from 1.0 to 0.4, k = 8", ("sharpbalance",), tuple((8, 0.3, rho) for rho in rhos)),
                 _Panel("(b) k from 1 to 15, ρ = 0.5", ("sharpbalance",), tuple((k, 0.3, 0.5) for k in ks),
                        along="iterations")])
    if figure in ("10", "11"):
        rhos = _grid(0.5, 0.3, 3 if quick else 5)
        method, ks, etas = (("sam", (2, 4, 8), (0.1, 0.05, 0.01)) if figure == "10"
                            else ("sharpbalance", (4, 8, 12), (0.5, 0.3, 0.1)))
        if quick:
            ks, etas = ks[::2], etas[::2]
        return (f"{THEOREMS[method]} against simulation ({METHOD_NAMES[method]}), ρ from 0.5 to 0.3",
                [_Panel(f"k = {k}, η = {eta}", (method,), tuple((k, eta, rho) for rho in rhos))
                 for k in ks for eta in etas])
    raise InputError(f"unknown figure {figure!r}; choose one of {', '.join(FIGURES)}")


def _theorem_units(value_in_paper_units: float, setting: QuadraticSetting) -> Fraction:
    """η or ρ for ``f = ½‖A(θ−θ*)‖²`` from the value for ``f·d_in/n_tr``: multiply by ``d_in/n_tr``."""
    return Fraction(repr(float(value_in_paper_units))) / setting.ratio


def theory_table(figure: str, *, quick: bool = False, seed: int = 0,
                 setting: QuadraticSetting | None = None, progress: bool = False) -> pd.DataFrame:
    """The points of a figure as a long table: one row per (panel, method, k, η, ρ, source, quantity).

    ``source`` is ``"theory"`` (quantities ``diversity``, ``sharpness_upper`` and, for Theorem 1,
    ``sharpness_lower`` and ``sharpness_lower_printed`` — the paper's printed Jensen-gap term) or
    ``"simulation"`` (``diversity`` and ``sharpness`` with their standard errors). All points of a
    figure share one draw of data sets, teachers and initialisations (``seed``). ``progress`` shows a
    bar over the points on stderr (the full figures take minutes).
    """
    title, panels = _panels(figure, quick)
    if setting is None:
        setting = quick_setting() if quick else QuadraticSetting()
    problems = draw_problems(setting, seed=seed)
    context = {"figure": figure, "train_samples": setting.train_samples, "test_samples": setting.test_samples,
               "input_dim": setting.input_dim, "datasets": setting.datasets,
               "initializations": setting.initializations, "partitions": setting.partitions,
               "init_std": setting.init_std, "teacher_norm": setting.teacher_norm,
               "sharpness_radius": setting.sharpness_radius, "seed": seed}
    rows = []
    points = [(panel, method, point) for panel in panels for method in panel.methods for point in panel.points]
    for panel, method, (iterations, eta_paper, rho_paper) in tqdm(points, desc=f"figure {figure}", unit="point",
                                                                  file=sys.stderr, disable=not progress):
        eta, rho = _theorem_units(eta_paper, setting), _theorem_units(rho_paper, setting)
        point = {**context, "panel": panel.title, "along": panel.along, "method": method,
                 "theorem": THEOREMS[method], "iterations": iterations, "eta_paper": eta_paper,
                 "rho_paper": rho_paper, "eta": float(eta), "rho": float(rho)}
        if method == "sam":
            prediction = theorem_1(setting, iterations=iterations, eta=eta, rho=rho)
            printed = theorem_1(setting, iterations=iterations, eta=eta, rho=rho, jensen_gap="printed")
            theory = {"diversity": prediction.diversity, "sharpness_upper": prediction.sharpness_upper,
                      "sharpness_lower": prediction.sharpness_lower,
                      "sharpness_lower_printed": printed.sharpness_lower}
        else:
            prediction = theorem_2(setting, iterations=iterations, eta=eta, rho=rho)
            theory = {"diversity": prediction.diversity, "sharpness_upper": prediction.sharpness_upper}
        for quantity, value in theory.items():
            if value is None:  # no lower bound when n_tr < d_in
                continue
            rows.append({**point, "source": "theory", "quantity": quantity, "value": value,
                         "standard_error": float("nan")})
        simulated = simulate_tradeoff(problems, iterations=iterations, eta=eta, rho=rho, method=method)
        rows.append({**point, "source": "simulation", "quantity": "diversity",
                     "value": simulated.diversity, "standard_error": simulated.diversity_standard_error})
        rows.append({**point, "source": "simulation", "quantity": "sharpness",
                     "value": simulated.sharpness, "standard_error": simulated.sharpness_standard_error})
    table = pd.DataFrame(rows)
    table.attrs["title"] = title
    return table


def figure_title(figure: str) -> str:
    """The title of a figure (the same for the quick and the full grid)."""
    return _panels(figure, quick=True)[0]


def _check_figure(figure: str) -> None:
    if figure not in FIGURES:
        raise InputError(f"unknown figure {figure!r}; choose one of {', '.join(FIGURES)}")


def theory_table_path(figure: str, out_dir) -> Path:
    """Where :func:`write_theory_table` stores a figure's points: ``out_dir/theory-figure-<figure>.csv``."""
    return Path(out_dir) / f"theory-figure-{figure}.csv"


def write_theory_table(figure: Literal["1b", "2", "9", "10", "11"], out_dir, quick: bool = False,
                       seed: int = 0, progress: bool = False) -> Path:
    """Simulate one figure and store its :func:`theory_table` as a CSV (atomically); returns its path.

    ``quick=True`` uses :func:`quick_setting` and shorter sweeps: seconds instead of minutes.
    """
    _check_figure(figure)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder; pass a folder for the figures")
    table = theory_table(figure, quick=quick, seed=seed, progress=progress)
    csv = theory_table_path(figure, out_dir)
    with atomic_path(csv) as temporary:
        table.to_csv(temporary, index=False)
    return csv

"""The values of robustness tables: Finlay & Oberman (2021), Tables 1, 2, B.3, B.4 and B.6.

A robustness cell reads, per column, the files its metric needs (the cells file's ``files``):

- ``clean_error``, ``empirical_error`` and ``empirical_distance``: the outcome logs of the
  row's minimum-distance attacks (``robustreg.attacks.suite``, minimal kinds). Section 4: "We
  report our results using the best adversarial distance on a per image basis, in each norm":
  an image's distance is the smallest, over the logs, of the ``norm`` size of the adversarial
  point each attack kept. Any attack's point counts in either norm (an l2 attack's point
  bounds the linf distance too). Misclassified images have distance 0; an image no attack
  broke has none (infinite): it is never an error, and the mean distance leaves it out (the
  table's notes say how many).
- ``bound_error``, ``bound_distance``, ``gradient_norm`` and ``modulus``: the ``bounds.json`` of
  a bounds job (``robustreg.bounds``; read by ``robustreg.bound_estimates``): per-image loss
  gap and gradient dual norm, L and omega(eps) estimated by GEV fits (Proposition 2.2),
  omega made nondecreasing in eps (``omega_envelope``).
- ``training_hours``: the ``model.pt`` of the row's training, which records the wall time of
  its training job and the device it ran on (``robustreg.model_files.training_record``).

Every value is a fraction (printed as percent where the spec asks) or a number; a column
without files is missing (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from robustreg.tables.logs import read_attack_outcomes, read_bound_files, read_certification
from robustreg.tables.spec import ColumnSpec, TableSpec
from robustreg.tables.vocabulary import BOUND_FILES, OUTCOME_LOGS, file_kind


def smallest_distances(logs: Sequence[pd.DataFrame], norm: str) -> np.ndarray:
    """Per-image smallest adversarial distance in ``norm`` over minimum-distance attack logs
    of one model on the same images (``read_outcomes`` frames): 0 for a misclassified image,
    inf where no log holds an adversarial point.

    Raises a ValueError if the logs cover different images, or disagree on which images are
    misclassified (they would come from different models, images or top-k).
    """
    if not logs:
        raise ValueError("no outcome logs")
    first = logs[0]
    misclassified = _misclassified(first)
    best = np.full(len(first), np.inf)
    for log in logs:
        if not np.array_equal(log["idx"].to_numpy(), first["idx"].to_numpy()):
            raise ValueError("outcome logs of one cell cover different images")
        if not np.array_equal(_misclassified(log), misclassified):
            raise ValueError("outcome logs of one cell disagree on which images are misclassified")
        broken = log["robust"].to_numpy() == 0
        best = np.where(broken, np.minimum(best, log[norm].to_numpy(dtype=np.float64)), best)
    return np.where(misclassified, 0.0, best)


def _misclassified(log: pd.DataFrame) -> np.ndarray:
    # a minimal attack keeps the clean image (l2 = linf = 0) where the clean image is wrong
    return (
        (log["robust"].to_numpy() == 0)
        & (log["l2"].to_numpy() == 0)
        & (log["linf"].to_numpy() == 0)
    )


def clean_error(logs: Sequence[pd.DataFrame]) -> float:
    return float(np.mean(smallest_distances(logs, "l2") == 0))


def empirical_error(distance: np.ndarray, eps: float) -> float:
    """Fraction of images an attack broke within ``eps`` (misclassified ones included)."""
    return float(np.mean(distance <= eps))


def empirical_distance(distance: np.ndarray) -> float:
    """Mean smallest adversarial distance over the images some attack broke."""
    found = distance[np.isfinite(distance)]
    return float(found.mean()) if found.size else math.nan


class Reader:
    """Reads each file once for a whole table and computes the cells' values."""

    def __init__(self) -> None:
        self._outcomes: dict[Path, pd.DataFrame] = {}
        self._certifications: dict[Path, pd.DataFrame] = {}
        self._bounds: dict[Path, tuple[pd.DataFrame, dict]] = {}
        self._models: dict[Path, dict] = {}

    def outcomes(self, path: Path) -> pd.DataFrame:
        if path not in self._outcomes:
            self._outcomes[path] = read_attack_outcomes(path)
        return self._outcomes[path]

    def certification(self, path: Path) -> pd.DataFrame:
        if path not in self._certifications:
            self._certifications[path] = read_certification(path)
        return self._certifications[path]

    def bounds(self, path: Path) -> tuple[pd.DataFrame, dict]:
        if path not in self._bounds:
            self._bounds[path] = read_bound_files(path)
        return self._bounds[path]

    def model(self, path: Path) -> dict:
        if path not in self._models:
            from robustreg.model_files import training_record

            try:
                self._models[path] = training_record(path)
            except (OSError, KeyError, RuntimeError) as err:
                raise ValueError(
                    f"{path}: not a trained model with a training record ({err})"
                ) from None
        return self._models[path]

    def value(self, column: ColumnSpec, paths: Sequence[Path]) -> float:
        """The column's value from its files (not yet scaled to percent)."""
        kind = file_kind(column.metric)
        try:
            if kind == OUTCOME_LOGS:
                return self._outcome_value(column, [self.outcomes(p) for p in paths])
            if kind == BOUND_FILES:
                (path,) = paths
                return self._bound_value(column, *self.bounds(path))
            (path,) = paths
            return self.model(path)["train_seconds"] / 3600.0
        except ValueError as err:
            raise ValueError(f"{', '.join(map(str, paths))}: {column.metric}: {err}") from None

    @staticmethod
    def _outcome_value(column: ColumnSpec, logs: list[pd.DataFrame]) -> float:
        if column.metric == "clean_error":
            return clean_error(logs)
        distance = smallest_distances(logs, column.norm)
        if column.metric == "empirical_error":
            return empirical_error(distance, column.eps)
        return empirical_distance(distance)

    @staticmethod
    def _bound_value(column: ColumnSpec, frame: pd.DataFrame, summary: dict) -> float:
        from robustreg.bound_estimates import bound_distances, bound_error, omega_envelope

        if summary["norm"] != column.norm:
            raise ValueError(f"the bounds are in {summary['norm']}, the column in {column.norm}")
        if column.metric == "gradient_norm":
            return float(summary[f"grad_norm_{column.statistic}"])
        if column.metric == "modulus":
            return float(omega_envelope(summary["omega"])[_grid_position(summary, column.eps)])
        if column.bound == "omega" and column.metric == "bound_error":
            _grid_position(summary, column.eps)
        distance = bound_distances(frame, summary, column.bound)
        if column.metric == "bound_error":
            return float(bound_error(distance, column.eps)[0])
        return float(np.mean(distance))

    def notes(self, spec: TableSpec, cells) -> list[str]:
        """What a reader needs to know about our values: the devices training times were
        measured on, the rows whose mean empirical distance leaves out unbroken images, and
        the visible violations of the bounds (``violations``) and what to know of their
        estimates (``estimate_warnings``)."""
        notes = self.violations(spec, cells) + self.estimate_warnings(spec, cells)
        devices = sorted(
            {
                self.model(paths[0])["device"]
                for cell in cells
                for key, paths in cell.files.items()
                if spec.column(key).metric == "training_hours"
            }
        )
        if devices:
            notes.append(
                "Training time: wall time of our training job (all its epochs, including "
                f"validation), measured on {'; '.join(devices)}."
            )
        for cell in cells:
            for key, paths in cell.files.items():
                column = spec.column(key)
                if column.metric != "empirical_distance":
                    continue
                distance = smallest_distances([self.outcomes(p) for p in paths], column.norm)
                left = int(np.sum(~np.isfinite(distance)))
                if left:
                    label = spec.row(cell.row).labels[cell.group]
                    notes.append(
                        f"{label}, {column.label}: no attack broke {left} of {distance.size} "
                        "images; the mean leaves them out."
                    )
        return notes

    def violations(self, spec: TableSpec, cells) -> list[str]:
        """Per row, bound and norm: the images on which the bound certifies a larger distance
        than the closest adversarial point an attack of the row's suite found in that norm.

        The L- and omega-bounds of Proposition 2.2 are estimates (L from gradients at clean
        points, omega(eps) from a few uniform draws per image, both through GEV fits), not
        guarantees, and nothing else shows where they fail; the paper's own Table 1 has bound
        errors below the empirical ones. Images of the bounds job and of the attacks are matched
        by index; an image no attack broke cannot show a violation."""
        from robustreg.bound_estimates import bound_distances

        notes = []
        for cell in cells:
            suites = {
                spec.column(key).norm: paths
                for key, paths in cell.files.items()
                if spec.column(key).metric in ("empirical_error", "empirical_distance")
            }
            seen = set()
            for key, paths in cell.files.items():
                column = spec.column(key)
                if column.metric not in ("bound_error", "bound_distance"):
                    continue
                if column.norm not in suites or (column.bound, column.norm) in seen:
                    continue
                seen.add((column.bound, column.norm))
                (path,) = paths
                frame, summary = self.bounds(path)
                distances = bound_distances(frame, summary, column.bound)
                certified = dict(zip(frame["idx"], distances, strict=True))
                logs = [self.outcomes(p) for p in suites[column.norm]]
                smallest = smallest_distances(logs, column.norm)
                found = dict(zip(logs[0]["idx"], smallest, strict=True))
                both = [i for i in found if i in certified and np.isfinite(found[i])]
                violated = sum(certified[i] > found[i] for i in both)
                if violated:
                    label = spec.row(cell.row).labels[cell.group]
                    name = {"l": "L", "omega": "ω"}[column.bound]
                    notes.append(
                        f"{label}: the {name}-bound ({column.norm}) certifies a larger distance "
                        f"than an attack found on {violated} of {len(both)} images, a visible "
                        "violation: the bounds are estimates, not guarantees."
                    )
        return notes

    def estimate_warnings(self, spec: TableSpec, cells) -> list[str]:
        """Per row and bounds job that a column of the table reads: its heavy-tailed GEV
        fits and the omega(eps) estimates the envelope raised (``fit_warnings``)."""
        from robustreg.bound_estimates import fit_warnings

        notes = []
        for cell in cells:
            seen = set()
            for key, paths in cell.files.items():
                if file_kind(spec.column(key).metric) != BOUND_FILES or paths[0] in seen:
                    continue
                seen.add(paths[0])
                phrases = fit_warnings(self.bounds(paths[0])[1])
                if phrases:
                    label = spec.row(cell.row).labels[cell.group]
                    notes.append(f"{label} ({spec.column(key).norm}): {'; '.join(phrases)}.")
        return notes


def _grid_position(summary: dict, eps: float) -> int:
    """Where ``eps`` is on the bounds job's grid: omega is estimated only there."""
    grid = np.asarray(summary["eps"], dtype=np.float64)
    hits = np.flatnonzero(np.isclose(grid, eps, rtol=1e-9, atol=1e-12))
    if not hits.size:
        raise ValueError(f"eps {eps:g} is not on the bounds job's grid ({list(grid)})")
    return int(hits[0])

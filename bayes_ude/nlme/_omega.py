"""Random effects' covariance: :class:`Omega` (names, initial values, structure) and its
parameterisation by the log-diagonal and off-diagonal entries of its Cholesky factor."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

__all__ = ["Omega"]


@dataclasses.dataclass(frozen=True)
class Omega:
    """Random-effect names, initial covariance and structure.

    Parameters
    ----------
    names : one name per random effect (``eta``), in order.
    init : initial variances (1-D, diagonal) or an initial covariance matrix.
    structure : ``"diagonal"`` (default), ``"full"``, or a sequence of blocks (each a
        sequence of names; names in no block get their own 1x1 block).
    """

    names: tuple[str, ...]
    init: np.ndarray
    structure: str | tuple[tuple[str, ...], ...] = "diagonal"

    def __post_init__(self):
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        init = np.asarray(self.init, float)
        if init.ndim == 1:
            init = np.diag(init)
        q = len(names)
        if init.shape != (q, q):
            raise ValueError(f"Omega.init must be {q} variances or a {q}x{q} matrix, "
                             f"got shape {init.shape}")
        if len(set(names)) != q:
            raise ValueError(f"Omega.names must be distinct, got {names}")
        if not np.allclose(init, init.T) or np.any(np.linalg.eigvalsh(init) <= 0):
            raise ValueError("Omega.init must be a symmetric positive-definite matrix "
                             f"(variances > 0), got {init.tolist()}")
        structure = self.structure
        if not isinstance(structure, str):
            structure = tuple(tuple(b) for b in structure)
            unknown = [n for b in structure for n in b if n not in names]
            if unknown:
                raise ValueError(f"Omega.structure names unknown random effects {unknown}; "
                                 f"the random effects are {list(names)}")
        elif structure not in ("diagonal", "full"):
            raise ValueError("Omega.structure must be 'diagonal', 'full' or a list of blocks, "
                             f"got {structure!r}")
        object.__setattr__(self, "structure", structure)
        object.__setattr__(self, "init", init * self.pattern)

    @classmethod
    def diagonal(cls, variances: Mapping[str, float]) -> Omega:
        return cls(tuple(variances), np.asarray(list(variances.values()), float))

    @property
    def pattern(self) -> np.ndarray:
        """Boolean matrix of the entries that may be non-zero."""
        q = len(self.names)
        if self.structure == "full":
            return np.ones((q, q), bool)
        pat = np.eye(q, dtype=bool)
        if self.structure != "diagonal":
            for block in self.structure:
                idx = [self.names.index(n) for n in block]
                pat[np.ix_(idx, idx)] = True
        return pat

    @property
    def free(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices of the estimated lower-triangular Cholesky entries."""
        rows, cols = np.nonzero(np.tril(self.pattern))
        return rows, cols

    def element_names(self) -> list[str]:
        """``omega_<name>`` for variances, ``omega_<a>_<b>`` for covariances."""
        return list(self.elements())

    def elements(self) -> dict[str, tuple[str, str]]:
        """Each estimated element's name -> its two random effects (the same twice for a
        variance), in :meth:`element_names`' order."""
        rows, cols = self.free
        return {(f"omega_{self.names[r]}" if r == c
                 else f"omega_{self.names[c]}_{self.names[r]}"): (self.names[c], self.names[r])
                for r, c in zip(rows, cols, strict=True)}


def _chol_to_vector(omega: Omega, matrix: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(matrix)
    rows, cols = omega.free
    vals = chol[rows, cols]
    diagonal = rows == cols
    return np.where(diagonal, np.log(np.where(diagonal, vals, 1.0)), vals)

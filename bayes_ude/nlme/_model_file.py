"""Models in a user's Python file (``bayes-ude pk fit data.csv --model mymodel.py``).

The file defines ``model``: a :class:`PopulationModel`, or a function of the data
(``def model(population) -> PopulationModel``, for initial values or covariate centring
read from the data). Anything the Python API expresses works: closed-form or ODE
structural models, covariates, full or block omega, several error models. The same file
serves every method (FOCE(I), Laplace, LB, NUTS, SG-MCMC), since they all take a
``PopulationModel``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path

from ._model import PopulationModel

__all__ = ["load_model_file"]


def load_model_file(path, population=None) -> PopulationModel:
    """The ``PopulationModel`` a Python file defines as ``model`` (called with
    ``population`` when it is a function). Errors name the file and what was expected; an
    exception raised by the file is re-raised as a ``ValueError`` naming the file and line."""
    path = Path(path)
    if path.suffix != ".py":
        raise ValueError(f"model file {str(path)!r}: expected a Python file ending in .py")
    if not path.is_file():
        raise ValueError(f"model file {str(path)!r} does not exist")
    # a module name per file content: two files, or an edited file, never share one
    digest = hashlib.sha1(str(path.resolve()).encode() + path.read_bytes()).hexdigest()[:12]
    name = f"bayes_ude_user_model_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise _where(path, err) from err
        found = getattr(module, "model", None)
        if found is None:
            defined = sorted(k for k in vars(module) if not k.startswith("_"))
            raise ValueError(f"model file {str(path)!r} defines no `model` (a PopulationModel, "
                             f"or a function of the population returning one); it defines "
                             f"{', '.join(defined) or 'nothing'}")
        if callable(found) and not isinstance(found, PopulationModel):
            if population is None:
                raise ValueError(f"model file {str(path)!r}: `model` is a function of the "
                                 "data; pass the population")
            try:
                found = found(population)
            except Exception as err:
                raise _where(path, err) from err
    except ValueError:
        sys.modules.pop(name, None)
        raise
    if not isinstance(found, PopulationModel):
        raise ValueError(f"model file {str(path)!r}: `model` must be a "
                         f"bayes_ude.nlme.PopulationModel, got {type(found).__name__}")
    return found


def _where(path: Path, err: Exception) -> ValueError:
    """An exception raised by the file's code (a ``ValueError`` of the package's too, e.g.
    a sigma name its error model does not have) as a ``ValueError`` naming the file and
    the line."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if Path(f.filename).resolve() == path.resolve()]
    line = err.lineno if isinstance(err, SyntaxError) else (
        frames[-1].lineno if frames else None)
    where = f", line {line}" if line else ""
    return ValueError(f"model file {str(path)!r}{where}: {type(err).__name__}: {err}")

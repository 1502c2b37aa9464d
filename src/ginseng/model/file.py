"""Model files: ``save_model`` / ``load_model`` (HDF5 via h5py, no pickle, no jax).

Layout (``ginseng._keys.MODEL_FORMAT_VERSION``)::

    model.h5  attrs: format="ginseng-model", format_version, ginseng_version, created
      genes            utf-8 strings, model input order
      labels           utf-8 strings, output order
      params/...       float32, one dataset per network variable path
      config           JSON: architecture + preprocessing
      settings         JSON: GinsengClassifierTrainerSettings (null if unknown)
      calibration/temperature   float64 scalar
      metrics          JSON: holdout metrics
      history          JSON: per-epoch columns
      provenance       JSON: versions, seed, data fingerprint
      uncertainty/...  optional (ginseng >= 0.3): novelty_means, novelty_whiten,
                       novelty_quantiles (float32), conformal_scores (float32),
                       conformal_offsets (int64); see ginseng.model.uncertainty.
                       Files without it load, with ``state.uncertainty = None``.
      hierarchy        optional (ginseng >= 0.3) JSON: {"levels": [coarse..fine],
                       "paths": [[node per level] per label, labels in output
                       order]}; see ginseng.model.hierarchy. Files without it load
                       with ``state.hierarchy = None``; older readers ignore it.
      ontology         optional (ginseng >= 0.3) JSON: {"ids": {name: CL id}, "key",
                       "source"}; see ginseng.model.ontology.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from .._errors import InputError, ModelFormatError
from .._keys import MODEL_FORMAT, MODEL_FORMAT_VERSION
from .._trainer_settings import GinsengClassifierTrainerSettings
from .._write import write_error
from .hierarchy import Hierarchy
from .ontology import OntologyIds
from .state import GinsengModelState, param_shapes
from .uncertainty import FIELDS as UNCERTAINTY_FIELDS
from .uncertainty import Uncertainty

_JSON_FIELDS = ("config", "settings", "metrics", "history", "provenance")
_STR = h5py.string_dtype("utf-8")


def _to_json(value: Any) -> str:
    return json.dumps(value, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"it holds a value of type {type(value).__name__!r}")


def save_model(state: GinsengModelState, path: str | os.PathLike) -> Path:
    """Write a trained model to an HDF5 file.

    The file is written to a temporary sibling and renamed into place, so an
    interrupted save never leaves a half-written model at ``path``.

    Parameters
    ----------
    state
        The model, as returned by :meth:`GinsengClassifierTrainer.fit` or
        :func:`ginseng.tl.train`.
    path
        Destination, conventionally ending in ``.h5``; overwritten if it exists.

    Returns
    -------
    The path written.

    Examples
    --------
    ``state`` is a model trained with :func:`ginseng.tl.train`:

    >>> from ginseng.data.io import load_model, save_model
    >>> save_model(state, tmp / "model.h5")  # doctest: +ELLIPSIS
    PosixPath('.../model.h5')
    >>> load_model(tmp / "model.h5").labels.tolist() == state.labels.tolist()
    True
    """
    if not isinstance(state, GinsengModelState):
        raise InputError(f"save_model expects a GinsengModelState, got {type(state).__name__}.")
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(
            f"Cannot save the model to {str(path)!r}: directory {str(path.parent)!r} does not exist."
        )
    settings = state.settings.to_dict() if hasattr(state.settings, "to_dict") else state.settings
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = MODEL_FORMAT
            f.attrs["format_version"] = MODEL_FORMAT_VERSION
            f.attrs["ginseng_version"] = __version__
            f.attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")
            f.create_dataset("genes", data=np.asarray(state.genes, dtype=object), dtype=_STR)
            f.create_dataset("labels", data=np.asarray(state.labels, dtype=object), dtype=_STR)
            params = f.create_group("params")
            for name, value in state.params.items():
                params.create_dataset(name, data=np.asarray(value, dtype=np.float32))
            values = {
                "config": state.config,
                "settings": settings,
                "metrics": state.metrics,
                "history": state.history,
                "provenance": state.provenance,
            }
            for key, value in values.items():
                try:
                    text = _to_json(value)
                except (TypeError, ValueError) as err:
                    raise InputError(
                        f"Cannot save the model: state.{key} cannot be written as JSON ({err})."
                    ) from err
                f.create_dataset(key, data=text, dtype=_STR)
            f.create_group("calibration").create_dataset(
                "temperature", data=np.float64(state.temperature)
            )
            if state.hierarchy is not None:
                f.create_dataset("hierarchy", data=state.hierarchy.to_json(), dtype=_STR)
            if state.ontology is not None:
                f.create_dataset("ontology", data=state.ontology.to_json(), dtype=_STR)
            if state.uncertainty is not None:
                group = f.create_group("uncertainty")
                for name, value in state.uncertainty.arrays().items():
                    group.create_dataset(name, data=value)
        tmp.replace(path)
    except OSError as err:
        raise write_error(err, path, "the model file") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_model(path: str | os.PathLike) -> GinsengModelState:
    """Read a model written by :func:`save_model`.

    Parameters
    ----------
    path
        The ``.h5`` model file.

    Returns
    -------
    The :class:`~ginseng.model.GinsengModelState`, ready for ``predict_proba`` or
    :func:`ginseng.tl.classify`.

    Raises
    ------
    ModelFormatError
        If the file is missing, not HDF5, truncated, not a ginseng model, lacks a part,
        or was written by a newer ginseng (the message names the version).

    Examples
    --------
    A model saved from ``state`` (trained with :func:`ginseng.tl.train`), loaded and used
    to annotate ``query``, raw counts of other cells:

    >>> import ginseng as gs
    >>> from ginseng.data.io import load_model, save_model
    >>> path = save_model(state, tmp / "model.h5")
    >>> model = load_model(path)
    >>> model.n_genes, model.n_labels
    (765, 10)
    >>> gs.tl.classify(query, model)
    >>> query.obs["ginseng_cell_type"].size
    350
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"No model file at {str(path)!r}.")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ModelFormatError(
            f"{str(path)!r} is not a readable HDF5 file (not a model, or truncated): {err}"
        ) from err
    with f:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != MODEL_FORMAT:
            raise ModelFormatError(
                f"{str(path)!r} is an HDF5 file but not a ginseng model "
                f"(format attribute {fmt!r}, expected {MODEL_FORMAT!r})."
            )
        version = f.attrs.get("format_version")
        written_by = f.attrs.get("ginseng_version", "unknown")
        if version is None or int(version) > MODEL_FORMAT_VERSION or int(version) < 1:
            raise ModelFormatError(
                f"{str(path)!r} uses model format version {version} (written by ginseng "
                f"{written_by}); this ginseng ({__version__}) reads versions up to "
                f"{MODEL_FORMAT_VERSION}. Upgrade ginseng: pip install -U ginseng."
            )
        try:
            return _read(f)
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
            raise ModelFormatError(
                f"{str(path)!r} is a damaged or incomplete ginseng model file: {err}"
            ) from err


# Bounds on what a model may declare, far above any real model (the human genome has
# ~60k genes), so that a damaged or hostile file is refused before anything is read.
_MAX = {"n_genes": 2_000_000, "n_labels": 100_000, "hidden_dim": 65_536, "n_layers": 64}


def _bad(f: h5py.File, part: str, problem: str) -> ModelFormatError:
    return ModelFormatError(
        f"{str(f.filename)!r} is a damaged or incomplete ginseng model file: {part} {problem}."
    )


def _check_config(f: h5py.File, config: Any) -> None:
    """The architecture the file declares: bounded positive sizes."""
    for key, bound in _MAX.items():
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
            raise _bad(f, f"config[{key!r}]", f"is {value!r}; expected an integer in [1, {bound}]")


def _check_declared(f: h5py.File, config: dict) -> None:
    """Shapes and stored sizes of every dataset, from metadata only (nothing read yet)."""
    for key, n in (("genes", config["n_genes"]), ("labels", config["n_labels"])):
        if not isinstance(f[key], h5py.Dataset) or f[key].shape != (n,):
            shape = getattr(f[key], "shape", None)
            raise _bad(f, key, f"declares shape {shape}; the config says ({n},)")
    expected = param_shapes(config)
    declared: dict[str, tuple[int, ...]] = {}
    f["params"].visititems(
        lambda name, obj: (
            declared.__setitem__(name, obj.shape) if isinstance(obj, h5py.Dataset) else None
        )
    )
    if declared != expected:
        missing = sorted(set(expected) - set(declared))
        extra = sorted(set(declared) - set(expected))
        wrong = sorted(k for k in set(expected) & set(declared) if expected[k] != declared[k])
        detail = ", ".join(f"params/{k} {declared[k]} (expected {expected[k]})" for k in wrong[:3])
        raise _bad(
            f,
            "params",
            f"do not match the architecture (missing {missing[:5]}, unexpected {extra[:5]}"
            + (f", wrong shape: {detail}" if detail else "")
            + ")",
        )
    for name in expected:
        dataset = f[f"params/{name}"]
        declared_bytes = dataset.size * dataset.dtype.itemsize
        stored = dataset.id.get_storage_size()
        # Uncompressed data must be stored in full; allow compression, but not a file
        # that declares gigabytes it does not hold (they would read as fill values).
        if declared_bytes > 1000 * stored + (1 << 20):
            raise _bad(
                f,
                f"params/{name}",
                f"declares {declared_bytes} bytes but the file stores {stored}",
            )


def _check_values(f: h5py.File, params: dict[str, np.ndarray], temperature: float) -> None:
    for name, value in params.items():
        finite = np.isfinite(value)
        if not finite.all():
            raise _bad(f, f"params/{name}", f"holds {int((~finite).sum())} NaN or infinite values")
    if not (np.isfinite(temperature) and temperature > 0):
        raise _bad(
            f,
            "calibration/temperature",
            f"is {temperature!r}; it must be a positive finite number (a negative one would "
            "invert the ranking, 0 or NaN give NaN probabilities)",
        )


def _read(f: h5py.File) -> GinsengModelState:
    for key in ("genes", "labels", "params", "calibration", *_JSON_FIELDS):
        if key not in f:
            raise KeyError(f"missing {key!r}")
    values = {key: json.loads(f[key].asstr()[()]) for key in _JSON_FIELDS}
    for key, value in values.items():
        if not isinstance(value, dict) and not (key == "settings" and value is None):
            raise _bad(f, key, f"is a JSON {type(value).__name__}, not an object")
    _check_config(f, values["config"])
    _check_declared(f, values["config"])
    params: dict[str, np.ndarray] = {}

    def collect(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            params[name] = np.asarray(obj[()], dtype=np.float32)

    f["params"].visititems(collect)
    _check_values(f, params, float(f["calibration/temperature"][()]))
    settings = values["settings"]
    if settings is not None:
        settings = GinsengClassifierTrainerSettings.from_dict(settings)
    state = GinsengModelState(
        params=params,
        config=values["config"],
        genes=f["genes"].asstr()[()],
        labels=f["labels"].asstr()[()],
        temperature=float(f["calibration/temperature"][()]),
        metrics=values["metrics"],
        history=values["history"],
        settings=settings,
        provenance=values["provenance"],
        uncertainty=_read_uncertainty(f, values["config"]),
        hierarchy=_read_labelled_json(f, "hierarchy", Hierarchy),
        ontology=_read_labelled_json(f, "ontology", OntologyIds),
    )
    if len(state.genes) != state.config.get("n_genes") or len(state.labels) != state.config.get(
        "n_labels"
    ):
        raise ValueError(
            f"{len(state.genes)} genes and {len(state.labels)} labels do not match the config "
            f"({state.config.get('n_genes')} genes, {state.config.get('n_labels')} labels)"
        )
    expected = param_shapes(state.config)
    actual = {name: value.shape for name, value in state.params.items()}
    if actual != expected:
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        wrong = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
        raise ValueError(
            f"parameters do not match the architecture (missing {missing[:5]}, "
            f"unexpected {extra[:5]}, wrong shape {wrong[:5]})"
        )
    return state


def _read_labelled_json(f: h5py.File, name: str, kind: Any) -> Any:
    """The optional JSON dataset ``name`` read by ``kind.from_json``, checked against the labels.

    ``kind`` is :class:`~ginseng.model.hierarchy.Hierarchy` or
    :class:`~ginseng.model.ontology.OntologyIds`; ``None`` when the file has no ``name``.
    """
    if name not in f:
        return None
    try:
        value = kind.from_json(f[name].asstr()[()])
        value.check(f["labels"].asstr()[()])
    except (KeyError, TypeError, ValueError, InputError) as err:
        raise _bad(f, name, f"is inconsistent: {err}") from err
    return value


def _read_uncertainty(f: h5py.File, config: dict) -> Uncertainty | None:
    """The optional ``uncertainty`` group, checked against the architecture."""
    if "uncertainty" not in f:
        return None
    group = f["uncertainty"]
    missing = [name for name in UNCERTAINTY_FIELDS if name not in group]
    if missing:
        raise _bad(f, "uncertainty", f"lacks {', '.join(missing)}")
    for name in UNCERTAINTY_FIELDS:
        if not isinstance(group[name], h5py.Dataset) or group[name].ndim > 2:
            raise _bad(f, f"uncertainty/{name}", "is not a 1-D or 2-D dataset")
    n_values = sum(group[name].size for name in UNCERTAINTY_FIELDS)
    bound = (config["n_labels"] + config["hidden_dim"] + 2) * config["hidden_dim"] + 10**8
    if n_values > bound:
        raise _bad(f, "uncertainty", f"declares {n_values} values")
    uncertainty = Uncertainty(**{name: group[name][()] for name in UNCERTAINTY_FIELDS})
    try:
        uncertainty.check(config["n_labels"], config["hidden_dim"])
    except ValueError as err:
        raise _bad(f, "uncertainty", f"is inconsistent: {err}") from err
    return uncertainty


def as_model_state(model: GinsengModelState | str | os.PathLike) -> GinsengModelState:
    """Return ``model`` if it is a :class:`GinsengModelState`, else load the model file at that path."""
    if isinstance(model, GinsengModelState):
        return model
    if isinstance(model, str | os.PathLike):
        return load_model(model)
    raise InputError(
        f"Expected a GinsengModelState or the path of a model file, got {type(model).__name__}."
    )

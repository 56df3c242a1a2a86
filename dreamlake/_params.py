"""``session.params`` (also ``session.parameters()``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._values import capture

if TYPE_CHECKING:  # pragma: no cover
    from ._session import Session

__all__ = ["Params", "flatten", "unflatten"]


def flatten(values: dict, prefix: str = "") -> dict:
    """``{"model": {"layers": 50}}`` → ``{"model.layers": 50}``."""
    flat: dict = {}
    for key, value in values.items():
        if type(key) is not str:
            raise TypeError(f"parameter names must be str, got {type(key).__name__}")
        if not key:
            raise ValueError("parameter names must not be empty")
        name = f"{prefix}{key}"
        if type(value) is dict and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = capture(value)
    return flat


def unflatten(flat: dict) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return nested


class Params:
    def __init__(self, session: "Session") -> None:
        self._session = session

    def set(self, **values: Any) -> "Params":
        """Merge parameters; nested dicts are stored under dotted keys."""
        flat = flatten(values)
        if flat:
            pipe = self._session._require_pipe()
            pipe.push_params(flat)
        return self

    update = set

    def get(self, flatten: bool = True) -> dict:
        flat = self._session._call("params_get")
        return flat if flatten else unflatten(flat)

    def __call__(self) -> "Params":
        return self

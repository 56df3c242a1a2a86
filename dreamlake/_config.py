"""Resolving a Session's arguments (both API generations) into one identity."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ._names import check_segment

__all__ = ["SessionConfig", "resolve", "DEFAULT_ROOT", "DEFAULT_WORKSPACE"]

DEFAULT_ROOT = ".dreamlake"
DEFAULT_WORKSPACE = "default"
ENV_ROOT = "DREAMLAKE_ROOT"
ENV_AGENT = "DREAMLAKE_AGENT"
ENV_MODE = "DREAMLAKE_MODE"
MODES = ("local", "remote", "offline")


@dataclass(frozen=True)
class SessionConfig:
    workspace: str
    name: str
    root: Path
    directory: Path
    url: str | None
    user_name: str | None
    api_key: str | None = field(repr=False, default=None)
    agent: str | None = None
    mode: str | None = None  # local | remote | offline; None: remote when a URL is given
    local_root: bool = False  # a local root was asked for explicitly (with a URL: write both)

    @property
    def prefix(self) -> str:
        return f"{self.workspace}/{self.name}"


def _same(label: str, a: object, b: object) -> object:
    if a is not None and b is not None and a != b:
        raise ValueError(f"conflicting {label}: {a!r} vs {b!r}")
    return a if a is not None else b


def storage_root(root: object, local_path: object) -> Path:
    """``root / local_path`` when both are given, either one alone, else ``./.dreamlake``
    (or ``$DREAMLAKE_ROOT``)."""
    for label, value in (("root", root), ("local_path", local_path)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{label} must be a path, got {type(value).__name__}")
    if root is not None and local_path is not None:
        return Path(root) / Path(local_path)
    chosen = root if root is not None else local_path
    if chosen is None:
        chosen = os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    return Path(chosen)


def resolve(
    *,
    prefix: object,
    name: object,
    workspace: object,
    root: object,
    local_path: object,
    url: object,
    remote: object,
    user_name: object,
    api_key: object,
    session_dir: object,
    agent: object,
    mode: object = None,
) -> SessionConfig:
    if prefix is not None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str 'workspace/name', got {type(prefix).__name__}")
        parts = prefix.strip("/").split("/")
        if len(parts) != 2:
            raise ValueError(f"prefix must look like 'workspace/name', got {prefix!r}")
        workspace = _same("workspace", workspace, parts[0])
        name = _same("name", name, parts[1])
    if name is None:
        raise ValueError("a session needs a name: Session(prefix='ws/name') or Session(name=..., workspace=...)")
    name = check_segment(name, "session name")
    workspace = check_segment(workspace if workspace is not None else DEFAULT_WORKSPACE, "workspace")
    address = _same("url/remote", url, remote)
    if address is not None and not isinstance(address, str):
        raise TypeError("url/remote must be a str")
    for label, value in (("user_name", user_name), ("api_key", api_key)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{label} must be a str")
    if agent is None:
        agent = os.environ.get(ENV_AGENT) or None
    if agent is not None and not isinstance(agent, str):
        raise TypeError("agent must be 'auto' or 'unix:///path/to/socket'")
    if mode is None:
        mode = os.environ.get(ENV_MODE) or None
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    base = storage_root(root, local_path)
    if session_dir is not None:
        if not isinstance(session_dir, (str, os.PathLike)):
            raise TypeError("session_dir must be a path")
        directory = Path(session_dir)
    else:
        directory = base / workspace / name
    return SessionConfig(
        workspace=workspace,
        name=name,
        root=base.absolute(),
        directory=directory.absolute(),
        url=address,
        user_name=user_name,  # type: ignore[arg-type]
        api_key=api_key,  # type: ignore[arg-type]
        agent=agent,
        mode=mode,  # type: ignore[arg-type]
        local_root=root is not None or local_path is not None or session_dir is not None,
    )

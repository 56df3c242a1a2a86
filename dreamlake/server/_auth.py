"""API keys: created by the operator, shown once, stored as sha256 hashes.

``<root>/.dreamlake-server/keys.json`` (mode 0600, directory 0700)::

    {"keys": [{"id": "k_…", "user": "ada", "workspaces": ["lab"] | ["*"],
               "sha256": "<hex of sha256(key)>", "createdAt": "…"}]}

A key is ``dlk_`` + 32 random bytes (URL-safe base64): high entropy, so a
plain sha256 is enough (no slow KDF needed), and the file leaks nothing usable.
Keys are never logged; the server reads the file at start and on change.

Development mode (``--dev``) also accepts a request without a key, or with
upstream's unsigned ``user_name`` token (a JWT it signs with a public,
hard-coded secret — so its signature means nothing and is not checked): the
user is taken from the token or is ``dev``; every workspace is allowed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import secrets
import threading
from pathlib import Path

from .._fsutil import now_iso
from ._errors import Forbidden, Unauthorized

__all__ = ["Identity", "KeyStore", "create_key", "revoke_key"]

KEY_PREFIX = "dlk_"


@dataclasses.dataclass(frozen=True)
class Identity:
    user: str
    workspaces: tuple[str, ...]  # ("*",) = all
    dev: bool = False

    def allow(self, workspace: str) -> None:
        if "*" not in self.workspaces and workspace not in self.workspaces:
            raise Forbidden(f"this key is not allowed in workspace {workspace!r}")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _keys_path(state_dir: Path) -> Path:
    return Path(state_dir) / "keys.json"


def create_key(state_dir: Path, user: str, workspaces: list[str]) -> str:
    """Add a key; returns it (the only time it exists in clear)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    path = _keys_path(state_dir)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = {
        "id": "k_" + secrets.token_hex(6),
        "user": user,
        "workspaces": sorted(set(workspaces)) or ["*"],
        "sha256": _hash(key),
        "createdAt": now_iso(),
    }
    try:
        existing = json.loads(path.read_text())
    except FileNotFoundError:
        existing = {"keys": []}
    existing["keys"].append(entry)
    _write_keys(path, existing)
    return key


def revoke_key(state_dir: Path, key_id: str) -> bool:
    """Remove a key by its id; the server stops accepting it at once."""
    path = _keys_path(state_dir)
    try:
        existing = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    kept = [entry for entry in existing["keys"] if entry["id"] != key_id]
    if len(kept) == len(existing["keys"]):
        return False
    _write_keys(path, {"keys": kept})
    return True


def _write_keys(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _dev_user(token: str) -> str | None:
    """The ``userName`` of an upstream dev token (unverified, dev mode only)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        user = payload.get("userName")
        return user if isinstance(user, str) and 0 < len(user) <= 128 else None
    except (ValueError, TypeError, UnicodeError):
        return None


class KeyStore:
    def __init__(self, state_dir: Path, dev: bool) -> None:
        self.path = _keys_path(state_dir)
        self.dev = dev
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._by_hash: dict[str, Identity] = {}

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._by_hash, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        with self._lock:
            data = json.loads(self.path.read_text())
            self._by_hash = {
                entry["sha256"]: Identity(entry["user"], tuple(entry.get("workspaces") or ["*"]))
                for entry in data.get("keys", [])
            }
            self._mtime = mtime

    def authenticate(self, authorization: str | None) -> Identity:
        token = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if token is not None:
            self._refresh()
            # a dict lookup by hash: timing can only reveal the hash, not the key
            identity = self._by_hash.get(_hash(token))
            if identity is not None:
                return identity
            if self.dev:
                return Identity(_dev_user(token) or "dev", ("*",), dev=True)
            raise Unauthorized("unknown API key")
        if self.dev:
            return Identity("dev", ("*",), dev=True)
        raise Unauthorized("missing 'Authorization: Bearer <key>' header")

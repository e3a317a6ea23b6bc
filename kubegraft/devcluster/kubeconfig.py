"""Kubeconfig files for the local control plane's clients (admin user, client-certificate auth).

Paths are embedded as absolute file references rather than inline base64, so a kubeconfig stays
readable and valid as long as the state directory lives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def render_kubeconfig(
    *, name: str, server: str, ca_cert: Path, client_cert: Path, client_key: Path
) -> dict[str, Any]:
    """A kubeconfig with one cluster, one user and one current context, all called ``name``."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca_cert)}}
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate": str(client_cert),
                    "client-key": str(client_key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` to ``path`` (mode 0600, as kubectl expects for credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path

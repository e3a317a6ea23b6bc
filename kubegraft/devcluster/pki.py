"""Certificates and keys for the local control plane, made with ``openssl``.

One self-signed CA signs the API server's serving certificate (SANs: 127.0.0.1, localhost and
the in-cluster service names) and an admin client certificate with ``O=system:masters``, which
RBAC lets do anything. A separate RSA key pair signs service-account tokens. The files are
made once per state directory, so ``up`` after ``down`` keeps the same kubeconfig valid.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "3650"


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files under ``<state>/pki``."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _signed_cert(pki: Pki, name: str, subject: str, extensions: str) -> None:
    key, csr, crt, ext = (pki.dir / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions)
    _openssl("genrsa", "-out", str(key), "2048", cwd=pki.dir)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=pki.dir)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
        "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", str(ext), "-out", str(crt),
        cwd=pki.dir,
    )  # fmt: skip
    csr.unlink()


def ensure_pki(directory: Path) -> Pki:
    """Create the CA, serving and admin certificates and SA keys unless they already exist."""
    pki = Pki(directory)
    if all(p.exists() for p in (pki.ca_cert, pki.serving_cert, pki.admin_cert, pki.sa_pub)):
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki.ca_key),
        "-out", str(pki.ca_cert), "-days", DAYS, "-subj", "/CN=kubegraft-dev-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=directory,
    )  # fmt: skip
    sans = ",".join(
        [
            "IP:127.0.0.1",
            "IP:10.0.0.1",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    _signed_cert(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n",
    )
    _signed_cert(
        pki,
        "admin",
        "/O=system:masters/CN=kubegraft-admin",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    _openssl("genrsa", "-out", str(pki.sa_key), "2048", cwd=directory)
    _openssl("rsa", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub), cwd=directory)
    return pki


def ensure_webhook_cert(pki: Pki, name: str) -> tuple[Path, Path]:
    """A serving certificate for a webhook server on 127.0.0.1 (``<name>.crt``/``.key``),
    signed by the cluster CA: the API server trusts it through the webhook configuration's
    ``caBundle`` (the CA), as it would a cert-manager certificate in a real cluster."""
    crt, key = pki.dir / f"{name}.crt", pki.dir / f"{name}.key"
    if not (crt.exists() and key.exists()):
        _signed_cert(
            pki,
            name,
            f"/CN={name}",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
    return crt, key


def self_signed_cert(crt: Path, key: Path, name: str) -> None:
    """A throwaway self-signed serving certificate for 127.0.0.1 that nothing trusts."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
        "-days", DAYS, "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
        cwd=crt.parent,
    )  # fmt: skip

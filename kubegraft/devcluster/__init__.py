"""A real, local Kubernetes control plane for tests and development, without containers.

``kubegraft dev cluster up`` and the pytest fixtures both go through :mod:`.cluster`, which
starts etcd, kube-apiserver (RBAC on), kube-controller-manager, kube-scheduler and kwok on
127.0.0.1 under one state directory, creates fake GPU nodes and installs kwok Stages that let a
test choose each pod's fate by label (see :mod:`.manifests`). Everything here uses only the
standard library, ``openssl`` and the built binaries; the ``kubernetes`` client is imported
lazily, and only by :meth:`.cluster.Cluster.api_client`.

Layout: ``binaries`` finds or builds the executables, ``pki`` makes certificates, ``procs``
starts and stops processes by pid, ``kubeconfig`` writes client configs, ``manifests`` holds the
pure node/Stage builders, ``cluster`` wires them together. The pytest fixtures over it are
test code: ``tests/conftest.py``.
"""

from __future__ import annotations

from kubegraft.devcluster.cluster import Cluster, ClusterError, default_state_dir, down, status, up

__all__ = ["Cluster", "ClusterError", "default_state_dir", "down", "status", "up"]

"""Shared pytest configuration for every tier.

The control-plane fixtures (``cluster``, ``crd``, ``namespace``) live in
``kubegraft.devcluster.pytest_plugin`` so that tests/integration and tests/e2e share one
control plane per test run; they are only started when a selected test asks for them, so
``pytest -m unit`` starts nothing.
"""

pytest_plugins = ["kubegraft.devcluster.pytest_plugin"]

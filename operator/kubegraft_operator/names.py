"""Deterministic names of everything a FineTuneJob owns.

Names are a pure function of the job name (and rank/attempt for pods), so that reconciling
twice, or again after a crash half-way, finds the objects it created before instead of
creating them twice (create-if-absent relies on it).
"""

from __future__ import annotations


def service(job: str) -> str:
    """The headless Service that gives each worker a stable DNS name."""
    return f"{job}-workers"


def config_map(job: str) -> str:
    """The ConfigMap with the rendered job config (``job.yaml``)."""
    return f"{job}-config"


def hostname(job: str, rank: int) -> str:
    """The pod's hostname: stable across attempts, so rank 0's DNS name never changes."""
    return f"{job}-worker-{rank}"


def pod(job: str, rank: int, attempt: int) -> str:
    """The pod's name: the attempt is part of it, so a new gang never collides with the
    terminating pods of the previous one."""
    return f"{hostname(job, rank)}-a{attempt}"


def master_addr(job: str, namespace: str) -> str:
    """Rank 0's stable DNS name through the headless Service."""
    return f"{hostname(job, 0)}.{service(job)}.{namespace}.svc"

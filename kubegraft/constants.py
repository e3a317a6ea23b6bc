"""Label, annotation and path names shared by the operator, the trainer and the CLI.

Each key is defined once here; nothing else spells them out.
"""

from __future__ import annotations

from kubegraft.api.v1alpha1 import GROUP

LABEL_JOB_NAME = f"{GROUP}/job-name"
"""On every object a FineTuneJob owns: the job's name."""
LABEL_NODE_RANK = f"{GROUP}/node-rank"
"""On worker pods: the node rank (0 is the rendezvous master and reports progress)."""
LABEL_ATTEMPT = f"{GROUP}/attempt"
"""On worker pods: the gang attempt; a gang restart creates pods with the next attempt."""
LABEL_COMPONENT = f"{GROUP}/component"
"""What the object is: worker, service, config."""
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubegraft"

CONFIG_MOUNT_DIR = "/etc/kubegraft"
"""Where the rendered job config is mounted in worker pods."""
CONFIG_FILE = "job.yaml"
SHM_MOUNT_DIR = "/dev/shm"

ENV_JOB_CONFIG = "KUBEGRAFT_JOB_CONFIG"
"""Path of the job manifest the trainer reads."""
ENV_METRICS_PORT = "KUBEGRAFT_METRICS_PORT"
"""Port of rank 0's Prometheus /metrics endpoint (0 disables it)."""
ENV_METRICS_FINAL_SCRAPE = "KUBEGRAFT_METRICS_FINAL_SCRAPE_SECONDS"
"""Seconds rank 0 keeps /metrics up at the end of a run until Prometheus has scraped the final
values (0, the default: exit at once). A scrape interval or two is enough."""

ENV_ATTEMPT = "KUBEGRAFT_ATTEMPT"
"""Gang attempt number (status.attempt, from 0), for logs and the trainer's attempt gauge."""
ENV_PREEMPTIONS = "KUBEGRAFT_PREEMPTIONS"
"""The job's disruptions before this attempt (status.disruptions), for the preemptions gauge."""

DEFAULT_METRICS_PORT = 9400

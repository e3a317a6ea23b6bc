"""Render a FineTuneJob into the Kubernetes objects it needs: a pure function, golden-tested.

``render(job, namespace=, uid=, attempt=, disruptions=)`` returns plain dicts (the wire form),
in creation order: the infrastructure that outlives attempts (the config ConfigMap and the
headless Service), then one worker pod per node for this attempt. Nothing here talks to the
API server, reads the clock or the environment, so the same job always renders to the same
bytes (``tests/data/golden/``).

Pods are created directly rather than through an Indexed Job: the operator restarts the whole
gang at once (a new ``attempt`` label and pod names), which an Indexed Job can only mimic by
being deleted and recreated; see docs/operator.md.
"""

from __future__ import annotations

from typing import Any

from kubegraft.api.v1alpha1 import API_VERSION, KIND, FineTuneJob
from kubegraft.constants import (
    CONFIG_FILE,
    CONFIG_MOUNT_DIR,
    DEFAULT_METRICS_PORT,
    ENV_ATTEMPT,
    ENV_METRICS_PORT,
    ENV_PREEMPTIONS,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_JOB_NAME,
    LABEL_MANAGED_BY,
    LABEL_NODE_RANK,
    MANAGED_BY,
    SHM_MOUNT_DIR,
)
from kubegraft.cpu_share import parse_cpu_quantity
from kubegraft.launch import build_launch
from kubegraft.progress import ENV_PROGRESS_TOKEN_FILE, PROGRESS_AUDIENCE, PROGRESS_TOKEN_DIR
from kubegraft_operator import codec, json_yaml, names

Obj = dict[str, Any]

COMPONENT_WORKER = "worker"
COMPONENT_SERVICE = "service"
COMPONENT_CONFIG = "config"
PROGRESS_TOKEN_SECONDS = 3600
"""Lifetime of rank 0's progress token (the kubelet renews it at 80 %)."""

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_POD_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
"""With a Kueue queue named, each attempt's pods form one Kueue pod group, so Kueue admits
the gang all-or-nothing (its plain-pod integration); see docs/operator.md."""

CONTAINER_NAME = "trainer"
HF_TOKEN_PATH_ENV = "HF_TOKEN_PATH"
"""huggingface_hub reads the token from the file this names (when HF_TOKEN is unset)."""
HF_TOKEN_DIR = "/var/run/secrets/kubegraft/hub"
HF_TOKEN_FILE = "token"
TMP_DIR = "/tmp"
CACHE_DIR = "/var/cache/kubegraft"
CACHE_ENV = {
    "HOME": CACHE_DIR,
    "XDG_CACHE_HOME": CACHE_DIR,
    "HF_HOME": f"{CACHE_DIR}/huggingface",
    "TORCH_HOME": f"{CACHE_DIR}/torch",
    "TORCH_EXTENSIONS_DIR": f"{CACHE_DIR}/torch_extensions",
    "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/torchinductor",
    "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
    "MPLCONFIGDIR": f"{CACHE_DIR}/matplotlib",
}
"""The container's root filesystem is read-only: everything the ML stack writes besides the
output (the Hub's downloads, compiled kernels of DeepSpeed, Triton and Inductor, whatever
writes to $HOME) goes to the cache emptyDir, and temporary files to the /tmp emptyDir.
spec.pod.env comes after these, so a user can point them elsewhere (e.g. a volume with a
pre-filled Hub cache)."""
RUN_AS_USER = 1000
"""A fixed non-root UID: runAsNonRoot alone fails for images whose user is root by name."""
METRICS_PORT_NAME = "metrics"
"""Rank 0's container port that serves the trainer's /metrics (the chart's PodMonitor scrapes
the port of this name; other ranks serve nothing and have no such port)."""
METRICS_PATH = "/metrics"
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(DEFAULT_METRICS_PORT),
    "prometheus.io/path": METRICS_PATH,
}
"""On rank 0's pod, for Prometheus set-ups without the Prometheus Operator (the usual
``kubernetes-pods`` scrape job); the job's own spec.pod.annotations win over these."""


def gpus_per_node(job: FineTuneJob) -> int:
    """nvidia.com/gpu per pod: ``gpusPerNode``, defaulting to ``procsPerNode``."""
    d = job.spec.distributed
    return d.procs_per_node if d.gpus_per_node is None else d.gpus_per_node


def job_labels(name: str, component: str) -> dict[str, str]:
    """Labels on every owned object: who owns it and what it is."""
    return {LABEL_JOB_NAME: name, LABEL_COMPONENT: component, LABEL_MANAGED_BY: MANAGED_BY}


def owner_reference(name: str, uid: str) -> Obj:
    """The controller reference that makes the garbage collector delete children with the job."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(name: str, namespace: str, job: str, uid: str, component: str) -> Obj:
    return {
        "name": name,
        "namespace": namespace,
        "labels": job_labels(job, component),
        "ownerReferences": [owner_reference(job, uid)],
    }


def config_document(job: FineTuneJob, namespace: str, uid: str) -> str:
    """The job manifest the trainer reads (``job.yaml``): only name, namespace, uid and spec,
    and of the spec not ``pod.env``.

    The uid is the job's identity in its checkpoints: the trainer resumes only checkpoints of
    the same uid, so a job recreated under the same name (a new uid) never silently resumes
    its predecessor's optimizer from a shared claim. The environment reaches the trainer as
    the container's environment; a literal value there may be a secret a user should have put
    in a Secret, and a ConfigMap is readable by anyone who may read the namespace's
    ConfigMaps."""
    spec = job.spec.to_wire()
    spec.get("pod", {}).pop("env", None)
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": job.metadata.name, "namespace": namespace, "uid": uid},
        "spec": spec,
    }
    return json_yaml.dumps(doc)  # YAML the trainer reads, written at JSON's speed


def render_service(job: FineTuneJob, *, namespace: str, uid: str) -> Obj:
    """Headless Service: DNS names ``<job>-worker-<rank>.<job>-workers.<ns>.svc``.

    ``publishNotReadyAddresses`` because torchrun's rendezvous happens before any readiness.
    """
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.service(name), namespace, name, uid, COMPONENT_SERVICE),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB_NAME: name, LABEL_COMPONENT: COMPONENT_WORKER},
            "ports": [
                {
                    "name": "rendezvous",
                    "port": job.spec.distributed.master_port,
                    "targetPort": job.spec.distributed.master_port,
                    "protocol": "TCP",
                }
            ],
        },
    }


def render_config_map(job: FineTuneJob, *, namespace: str, uid: str) -> Obj:
    """The rendered job config, mounted read-only at ``CONFIG_MOUNT_DIR``."""
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(names.config_map(name), namespace, name, uid, COMPONENT_CONFIG),
        "data": {CONFIG_FILE: config_document(job, namespace, uid)},
    }


def _copy(user_objects: Any) -> Any:
    """A copy of objects the user wrote in the spec (env, volumes, tolerations, affinity):
    the operator validates a job's spec once per generation and keeps the model
    (reconciler.ValidSpecs), so nothing rendered may be the spec's own dicts or lists."""
    return codec.copy(user_objects)


def _resources(job: FineTuneJob) -> Obj:
    """The user's requests/limits plus ``nvidia.com/gpu`` (an extended resource: limits are
    what counts and requests must equal them)."""
    given = job.spec.pod.resources or {}
    requests = dict(given.get("requests") or {})
    limits = dict(given.get("limits") or {})
    gpus = gpus_per_node(job)
    if gpus > 0:
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    out: Obj = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _cpu_limit(job: FineTuneJob) -> float | None:
    """The pod's CPU limit in CPUs (what its processes share), None without one."""
    limit = ((job.spec.pod.resources or {}).get("limits") or {}).get("cpu")
    try:
        return None if limit is None else parse_cpu_quantity(limit)
    except ValueError:  # an odd quantity: the trainer measures its cgroup instead
        return None


def _env(
    job: FineTuneJob, *, namespace: str, rank: int, attempt: int, disruptions: int
) -> list[Obj]:
    name = job.metadata.name
    config_path = f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}"
    launch = build_launch(
        job.spec,
        node_rank=rank,
        master_addr=names.master_addr(name, namespace),
        config_path=config_path,
        cpus=_cpu_limit(job),
    )
    env: list[Obj] = [{"name": k, "value": v} for k, v in sorted(launch.env.items())]
    env.append({"name": ENV_ATTEMPT, "value": str(attempt)})
    env.append({"name": ENV_PREEMPTIONS, "value": str(disruptions)})
    env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    if rank == 0:
        env.append({"name": ENV_METRICS_PORT, "value": str(DEFAULT_METRICS_PORT)})
        # The token file; the URL and CA of the operator's endpoint are the installation's
        # (added by the reconciler: progress_server.endpoint_env).
        env.append({"name": ENV_PROGRESS_TOKEN_FILE, "value": f"{PROGRESS_TOKEN_DIR}/token"})
    else:
        env.append({"name": ENV_METRICS_PORT, "value": "0"})
    env.extend({"name": k, "value": v} for k, v in CACHE_ENV.items())
    if job.spec.model.token_secret_ref is not None:
        # A file in a Secret volume, not an environment variable: the environment is copied
        # into every child process, crash reports and `ps e`; a file is read when needed.
        env.append({"name": HF_TOKEN_PATH_ENV, "value": f"{HF_TOKEN_DIR}/{HF_TOKEN_FILE}"})
    env.extend(_copy(job.spec.pod.env))
    return env


def _token_volume(job: FineTuneJob) -> list[Obj]:
    """The Hub token Secret as a volume with one file; by reference only: the operator never
    reads the Secret's value."""
    ref = job.spec.model.token_secret_ref
    if ref is None:
        return []
    return [
        {
            "name": "kubegraft-hub-token",
            "secret": {
                "secretName": ref.name,
                "items": [{"key": ref.key, "path": HF_TOKEN_FILE}],
                "defaultMode": 0o440,
            },
        }
    ]


PROGRESS_VOLUME = "kubegraft-progress-token"


def _progress_token_volume() -> Obj:
    """rank 0's projected ServiceAccount token for the operator's progress endpoint only (its
    audience), bound to the pod by the kubelet and rotated by it (:mod:`.progress_server`)."""
    token = {
        "audience": PROGRESS_AUDIENCE,
        "expirationSeconds": PROGRESS_TOKEN_SECONDS,
        "path": "token",
    }
    return {
        "name": PROGRESS_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": token}], "defaultMode": 0o440},
    }


def render_pod(
    job: FineTuneJob, *, namespace: str, uid: str, rank: int, attempt: int, disruptions: int = 0
) -> Obj:
    """Worker pod ``rank`` of gang ``attempt``; ``disruptions`` is the job's count before
    this attempt (status.disruptions), which the trainer exports as its preemptions gauge."""
    name = job.metadata.name
    spec = job.spec
    p = spec.pod
    config_path = f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}"
    argv = build_launch(
        spec,
        node_rank=rank,
        master_addr=names.master_addr(name, namespace),
        config_path=config_path,
    ).argv
    labels = {
        **p.labels,
        **job_labels(name, COMPONENT_WORKER),
        LABEL_NODE_RANK: str(rank),
        LABEL_ATTEMPT: str(attempt),
    }
    ports: list[Obj] = [
        {"name": "rendezvous", "containerPort": spec.distributed.master_port, "protocol": "TCP"}
    ]
    if rank == 0:
        ports.append(
            {"name": METRICS_PORT_NAME, "containerPort": DEFAULT_METRICS_PORT, "protocol": "TCP"}
        )
    output_volume: Obj = (
        {
            "name": "output",
            "persistentVolumeClaim": {"claimName": spec.output.persistent_volume_claim},
        }
        if spec.output.persistent_volume_claim
        else {"name": "output", "emptyDir": {}}
    )
    container: Obj = {
        "name": CONTAINER_NAME,
        "image": p.image,
        "imagePullPolicy": p.image_pull_policy,
        "command": argv,
        "env": _env(job, namespace=namespace, rank=rank, attempt=attempt, disruptions=disruptions),
        "ports": ports,
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT_DIR, "readOnly": True},
            {"name": "shm", "mountPath": SHM_MOUNT_DIR},
            {"name": "output", "mountPath": spec.output.path},
            {"name": "kubegraft-tmp", "mountPath": TMP_DIR},
            {"name": "kubegraft-cache", "mountPath": CACHE_DIR},
            *(
                [{"name": PROGRESS_VOLUME, "mountPath": PROGRESS_TOKEN_DIR, "readOnly": True}]
                if rank == 0
                else []
            ),
            *(
                [{"name": "kubegraft-hub-token", "mountPath": HF_TOKEN_DIR, "readOnly": True}]
                if spec.model.token_secret_ref is not None
                else []
            ),
            *_copy(p.volume_mounts),
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    resources = _resources(job)
    if resources:
        container["resources"] = resources
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "hostname": names.hostname(name, rank),
        "subdomain": names.service(name),
        # The namespace's default ServiceAccount unless the user chose one. No API token unless
        # the user chose one (their code may need it on every node): rank 0's progress token
        # (its own volume) is for the operator's audience only.
        **({"serviceAccountName": p.service_account_name} if p.service_account_name else {}),
        "automountServiceAccountToken": p.service_account_name is not None,
        "terminationGracePeriodSeconds": spec.run_policy.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config_map(name)}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": p.shm_size}},
            output_volume,
            {"name": "kubegraft-tmp", "emptyDir": {}},
            {"name": "kubegraft-cache", "emptyDir": {}},
            *([_progress_token_volume()] if rank == 0 else []),
            *_token_volume(job),
            *_copy(p.volumes),
        ],
    }
    if p.scheduler_name:
        pod_spec["schedulerName"] = p.scheduler_name
    if p.priority_class_name:
        pod_spec["priorityClassName"] = p.priority_class_name
    if p.node_selector:
        pod_spec["nodeSelector"] = dict(p.node_selector)
    if p.tolerations:
        pod_spec["tolerations"] = _copy(p.tolerations)
    if p.affinity:
        pod_spec["affinity"] = _copy(p.affinity)
    if p.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in p.image_pull_secrets]
    annotations = {**(SCRAPE_ANNOTATIONS if rank == 0 else {}), **p.annotations}
    # A job with a queue name of its own is admitted through its Workload (.kueue), not as a
    # pod group.
    if KUEUE_QUEUE_LABEL in labels and KUEUE_QUEUE_LABEL not in _job_labels(job):
        labels[KUEUE_POD_GROUP_LABEL] = f"{name}-a{attempt}"
        annotations[KUEUE_POD_GROUP_COUNT] = str(spec.distributed.nodes)
    metadata: Obj = {
        "name": names.pod(name, rank, attempt),
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(name, uid)],
    }
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _job_labels(job: FineTuneJob) -> dict[str, str]:
    return dict((job.metadata.model_extra or {}).get("labels") or {})


def render_infrastructure(job: FineTuneJob, *, namespace: str, uid: str) -> list[Obj]:
    """The objects that live as long as the job (not per attempt), in creation order."""
    return [
        render_config_map(job, namespace=namespace, uid=uid),
        render_service(job, namespace=namespace, uid=uid),
    ]


def render_pods(
    job: FineTuneJob, *, namespace: str, uid: str, attempt: int, disruptions: int = 0
) -> list[Obj]:
    """All worker pods of one gang attempt, rank 0 first."""
    return [
        render_pod(
            job, namespace=namespace, uid=uid, rank=r, attempt=attempt, disruptions=disruptions
        )
        for r in range(job.spec.distributed.nodes)
    ]


def render(
    job: FineTuneJob, *, namespace: str, uid: str, attempt: int, disruptions: int = 0
) -> list[Obj]:
    """Everything a job needs for gang ``attempt``: infrastructure first, then the pods."""
    return [
        *render_infrastructure(job, namespace=namespace, uid=uid),
        *render_pods(job, namespace=namespace, uid=uid, attempt=attempt, disruptions=disruptions),
    ]

"""Pure builders for the objects ``up`` creates: fake GPU nodes and pod-outcome kwok Stages.

kwok plays the kubelet. Its stock "fast" Stages (applied from the kwok module's kustomize
directory) make a scheduled pod Running at once and complete pods owned by a Job. The Stages
here, weighted 10000 so that they win over the stock ones (weight 0), let a test pick what
happens to a Running pod by label, whether or not a Job owns it:

    metadata:
      labels:
        kubegraft.io/test-outcome: succeed | fail | run | image-pull-error
      annotations:
        kubegraft.io/test-delay: "3s"        # Go duration; how long it runs first (default 0s)
        kubegraft.io/test-exit-code: "137"   # for fail (default 1)

``run`` keeps the pod Running even when a Job owns it (the stock Stage would complete it).
``image-pull-error`` acts on the Pending pod instead: it stays Pending with its containers
waiting in ``ImagePullBackOff``, as a kubelet reports an image that cannot be pulled.
"""

from __future__ import annotations

from typing import Any

OUTCOME_LABEL = "kubegraft.io/test-outcome"
"""Pod label choosing the fake kubelet's outcome: one of :data:`OUTCOMES`."""
DELAY_ANNOTATION = "kubegraft.io/test-delay"
"""Pod annotation: how long the pod stays Running before its outcome (Go duration, e.g. 3s)."""
EXIT_CODE_ANNOTATION = "kubegraft.io/test-exit-code"
"""Pod annotation: the containers' exit code when the outcome is ``fail`` (default 1)."""
OUTCOMES = ("succeed", "fail", "run", "image-pull-error")

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
"""kwok manages nodes annotated ``kwok.x-k8s.io/node=fake`` (``--manage-nodes-with-...``)."""
GPU_RESOURCE = "nvidia.com/gpu"
OUTCOME_WEIGHT = 10000

STOCK_STAGE_FILES = (
    "stage/node/fast/node-initialize.yaml",
    "stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "stage/pod/fast/pod-ready.yaml",
    "stage/pod/fast/pod-complete.yaml",
    "stage/pod/fast/pod-delete.yaml",
)
"""kwok's own Stages (paths under ``kwok-kustomize/``): the set kwok uses when run without CRDs."""
STAGE_CRD_FILE = "crd/bases/kwok.x-k8s.io_stages.yaml"


def fake_gpu_node(
    name: str, *, gpus: int = 8, cpu: str = "64", memory: str = "512Gi", pods: str = "110"
) -> dict[str, Any]:
    """A Node that kwok manages, advertising ``gpus`` ``nvidia.com/gpu`` to the scheduler."""
    resources = {"cpu": cpu, "memory": memory, "pods": pods, GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.count": str(gpus),
            },
        },
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def _container_statuses(state: str) -> str:
    return (
        "containerStatuses:\n"
        "{{ range .spec.containers }}\n"
        "- image: {{ .image | Quote }}\n"
        "  name: {{ .name | Quote }}\n"
        "  ready: false\n"
        "  restartCount: 0\n"
        "  started: false\n"
        "  state:\n"
        "    terminated:\n"
        f"{state}"
        "      finishedAt: {{ $now | Quote }}\n"
        "      startedAt: {{ $now | Quote }}\n"
        "{{ end }}\n"
    )


def _outcome_stage(
    outcome: str, next_: dict[str, Any], *, phase: str = "Running"
) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": f"kubegraft-test-{outcome}"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchLabels": {OUTCOME_LABEL: outcome},
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.phase", "operator": "In", "values": [phase]},
                ],
            },
            "weight": OUTCOME_WEIGHT,
            "delay": {
                "durationMilliseconds": 0,
                "durationFrom": {"expressionFrom": f'.metadata.annotations["{DELAY_ANNOTATION}"]'},
            },
            "next": next_,
        },
    }


def outcome_stages() -> list[dict[str, Any]]:
    """The Stages behind :data:`OUTCOME_LABEL` (succeed, fail with an exit code, keep running)."""
    succeed = (
        "{{ $now := Now }}\n"
        + _container_statuses("      exitCode: 0\n      reason: Completed\n")
        + "phase: Succeeded\n"
    )
    fail = (
        "{{ $now := Now }}\n"
        '{{ $code := "1" }}\n'
        "{{ with .metadata.annotations }}"
        f'{{{{ with index . "{EXIT_CODE_ANNOTATION}" }}}}{{{{ $code = . }}}}{{{{ end }}}}'
        "{{ end }}\n"
        + _container_statuses("      exitCode: {{ $code }}\n      reason: Error\n")
        + "phase: Failed\n"
    )
    # No timestamps: applying it again is a no-op patch (no new watch event), so the Stage
    # settles instead of re-firing, and it keeps winning over the stock pod-ready Stage.
    image_pull_error = (
        "phase: Pending\n"
        "conditions:\n"
        "- type: PodScheduled\n  status: 'True'\n"
        "- type: Initialized\n  status: 'True'\n"
        "- type: Ready\n  status: 'False'\n  reason: ContainersNotReady\n"
        "- type: ContainersReady\n  status: 'False'\n  reason: ContainersNotReady\n"
        "containerStatuses:\n"
        "{{ range .spec.containers }}\n"
        "- image: {{ .image | Quote }}\n"
        "  name: {{ .name | Quote }}\n"
        "  ready: false\n"
        "  restartCount: 0\n"
        "  started: false\n"
        "  state:\n"
        "    waiting:\n"
        "      reason: ImagePullBackOff\n"
        '      message: {{ printf "Back-off pulling image %q" .image | Quote }}\n'
        "{{ end }}\n"
    )
    return [
        _outcome_stage("succeed", {"statusTemplate": succeed}),
        _outcome_stage("fail", {"statusTemplate": fail}),
        # Matching is enough: it wins over the stock pod-complete, and emits one event.
        _outcome_stage(
            "run",
            {
                "event": {
                    "type": "Normal",
                    "reason": "KubegraftTestRun",
                    "message": f"{OUTCOME_LABEL}=run: kept Running",
                }
            },
        ),
        _outcome_stage("image-pull-error", {"statusTemplate": image_pull_error}, phase="Pending"),
    ]

"""The launch command of one node of a FineTuneJob: a pure function of the spec.

Both the operator (the worker pod's command and env) and ``kubegraft run`` (local processes)
call :func:`build_launch`, so a job starts the same way on a laptop and on a cluster. The
command is the node supervisor (``kubegraft_trainer.node``, which turns torchrun's exit into
the trainer's own exit code) around ``torchrun``'s module form, which starts ``procsPerNode``
trainer processes on this node and rendezvous with the other nodes at rank 0's address;
Accelerate, inside the trainer, reads the torchrun environment (and builds the DeepSpeed/FSDP
plugin from the spec), so there is no ``accelerate launch`` config file to keep in sync.

The preemption window: the kubelet sends SIGTERM to the supervisor, which passes it to
torchrun, which passes it to the workers and SIGKILLs them after its ``--shutdown-timeout``
(30 s unless told). The pods' grace period is ``runPolicy.terminationGracePeriodSeconds``, so
torchrun is told to wait all of it but :func:`shutdown_margin_seconds`, which is what torchrun
and the supervisor need to wind down before the kubelet's own SIGKILL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubegraft.api.v1alpha1 import FineTuneJobSpec
from kubegraft.constants import ENV_JOB_CONFIG
from kubegraft.cpu_share import ENV_THREADS, threads_per_process

TRAINER_MODULE = "kubegraft_trainer"
# The node supervisor around torchrun: exits with the workers' own code (torchrun says only 1).
NODE_MODULE = "kubegraft_trainer.node"


def shutdown_margin_seconds(grace_seconds: int) -> int:
    """The part of the pod's grace period kept back from the trainer: a tenth, at least 5 s
    (torchrun's teardown, the supervisor reading the status records and writing the
    termination log) and at most 30 s (more would only shorten the save)."""
    return min(30, max(5, grace_seconds // 10))


def shutdown_timeout_seconds(grace_seconds: int) -> int:
    """How long torchrun lets the workers finish after forwarding SIGTERM: the grace period
    less the margin (never below 1 s; the API's minimum grace period is 10 s)."""
    return max(1, grace_seconds - shutdown_margin_seconds(grace_seconds))


def launch_threads(spec: FineTuneJobSpec, cpus: float | None) -> int | None:
    """The intra-op threads per process the launch can fix: the spec's, else the share of
    ``cpus``; None when neither is known (the trainer then measures its own share)."""
    d = spec.distributed
    if d.threads_per_process is not None:
        return d.threads_per_process
    if cpus is None:
        return None
    return threads_per_process(cpus, d.procs_per_node)


@dataclass(frozen=True)
class Launch:
    """argv and environment for one node."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def build_launch(
    spec: FineTuneJobSpec,
    *,
    node_rank: int,
    master_addr: str,
    config_path: str,
    python: str = "python",
    extra_env: dict[str, str] | None = None,
    cpus: float | None = None,
) -> Launch:
    """Build the command that starts node ``node_rank`` of ``spec.distributed.nodes``.

    ``master_addr`` is rank 0's stable address (the headless Service's DNS name in a cluster,
    127.0.0.1 locally). The environment carries the rendezvous facts too (MASTER_ADDR, ...,
    WORLD_SIZE), so logs and tools see them without parsing argv.

    Threads: ``spec.distributed.threadsPerProcess``, else the share of ``cpus`` (the pod's CPU
    limit, when the caller knows it) per process, go into OMP_NUM_THREADS/MKL_NUM_THREADS and
    :data:`~kubegraft.cpu_share.ENV_THREADS`. With neither, the environment says nothing and
    each trainer process takes its share of the CPUs it finds (:mod:`kubegraft.cpu_share`).
    """
    d = spec.distributed
    if not 0 <= node_rank < d.nodes:
        raise ValueError(f"node_rank {node_rank} is outside 0..{d.nodes - 1}")
    argv = [
        python,
        "-m",
        NODE_MODULE,
        f"--status-dir={spec.output.path.rstrip('/')}/status",
        "--",
        python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={d.nodes}",
        f"--nproc-per-node={d.procs_per_node}",
        f"--node-rank={node_rank}",
        f"--master-addr={master_addr}",
        f"--master-port={d.master_port}",
        # Static rendezvous: the gang is all-or-nothing and the operator restarts it whole, so
        # torchrun's own elastic restarts would only race with the operator's.
        "--max-restarts=0",
        # The workers get the pod's grace period, less a margin, to save after SIGTERM.
        "--shutdown-timeout="
        + str(shutdown_timeout_seconds(spec.run_policy.termination_grace_period_seconds)),
        "-m",
        TRAINER_MODULE,
        "--config",
        config_path,
    ]
    env = {
        ENV_JOB_CONFIG: config_path,
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(d.master_port),
        "NNODES": str(d.nodes),
        "NODE_RANK": str(node_rank),
        "NPROC_PER_NODE": str(d.procs_per_node),
        "WORLD_SIZE": str(d.nodes * d.procs_per_node),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    threads = launch_threads(spec, cpus)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", ENV_THREADS):
            env[var] = str(threads)
    if d.strategy.value == "deepspeed":
        # DeepSpeed must not try to compile ops at start-up on a machine without a compiler.
        env["DS_BUILD_OPS"] = "0"
    if extra_env:
        env.update(extra_env)
    return Launch(argv=argv, env=env)

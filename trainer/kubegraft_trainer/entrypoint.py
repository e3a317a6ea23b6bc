"""The trainer process's entrypoint: manifest in, exit code out.

``python -m kubegraft_trainer --config job.yaml`` is what :func:`kubegraft.launch.build_launch`
runs under torchrun, in the operator's pods and under ``kubegraft run``. This module only reads
the manifest, sets up logging and the SIGTERM handler, runs :class:`~kubegraft_trainer.loop.Trainer`
and maps the outcome to the documented exit codes (:mod:`kubegraft.exitcodes`):

* 0 success; 78 configuration error (ConfigError or an invalid manifest: permanent);
* 1 with a short reason for a RetryableError (e.g. the Hub down or rate-limiting);
* 75 preempted (SIGTERM handled, checkpoint saved: retryable); 1 anything else (retryable).

torchrun reports any failed worker as exit code 1, so each process also records its own code
and reason in ``<output.path>/status/rank-<N>.json``; the node supervisor
(:mod:`kubegraft_trainer.node`) turns those records into the pod's exit code and writes the
telling one to the container's termination log, where the operator reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from kubegraft.api.v1alpha1 import FineTuneJob, FineTuneJobSpec
from kubegraft.constants import ENV_JOB_CONFIG
from kubegraft.exitcodes import ExitCode, describe
from kubegraft.progress import write_atomically
from kubegraft_trainer.errors import ConfigError, RetryableError

log = logging.getLogger("kubegraft_trainer")
STATUS_DIR = "status"


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """One line per bad field, named as on the wire (``spec.training.epochs: ...``)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        field = ".".join(p for p in (prefix, loc) if p) or "manifest"
        lines.append(f"{field}: {err['msg']}")
    return "\n".join(lines)


def load_job(
    path: str | os.PathLike[str],
) -> tuple[FineTuneJobSpec, str, str | None, str | None]:
    """The spec, job name, job uid and namespace (None without one, e.g. under ``kubegraft
    run``) of a manifest file (a whole FineTuneJob, or just its spec). The operator renders
    all four into the pod's job.yaml."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", field="--config") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", field="--config") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} does not hold a mapping", field="--config")
    try:
        if "spec" in doc:
            job = FineTuneJob.model_validate(doc)
            uid = (job.metadata.model_extra or {}).get("uid")
            namespace = job.metadata.namespace
            return job.spec, job.metadata.name, str(uid) if uid else None, namespace or None
        return FineTuneJobSpec.model_validate(doc), "job", None, None
    except ValidationError as exc:
        raise ConfigError(
            "invalid manifest:\n"
            + format_validation_error(exc, "spec" if "spec" not in doc else "")
        ) from exc


def _setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in (
        "DeepSpeed",
        "deepspeed",
        "accelerate",
        "torch.distributed",
        "transformers",
        "httpx",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING if rank == 0 else logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def write_status(output: Path | None, rank: int, code: int, message: str) -> None:
    """Record this process's exit code and reason for the node supervisor and ``kubegraft run``."""
    if output is None:
        return
    record = json.dumps(
        {"rank": rank, "exitCode": code, "reason": describe(code), "message": message[-2000:]}
    )
    with contextlib.suppress(OSError):
        write_atomically(output / STATUS_DIR / f"rank-{rank}.json", record + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubegraft_trainer", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config", default=os.environ.get(ENV_JOB_CONFIG), help="the FineTuneJob manifest"
    )
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    _setup_logging(rank)
    output: Path | None = None
    code, message = int(ExitCode.FAILURE), ""
    from kubegraft_trainer.signals import PreemptionFlag

    flag = PreemptionFlag()
    flag.install()
    try:
        if not args.config:
            raise ConfigError(
                f"no manifest: pass --config or set {ENV_JOB_CONFIG}", field="--config"
            )
        spec, name, uid, namespace = load_job(args.config)
        output = Path(spec.output.path)
        from kubegraft_trainer.loop import Trainer
        from kubegraft_trainer.signals import Preempted

        try:
            result = Trainer(
                spec, job_name=name, preemption=flag, job_uid=uid, namespace=namespace
            ).run()
        except Preempted as exc:
            code, message = int(ExitCode.PREEMPTED), str(exc)
            log.warning("%s", exc)
        else:
            code, message = int(ExitCode.SUCCESS), "completed"
            if rank == 0 and result:
                log.info(
                    "done: %s",
                    json.dumps({k: result.get(k) for k in ("step", "accuracy", "f1", "loss")}),
                )
    except ConfigError as exc:
        code, message = int(ExitCode.CONFIG_ERROR), str(exc)
        log.error("configuration error: %s", exc)
    except RetryableError as exc:
        code, message = int(ExitCode.FAILURE), str(exc)
        log.error("retryable failure: %s", exc, exc_info=True)
    except Exception as exc:
        if flag.requested:
            # A peer that honoured the same SIGTERM left a collective under this rank's feet
            # (or the pod is going away): still a preemption, not a failure of the job.
            code, message = int(ExitCode.PREEMPTED), f"{flag.signal_name} received, then: {exc}"
            log.warning("%s", message)
        else:
            code, message = int(ExitCode.FAILURE), traceback.format_exc()
            log.error("training failed:\n%s", message)
    finally:
        _shutdown_distributed()
    write_status(output, rank, code, message)
    return code


def _shutdown_distributed() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass

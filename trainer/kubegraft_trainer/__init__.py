"""kubegraft_trainer: the code that runs inside every training process.

Pretrained checkpoint -> new head -> freezing policy -> distributed loop (Accelerate: DDP,
DeepSpeed ZeRO) -> evaluation -> checkpoints/resume -> export. Started by torchrun as
``python -m kubegraft_trainer --config job.yaml`` (see :mod:`kubegraft.launch`), both in the
operator's worker pods and under ``kubegraft run``. Imports nothing heavy at package import.
"""

__all__: list[str] = []

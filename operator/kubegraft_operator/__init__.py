"""kubegraft_operator: the kopf operator that turns FineTuneJobs into gang-scheduled training.

Layers, from pure to effectful (the shell is thin, the core is pure and unit-tested):

- :mod:`.render`: spec -> the Kubernetes objects a job needs (golden-file tested).
- :mod:`.observe`: raw pods, nodes and rank 0's report -> typed observations.
- :mod:`.decide`: the state machine: (job, observations, now) -> a :class:`.decide.Decision`.
- :mod:`.conditions`, :mod:`.progress_status`: small pure helpers of ``decide``.
- :mod:`.apply`: executes a Decision against the API server (create-if-absent, one status
  patch, Events after the write).
- :mod:`.handlers`, :mod:`.main`: the kopf wiring (a daemon per job, watches on owned pods
  and nodes), :mod:`.progress_server` (rank 0's reports over HTTPS), :mod:`.settings`,
  :mod:`.metrics`, :mod:`.codec`.

Never imports torch/transformers/accelerate/deepspeed (a layering test checks it).
"""

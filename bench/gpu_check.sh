#!/usr/bin/env bash
# One script for a GPU machine (sized for one NVIDIA H100, a few minutes): the gpu-marked
# trainer tests and a throughput/MFU measurement. The tests, in this order:
# * tests/gpu/test_gpu_collectives.py: every collective the trainer issues (the logged loss,
#   evaluation, causal-LM evaluation, the frozen-feature cache, the preemption flag; DDP and
#   DeepSpeed ZeRO-2) carries CUDA tensors over NCCL. World size 1 through torchrun first: a
#   one-GPU machine has a real NCCL process group and runs every collective, so it checks what
#   a multi-GPU job needs; with more GPUs, again at one process per GPU.
# * tests/gpu/test_gpu_training.py: bf16 DDP over NCCL, DeepSpeed ZeRO-2/ZeRO-3 with a frozen
#   prefix, gradient checkpointing.
#
#   bench/gpu_check.sh                 # from the repository root
#   PYTHON=/path/to/venv/bin/python bench/gpu_check.sh
#
# Needs an environment with the trainer extras and the offline assets installed
# (pip install -e '.[trainer,deepspeed,assets]' plus pytest, pytest-timeout, scikit-learn).
# Results (pytest summary, metrics.json of each run, the MFU table) go to stdout and to
# ${OUT:-./gpu-check}/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/trainer:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false KUBEGRAFT_METRICS_PORT=0

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" - <<'PY'
import torch, transformers, accelerate
print(f"torch {torch.__version__} cuda {torch.version.cuda} transformers {transformers.__version__} "
      f"accelerate {accelerate.__version__} gpus {torch.cuda.device_count()}")
assert torch.cuda.is_available(), "no CUDA device visible"
try:
    import deepspeed
    print("deepspeed", deepspeed.__version__)
except Exception as exc:  # the ZeRO tests will fail and say why
    print("deepspeed not importable:", exc)
PY

echo "== gpu-marked tests"
set +e
"$PYTHON" -m pytest tests/gpu -m gpu -q -p no:cacheprovider --durations=0 \
    --basetemp "$OUT/pytest" --junitxml "$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.txt"
TESTS_RC=${PIPESTATUS[0]}
set -e
echo "== collectives seen by the probe (site: op on devices, per rank)"
"$PYTHON" - "$OUT/pytest" <<'PY' | tee "$OUT/collectives-summary.txt" || true
import collections, json, pathlib, sys
for report in sorted(pathlib.Path(sys.argv[1]).glob("*/report/rank-*.json")):
    if "current" in report.parts[-3]:
        continue  # pytest's *current links: no repeats
    r = json.loads(report.read_text())
    seen = collections.Counter((c["site"], c["op"], ",".join(sorted(set(c["devices"])))) for c in r["calls"])
    print(report.parts[-3], f"rank {r['rank']} expected {r['expected']} exit {r['exit_code']}",
          f"violations {len(r['violations'])}")
    for (site, op, devices), n in sorted(seen.items()):
        print(f"    {site}: {op} x{n} on {devices}")
PY
for m in "$OUT"/pytest/*/out/metrics.json; do
    case "$m" in */pytest/*current/*) continue ;; esac  # pytest's *current links: no repeats
    [ -f "$m" ] && "$PYTHON" -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-3], {k: m.get(k) for k in ('strategy','processes','accuracy','chance_accuracy','samples_per_second','train_seconds','trainable_parameters','total_parameters')})" "$m"
done | tee "$OUT/metrics-summary.txt" || true

echo "== trainer throughput (MiniLM, full fine-tuning, bf16, batch 64 x 64 tokens)"
# THROUGHPUT_TIMEOUT bounds the run (SIGINT: `kubegraft run` then stops the trainer's gang).
timeout -s INT -k 30 "${THROUGHPUT_TIMEOUT:-1200}" "$PYTHON" -m kubegraft.cli run examples/quickstart.yaml --no-progress --output "$OUT/throughput" \
    --nproc "$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')" \
    --set freeze.preset=full --set training.precision=bf16 --set training.epochs=1 \
    --set dataset.maxSamples="${THROUGHPUT_SAMPLES:-20000}" --set dataset.maxLength=64 --set training.perDeviceBatchSize=64 \
    --set training.cacheFrozenFeatures=false --set training.learningRate=5e-5 \
    --set distributed.backend=nccl > "$OUT/throughput.log" 2>&1 \
    || { tail -30 "$OUT/throughput.log"; echo "throughput run failed"; }
"$PYTHON" -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"trainer: {m['samples_per_second']:.0f} samples/s, val accuracy {m['accuracy']:.3f} (chance {m['chance_accuracy']:.3f})\")" "$OUT/throughput/metrics.json" | tee -a "$OUT/metrics-summary.txt" || true

echo "== MFU: a BERT-large-shaped encoder (random init; 24 x 1024, seq 512), bf16, AdamW"
"$PYTHON" - <<'PY' | tee "$OUT/mfu.txt"
import time, torch
from transformers import BertConfig, BertForSequenceClassification
torch.backends.cuda.matmul.allow_tf32 = True
cfg = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 max_position_embeddings=512, num_labels=8, attn_implementation="sdpa")
model = BertForSequenceClassification(cfg).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
name = torch.cuda.get_device_name()
peak = 989e12 if ("H100" in name and "PCIe" not in name) or "H200" in name else 756e12 if "H100" in name else 312e12
B, S = 32, 512
x = torch.randint(0, cfg.vocab_size, (B, S), device="cuda"); y = torch.randint(0, 8, (B,), device="cuda")
n_dense = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
flops_step = 6 * n_dense * B * S + 3 * 4 * cfg.num_hidden_layers * cfg.hidden_size * S * S * B
def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=x, labels=y).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(5): step()
torch.cuda.synchronize(); t = time.perf_counter(); n = 20
for _ in range(n): step()
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / n
print(f"device        {name}")
print(f"step          {dt*1000:.1f} ms  (batch {B} x {S} tokens)")
print(f"throughput    {B*S/dt:,.0f} tokens/s, {B/dt:.1f} samples/s")
print(f"achieved      {flops_step/dt/1e12:.1f} TFLOP/s (bf16)")
print(f"MFU           {100*flops_step/dt/peak:.1f} % of {peak/1e12:.0f} TFLOP/s peak")
print(f"peak memory   {torch.cuda.max_memory_allocated()/2**30:.1f} GiB")
PY
exit "$TESTS_RC"

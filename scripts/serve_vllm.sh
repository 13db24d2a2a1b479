#!/usr/bin/env bash
# Starts one vLLM OpenAI-compatible server per agent model, each in vLLM's OWN virtual environment.
#
# vLLM pins its own torch and fastapi<0.137, which prefect 3.8 excludes, so it can never share .venv/.
# The data engine reaches these servers over HTTP (configs/server.yaml points at their URLs).
#
#   scripts/serve_vllm.sh install            # one-time: creates $VLLM_VENV (default ~/.venvs/vllm) with vllm
#   scripts/serve_vllm.sh llm  [extra args]  # analyzer + judge + refiner model (Qwen2-7B-Instruct), port 8001
#   scripts/serve_vllm.sh vlm  [extra args]  # annotator + region captioner (InternVL2-26B), port 8002
#   scripts/serve_vllm.sh judge [extra args] # Bench-D judge when not using GPT-4o (Qwen2-72B-Instruct), port 8003
#   scripts/serve_vllm.sh health URL         # waits until URL/models answers (e.g. http://127.0.0.1:8001/v1)
#
# Models, ports and GPUs can be overridden: LLM_MODEL, VLM_MODEL, JUDGE_MODEL, LLM_PORT, VLM_PORT, JUDGE_PORT,
# CUDA_VISIBLE_DEVICES, VLLM_EXTRA_ARGS. With Docker instead of a venv:
#   docker run --gpus all -p 8001:8000 vllm/vllm-openai:latest --model Qwen/Qwen2-7B-Instruct
set -euo pipefail
VLLM_VENV=${VLLM_VENV:-$HOME/.venvs/vllm}
role=${1:-}
shift || true

serve() {
  local model=$1 port=$2
  shift 2
  exec "$VLLM_VENV/bin/vllm" serve "$model" --host "${VLLM_HOST:-0.0.0.0}" --port "$port" \
    --served-model-name "$model" ${VLLM_EXTRA_ARGS:-} "$@"
}

case "$role" in
  install)
    python3 -m venv "$VLLM_VENV"
    "$VLLM_VENV/bin/pip" install --upgrade pip
    "$VLLM_VENV/bin/pip" install "vllm${VLLM_VERSION:+==$VLLM_VERSION}"
    ;;
  llm)
    serve "${LLM_MODEL:-Qwen/Qwen2-7B-Instruct}" "${LLM_PORT:-8001}" --max-model-len 8192 "$@"
    ;;
  vlm)
    serve "${VLM_MODEL:-OpenGVLab/InternVL2-26B}" "${VLM_PORT:-8002}" --trust-remote-code --max-model-len 8192 \
      --limit-mm-per-prompt '{"image": 16}' "$@"
    ;;
  judge)
    serve "${JUDGE_MODEL:-Qwen/Qwen2-72B-Instruct}" "${JUDGE_PORT:-8003}" --max-model-len 8192 "$@"
    ;;
  health)
    url=${1:?usage: serve_vllm.sh health URL}
    for _ in $(seq 1 "${HEALTH_TRIES:-120}"); do
      if curl -fsS "$url/models" >/dev/null 2>&1; then echo "up: $url"; exit 0; fi
      sleep 5
    done
    echo "no answer from $url/models" >&2
    exit 1
    ;;
  *)
    sed -n '2,19p' "$0"
    exit 2
    ;;
esac

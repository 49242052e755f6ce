#!/usr/bin/env bash
# Check that the lower bounds in pyproject.toml are true: install every direct dependency at its lowest allowed
# version (uv's --resolution lowest-direct; torch stays at the CPU wheel the README pins), then train the README's
# concept for a few steps and run the suite's torch tests (not the JAX and web-UI ones, whose extras have their own
# bounds). A fresh pip install takes the newest releases, which CI tests; this is the other end.
#
#   bash tools/check_lower_bounds.sh                 # about 15 minutes on 2 cores
#   bash tools/check_lower_bounds.sh tests/unit      # only these tests
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TEXTINV_LOWEST_VENV:-/tmp/textinv-lowest-venv}"
python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip uv
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m uv pip install --python "$venv/bin/python" -q --resolution lowest-direct -e . pytest
"$venv/bin/python" -m uv pip list --python "$venv/bin/python" 2>/dev/null \
    | grep -iE '^(torch|diffusers|transformers|accelerate|safetensors|huggingface-hub|pillow|tqdm|tensorboard|numpy) '
out="$(mktemp -d)"
"$venv/bin/textinv" train --train_data_dir examples/orange-star --placeholder_token "<my-star>" \
    --initializer_token star --seed 0 --max_train_steps 5 --output_dir "$out/run"
"$venv/bin/textinv" generate "a photo of a <my-star>" --concept "$out/run" -n 2 --steps 2 --out "$out/shots"
rm -rf "$out"
if [ $# -eq 0 ]; then
    set -- tests/unit tests/e2e
fi
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" \
    --ignore=tests/unit/ui --ignore=tests/unit/commands/test_ui.py --ignore=tests/unit/test_jax_modules.py \
    --ignore=tests/unit/test_jax_step.py --ignore=tests/unit/test_jax_flags.py --ignore=tests/e2e/test_ui_browser.py \
    --ignore=tests/e2e/test_ui_api.py --ignore=tests/e2e/test_ui_worker.py --ignore=tests/e2e/test_train_jax.py

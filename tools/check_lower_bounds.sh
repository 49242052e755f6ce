#!/usr/bin/env bash
# Check that the lower bounds in pyproject.toml are true. A fresh pip install takes the newest releases, which CI
# tests; this is the other end, in its own venv (torch stays at the CPU wheel the README pins):
#   1. every direct dependency at its lowest allowed version (uv's --resolution lowest-direct: diffusers 0.30,
#      transformers 4.40, numpy 1.24, ...): train the README's concept for a few steps, generate, and run the suite
#      but its JAX and web-UI tests;
#   2. the [jax] extra added at its lowest versions (jax needs a newer numpy, so this cannot share step 1's): the
#      JAX tests (and the JAX rows of the bench tests). The [ui] extra is not checked here.
#
#   bash tools/check_lower_bounds.sh                 # about 18 minutes on 2 cores
#   bash tools/check_lower_bounds.sh tests/unit      # step 1 runs only these tests
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TEXTINV_LOWEST_VENV:-/tmp/textinv-lowest-venv}"
py="$venv/bin/python"
versions() {
    "$py" -m uv pip list --python "$py" 2>/dev/null | grep -iE \
        '^(torch|diffusers|transformers|accelerate|safetensors|huggingface-hub|pillow|tqdm|tensorboard|numpy|jax|flax|optax) '
}
jax_tests=(tests/unit/test_jax_modules.py tests/unit/test_jax_step.py tests/unit/test_jax_flags.py
    tests/e2e/test_train_jax.py)
ui_tests=(tests/unit/ui tests/unit/commands/test_ui.py tests/e2e/test_ui_browser.py tests/e2e/test_ui_api.py
    tests/e2e/test_ui_worker.py)

python3 -m venv --clear "$venv"
"$py" -m pip install -q --upgrade pip uv
"$py" -m pip install -q torch==2.13.0
"$py" -m uv pip install --python "$py" -q --resolution lowest-direct -e .
"$py" -m uv pip install --python "$py" -q pytest # the newest: not ours to bound
echo "== step 1: the lowest versions of the core dependencies"
versions
out="$(mktemp -d)"
"$venv/bin/textinv" train --train_data_dir examples/orange-star --placeholder_token "<my-star>" \
    --initializer_token star --seed 0 --max_train_steps 5 --output_dir "$out/run"
"$venv/bin/textinv" generate "a photo of a <my-star>" --concept "$out/run" -n 2 --steps 2 --out "$out/shots"
rm -rf "$out"
[ $# -eq 0 ] && set -- tests/unit tests/e2e
"$py" -m pytest -q -p no:cacheprovider "$@" "${jax_tests[@]/#/--ignore=}" "${ui_tests[@]/#/--ignore=}"

echo "== step 2: and the [jax] extra at its lowest versions"
"$py" -m uv pip install --python "$py" -q --resolution lowest-direct -e ".[jax]"
versions
"$py" -m pytest -q -p no:cacheprovider "${jax_tests[@]}" tests/unit/test_speed.py -k jax  # + the JAX bench rows

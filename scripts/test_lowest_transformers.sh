#!/usr/bin/env bash
# Runs the tests of what a consumer's transformers executes -- the saved remote code (AutoModel/AutoProcessor),
# generation and every pipeline -- on the LOWEST transformers that setup.py allows, in a virtual environment that
# shares everything else (torch, datasets, mm itself) with the current one. CI runs it after the full suite, which
# runs on the newest allowed version. Usage: bash scripts/test_lowest_transformers.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOWEST=$("$PY" -c "import re; print(re.search(r'\"transformers>=([0-9.]+)', open('setup.py').read()).group(1))")
VENV=${MM_LOWEST_VENV:-${TMPDIR:-/tmp}/mm-transformers-$LOWEST}
if ! "$VENV/bin/python" -c "import transformers, sys; sys.exit(transformers.__version__ != '$LOWEST')" 2>/dev/null; then
  "$PY" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q "transformers==$LOWEST"
fi
echo "== transformers $("$VENV/bin/python" -c 'import transformers; print(transformers.__version__)') (lowest allowed)"
"$VENV/bin/python" -m pytest -q tests/test_remote_code.py tests/test_pipelines.py tests/test_generation.py "$@"

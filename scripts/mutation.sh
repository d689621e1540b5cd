#!/usr/bin/env bash
# Mutation testing of the code behind the reported numbers: mutmut mutates the modules listed in pyproject.toml
# ([tool.mutmut] only_mutate) one change at a time and runs, for each mutant, the selected fast tests that reach the
# mutated function. A mutant that no test fails ("survived") is a change to the numbers nothing would notice.
# Not in CI: the whole set takes well over an hour on 2 cores. Results stay in mutants/ (git-ignored); a rerun only
# retests what changed. Figures and every survivor's explanation: README "Development".
#
#   scripts/mutation.sh                                  # every module in only_mutate
#   scripts/mutation.sh "vfm_ablate.trial.metrics*"      # one module (mutant names are module.x_function__mutmut_N)
#   MUTMUT_CHILDREN=4 scripts/mutation.sh ...            # parallel test processes (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut missing: pip install -e '.[mutation]'" >&2; exit 2; }
"$PY" -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@"
"$PY" -m mutmut results  # every mutant that was not killed, with its status

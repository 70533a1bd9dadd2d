#!/usr/bin/env bash
# The test command: installs what is missing, then runs pytest. Extra arguments go to pytest.
#   scripts/test.sh               the default suite (fast; slow end-to-end tests skipped)
#   scripts/test.sh --run-slow    everything, as CI runs it
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/python -m pytest "$@"

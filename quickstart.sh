#!/usr/bin/env bash
# Set up a virtual environment in .venv (needs nothing but the Python package index) and run the
# main job on the bundled data: DeepSSIM on the authors' example pair, then the geometric-robustness
# experiment in its quick form (results/gdr_robustness/). Re-running reuses .venv and the score cache.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -e .
.venv/bin/python -m iqa_core score --metric deepssim \
    data/examples/deepssim_butterfly/butterfly.png data/examples/deepssim_butterfly/butterfly_shif_0.50.png
.venv/bin/python experiments/gdr_robustness.py --quick

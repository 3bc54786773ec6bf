#!/usr/bin/env bash
# Installs the Python tools of the test suite (scripts/python/requirements.txt, pinned) into a
# virtual environment at .cache/venv; idempotent. The chaos verifier reads output with its
# librdkafka reader (KWA_PYTHON, default .cache/venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venv
requirements=scripts/python/requirements.txt
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp"; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"

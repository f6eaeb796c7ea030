#!/usr/bin/env bash
# The two commands of the README:
#   ./terramesh.sh demo   install what is missing, then convert a generated sample, load and serve it
#   ./terramesh.sh test   install what is missing, then run the test suite on real services
# Anything else is passed to the CLI: ./terramesh.sh convert SOURCE --dest DIR ...
set -euo pipefail
cd "$(dirname "$0")"
infra/install.sh
case "${1:-}" in
    test) shift; exec .venv/bin/python -m pytest "$@" ;;
    "") exec .venv/bin/terramesh-stac --help ;;
    *) exec .venv/bin/terramesh-stac "$@" ;;
esac

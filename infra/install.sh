#!/usr/bin/env bash
# Installs what terramesh-stac needs on Debian/Ubuntu, skipping what is already there:
# PostgreSQL + PostGIS (the major version the distribution ships), python3-venv, the
# project in .venv/ with the pinned versions of constraints.txt, Node.js + npm to build the
# map page (frontend/, pinned by its package-lock.json), and Chromium + ChromeDriver for the
# map page's browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "error: need root (or sudo) to run: $*" >&2; exit 1
    fi
}

apt_updated=no
apt_install() {
    [ "$apt_updated" = yes ] || { as_root apt-get update -qq; apt_updated=yes; }
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v apt-get >/dev/null; then
    echo "note: no apt-get; install PostgreSQL with PostGIS and Python >= 3.11 yourself" >&2
else
    missing=()
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v node >/dev/null || missing+=(nodejs)  # builds the map page
    command -v npm >/dev/null || missing+=(npm)
    # tests/test_map_page.py: the page in a real browser, driven over WebDriver
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    # tests/test_clients.py: GDAL STACIT in the distribution's GDAL (3.6 on Debian 12), next to rasterio's
    command -v gdal_translate >/dev/null || missing+=(gdal-bin)
    [ ${#missing[@]} -eq 0 ] || { echo "installing ${missing[*]}"; apt_install "${missing[@]}"; }
    pg_major=$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1 | cut -d/ -f5)
    if [ ! -f "/usr/share/postgresql/$pg_major/extension/postgis.control" ]; then
        echo "installing postgresql-$pg_major-postgis-3"
        apt_install "postgresql-$pg_major-postgis-3"
    fi
fi

stamp=.venv/.installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the Python environment into .venv/ (pinned by constraints.txt)"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -c constraints.txt -e '.[test]'
    # stackstac (tests/test_clients.py) declares pandas<3 and pip refuses it next to our pandas 3;
    # it runs on pandas 3 (the test loads a search with it), so its other requirements, all
    # installed above, are not re-resolved
    .venv/bin/pip install -q -c constraints.txt --no-deps stackstac
    echo "$want" > "$stamp"
fi

# The map page: frontend/ bundled (esbuild) into terramesh_stac/catalog/static/map/, again
# whenever its sources or its lock file change.
map_stamp=terramesh_stac/catalog/static/map/.built
map_want=$(cat frontend/package.json frontend/package-lock.json frontend/build.mjs frontend/src/* | sha256sum | cut -c1-16)
if [ "$(cat "$map_stamp" 2>/dev/null)" != "$map_want" ]; then
    echo "building the map page (npm ci + npm run build in frontend/)"
    (cd frontend && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
    echo "$map_want" > "$map_stamp"
fi

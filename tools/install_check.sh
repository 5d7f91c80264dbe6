#!/usr/bin/env bash
# Does `pip install rlp_trl` resolve in the environments users have? `pip install --dry-run` of this checkout (with
# every extra but lm-eval) next to: torch 2.11 (the GPU machines' CUDA build), transformers 5.17 (theirs too), and the
# newest releases with nothing pinned. A throwaway venv; pip fetches metadata only (no CUDA wheel is downloaded).
# The machine-wide pip config is bypassed (PIP_CONFIG_FILE=/dev/null): it caps torch at the builds on local disk, which
# is right for installing here but not for asking what a user's pip would pick. Usage: bash tools/install_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_DISABLE_PIP_VERSION_CHECK=1
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
status=0
check() {  # label, then the requirements to resolve next to rlp_trl
    local label=$1; shift
    if "$tmp/venv/bin/python" -m pip install -q --dry-run --report "$tmp/report.json" "$@" ".[bench,demo,plots,dev]" \
        >"$tmp/log" 2>&1; then
        "$tmp/venv/bin/python" - "$label" "$tmp/report.json" <<'PY'
import json, sys
label, path = sys.argv[1:]
got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in json.load(open(path))["install"]}
keys = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "bitsandbytes"]
print(f"ok   {label:<28} " + " ".join(f"{k} {got.get(k, '-')}" for k in keys) + f"  ({len(got)} packages)")
PY
    else
        echo "FAIL $label"; grep -E "ERROR|conflict|requires" "$tmp/log" | head -20; status=1
    fi
}
check "next to torch==2.11.0" torch==2.11.0
check "next to transformers==5.17.0" transformers==5.17.0
check "newest releases (nothing pinned)"
check "the compat pins" -r requirements-compat.txt torch==2.13.0
exit $status

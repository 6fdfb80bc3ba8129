#!/usr/bin/env bash
# Lists every `unsafe` in the project's own code and fails if one lacks a
# `// SAFETY:` comment within the six lines above it (a comment block may
# precede a `{`). Clippy's undocumented_unsafe_blocks covers blocks; this also
# covers unsafe impls. `unsafe fn` signatures (a trait's contract) are listed
# but need no comment of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0; n=0
while IFS=: read -r file line _; do
  n=$((n+1))
  start=$((line > 6 ? line - 6 : 1))
  if sed -n "${line}p" "$file" | grep -qE '^\s*(pub(\([a-z]+\))? )?unsafe fn'; then continue; fi
  if ! sed -n "${start},${line}p" "$file" | grep -q 'SAFETY:'; then
    echo "undocumented unsafe: $file:$line"; bad=1
  fi
done < <(grep -rn --include='*.rs' -E '\bunsafe\b' crates | grep -v -E '^\S+:[0-9]+:\s*//' || true)
echo "unsafe sites in crates/: $n"
exit $bad

#!/usr/bin/env bash
# Rebuild proxy/static/demo/fal-client.js: @fal-ai/client (exact version from web/package.json,
# locked by web/package-lock.json) bundled with esbuild into one minified IIFE that defines
# `window.FalClient` ({ fal, ApiError, ValidationError, ... }). No network is needed at run time.
#
#   bash web/build.sh          # from the repository root (or anywhere: it finds the root itself)
#
# The output is deterministic: same lock file + same esbuild => byte-identical file.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out=proxy/static/demo/fal-client.js

npm ci --prefix web --no-audit --no-fund

pkg_version() { node -p "require('./web/node_modules/$1/package.json').version"; }
client_version="$(pkg_version @fal-ai/client)"
esbuild_version="$(pkg_version esbuild)"
deps="@msgpack/msgpack $(pkg_version @msgpack/msgpack), eventsource-parser $(pkg_version eventsource-parser), robot3 $(pkg_version robot3)"

banner="/* @fal-ai/client ${client_version} (MIT, https://github.com/fal-ai/fal-js) with ${deps}.
 * Bundled by esbuild ${esbuild_version} as an IIFE exposing window.FalClient = { fal, ApiError, ValidationError, ... }.
 * Generated file, do not edit. Rebuild with: bash web/build.sh */"

web/node_modules/.bin/esbuild web/src/fal-client-entry.js \
  --bundle \
  --minify \
  --format=iife \
  --global-name=FalClient \
  --platform=browser \
  --target=es2020 \
  --charset=utf8 \
  --legal-comments=eof \
  "--banner:js=${banner}" \
  "--outfile=${out}"

echo "built ${out} ($(wc -c <"${out}") bytes, sha256 $(sha256sum "${out}" | cut -c1-16))"

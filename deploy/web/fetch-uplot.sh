#!/usr/bin/env bash
# Fetches the pinned uPlot from the npm registry into the page's vendor folder (the files are committed; run
# this to check them or after changing the pin). The tarball must match the pinned integrity, else nothing
# is written. The pin: streams/serving/page/vendor/PIN.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
vendor=streams/serving/page/vendor
pin() { python3 -c "import json,sys; print(json.load(open('$vendor/PIN.json'))[sys.argv[1]])" "$1"; }
package=$(pin package); version=$(pin version); integrity=$(pin integrity)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package@$version" >/dev/null)
tarball=$(ls "$work"/*.tgz)
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$actual" != "$integrity" ]; then
  echo "fetch-uplot: $package@$version has integrity $actual, pinned $integrity: nothing written" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$vendor/"
echo "fetch-uplot: $package@$version into $vendor"

#!/usr/bin/env bash
# Installs the Debian packages the tests and `make up` use, when they are missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)
command -v kcat >/dev/null || need+=(kcat)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v chromium >/dev/null || need+=(chromium)  # the live page's browser test (tests/integration/test_web_page.py)
command -v chromedriver >/dev/null || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# the package starts a system Redis/Prometheus; the project starts its own on free ports
$SUDO systemctl disable --now redis-server prometheus prometheus-pushgateway 2>/dev/null || true

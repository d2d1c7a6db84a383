#!/usr/bin/env bash
# Debian packages the tests and the local stack use for real: Prometheus + promtool,
# Alertmanager + amtool, rsyslog with omelasticsearch, Chromium for the dashboard screenshot,
# a JDK and Maven to build the local search engine from Maven Central jars.
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
command -v rsyslogd >/dev/null || need+=(rsyslog)
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/omelasticsearch.so ] || [ -n "$(ls /usr/lib/*/rsyslog/omelasticsearch.so 2>/dev/null)" ] || need+=(rsyslog-elasticsearch)
command -v chromium >/dev/null || need+=(chromium)
command -v openssl >/dev/null || need+=(openssl)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

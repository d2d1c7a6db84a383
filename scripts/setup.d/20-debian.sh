#!/usr/bin/env bash
# Debian packages the tests and the local stack use for real: Prometheus + promtool,
# Alertmanager + amtool, rsyslog with omelasticsearch, Chromium for the dashboard screenshot,
# a JDK and Maven to build the local search engine from Maven Central jars.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
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
  apt_install "the local stack" "${need[@]}"
fi

#!/usr/bin/env bash
# Search engines for the tests and the local stack, built from Maven Central jars (no Docker,
# no tarball):
#   search-engine/                OpenSearch 2.19.6 in one JVM (tests, `seekwatch search-engine`)
#   search-engine/elasticsearch/  Elasticsearch 8.19 core-only in one JVM (smoke tests only)
# Each pom compiles its launcher and copies every runtime jar into target/lib/. A build is
# skipped when target/ matches the current pom and sources; `FORCE=1` rebuilds.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v java >/dev/null || { echo "setup: java (17+) is needed for the search engine" >&2; exit 1; }
command -v mvn >/dev/null || { echo "setup: maven is needed to fetch the search engine's jars" >&2; exit 1; }

build() {  # build DIR JAR WHAT
  local dir="$1" jar="$2" what="$3" t="$1/target"
  local want
  want="$(cat "$dir/pom.xml" $(find "$dir/src" -type f | sort) | sha256sum | cut -d' ' -f1)"
  if [ "${FORCE:-0}" != 1 ] && [ -f "$t/$jar" ] && [ -d "$t/lib" ] \
     && [ "$(cat "$t/.built-from" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "setup: building $what into $t"
  rm -rf "$t/lib"   # copy-dependencies never removes stale jars: a version bump would mix them
  mvn -q -B -f "$dir/pom.xml" package
  echo "$want" > "$t/.built-from"
}

build search-engine seekwatch-search-engine.jar "the search engine (OpenSearch 2.19.6 jars from Maven Central)"
build search-engine/elasticsearch seekwatch-es-core.jar "the Elasticsearch 8.19 core-only smoke engine"

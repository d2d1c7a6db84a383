#!/usr/bin/env bash
# Search engine for the tests and the local stack: OpenSearch 2.19.6 in one JVM, built from
# Maven Central jars (no Docker, no tarball). search-engine/pom.xml compiles the launcher and
# copies every runtime jar into search-engine/target/lib/. Skipped when already built for the
# current pom.xml and launcher source; `FORCE=1` rebuilds.
set -euo pipefail
cd "$(dirname "$0")/../.."
SE=search-engine
T="$SE/target"
stamp="$T/.built-from"
want="$(cat "$SE/pom.xml" $(find "$SE/src" -type f | sort) | sha256sum | cut -d' ' -f1)"
if [ "${FORCE:-0}" != 1 ] && [ -f "$T/seekwatch-search-engine.jar" ] && [ -d "$T/lib" ] \
   && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
command -v java >/dev/null || { echo "setup: java (17+) is needed for the search engine" >&2; exit 1; }
command -v mvn >/dev/null || { echo "setup: maven is needed to fetch the search engine's jars" >&2; exit 1; }
echo "setup: building the search engine (OpenSearch 2.19.6 jars from Maven Central) into $T"
rm -rf "$T/lib"   # copy-dependencies never removes stale jars: a version bump would mix them
mvn -q -B -f "$SE/pom.xml" package
echo "$want" > "$stamp"

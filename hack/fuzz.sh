#!/usr/bin/env bash
# fuzz.sh PKG TARGET FUZZTIME PARALLEL runs one fuzz target. A run that fails
# with only "context deadline exceeded" and writes no crasher is Go's own
# fuzzing coordinator racing the -fuzztime deadline (go.dev/issue/75804,
# fixed in Go 1.27, not in the 1.26 toolchain here), not a finding: it is run
# again, once. A crasher (a new file in PKG/testdata/fuzz/TARGET) always fails.
set -uo pipefail
pkg=$1 target=$2 fuzztime=$3 parallel=$4
corpus="$pkg/testdata/fuzz/$target"
count() { find "$corpus" -type f 2>/dev/null | wc -l; }
for attempt in 1 2; do
	before=$(count)
	echo "go test -run '^\$' -fuzz '^$target\$' -fuzztime $fuzztime -parallel $parallel $pkg"
	out=$(mktemp)
	go test -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" -parallel "$parallel" "$pkg" 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	deadline=$(grep -c '^    context deadline exceeded$' "$out")
	rm -f "$out"
	if [ "$rc" -eq 0 ]; then
		exit 0
	fi
	if [ "$(count)" -ne "$before" ] || [ "$deadline" -eq 0 ] || [ "$attempt" -eq 2 ]; then
		exit "$rc"
	fi
	echo "fuzz.sh: $target failed with only \"context deadline exceeded\" and no crasher (go.dev/issue/75804); running it again"
done

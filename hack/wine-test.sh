#!/usr/bin/env bash
# Runs the unit tests of tp's host-side packages as windows/amd64 test binaries
# under Debian's Wine (make unit-windows), so that the Windows CLI's code paths
# (paths, npipe, %USERPROFILE%, file modes) are tested on every CI run, without
# a Windows machine. Installs wine64 and binutils-mingw-w64-x86-64 (for the
# shim below) with apt-get when they are missing; idempotent, and quiet but for
# one line per package. Headless: no X server is needed, the test binaries are
# console programs and the prefix is created without the Mono/Gecko dialogs.
#
# Usage: hack/wine-test.sh [PACKAGE...]   (default: hack/host-packages.txt)
# Env:   WINE_TIMEOUT  per package, for the test binary (default 180s)
#        WINE_CACHE    where the prefix, shims and binaries live (default .cache/wine)
set -euo pipefail

cd "$(dirname "$0")/.."

# hack/host-packages.txt lists the packages. cmd/tp's only test runs `go list`
# on the build machine, so it is left to the Linux run.
HOST_PACKAGES=()
while read -r pkg; do
	case $pkg in '' | '#'* | ./cmd/tp) continue ;; esac
	HOST_PACKAGES+=("$pkg")
done <hack/host-packages.txt
[ "$#" -gt 0 ] && PACKAGES=("$@") || PACKAGES=("${HOST_PACKAGES[@]}")
TIMEOUT=${WINE_TIMEOUT:-180}
CACHE=${WINE_CACHE:-$PWD/.cache/wine}

die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# Debian's wine64 package has the 64-bit loader; bookworm's has no
# /usr/bin/wine64 without the `wine` package (which pulls in more), so look in
# /usr/lib/wine too. binutils-mingw-w64-x86-64 builds the bcryptprimitives
# shim below.
find_wine() { command -v wine64 || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || command -v wine || true; }
WINE=$(find_wine)
need=()
[ -n "$WINE" ] || need+=(wine64)
command -v x86_64-w64-mingw32-as >/dev/null || need+=(binutils-mingw-w64-x86-64)
if [ "${#need[@]}" -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || die "${need[*]} missing: apt-get install ${need[*]} (as root), or run this script as root"
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	aptlog=$(mktemp)
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$aptlog" 2>&1 ||
		{ tail -n 20 "$aptlog" >&2; die "apt-get install ${need[*]} failed"; }
	rm -f "$aptlog"
	WINE=$(find_wine)
	[ -n "$WINE" ] || die "wine64 installed but no wine64 binary found"
fi

mkdir -p "$CACHE/bin"
export WINEPREFIX=$CACHE/prefix WINEDEBUG=-all WINEARCH=win64
# No Mono/Gecko installer dialogs when the prefix is created (headless).
export WINEDLLOVERRIDES="mscoree,mshtml="
if [ ! -f "$WINEPREFIX/system.reg" ]; then
	log "creating the wine prefix $WINEPREFIX"
	"$WINE" wineboot --init >/dev/null 2>&1 || true
	[ -d "$WINEPREFIX/drive_c/windows/system32" ] || die "wineboot did not create $WINEPREFIX"
fi

# Go 1.24+ binaries need ProcessPrng from bcryptprimitives.dll, which Wine has
# only since 8.13 (bookworm ships 8.0): install a shim (hack/wine) into the
# prefix when the Wine build lacks the DLL.
sys32=$WINEPREFIX/drive_c/windows/system32
builtin=$(ls /usr/lib/x86_64-linux-gnu/wine/x86_64-windows/bcryptprimitives.dll \
	/usr/lib/wine/x86_64-windows/bcryptprimitives.dll /opt/wine*/lib*/wine/x86_64-windows/bcryptprimitives.dll 2>/dev/null || true)
if [ -z "$builtin" ] && { [ ! -f "$sys32/bcryptprimitives.dll" ] || ! cmp -s "$CACHE/bcryptprimitives.s" hack/wine/bcryptprimitives.s; }; then
	tmp=$(mktemp -d)
	x86_64-w64-mingw32-dlltool -d hack/wine/advapi32.def -l "$tmp/libadvapi32.a"
	x86_64-w64-mingw32-as -o "$tmp/bcryptprimitives.o" hack/wine/bcryptprimitives.s
	x86_64-w64-mingw32-ld -shared --entry DllMain -o "$tmp/bcryptprimitives.dll" \
		"$tmp/bcryptprimitives.o" hack/wine/bcryptprimitives.def "$tmp/libadvapi32.a"
	cp "$tmp/bcryptprimitives.dll" "$sys32/bcryptprimitives.dll"
	cp hack/wine/bcryptprimitives.s "$CACHE/bcryptprimitives.s"
	rm -rf "$tmp"
fi

# Wine 8.0's NtSetInformationFile answers FileDispositionInformationEx with
# STATUS_NOT_IMPLEMENTED, which Go's os.Remove (Deleteat) does not treat as
# "use the fallback" the way it does for old Windows versions, so every
# t.TempDir cleanup fails. Build the test binaries with an overlay of the one
# standard-library file that adds that status to the fallback's cases. The
# code under test is unchanged; only Go's runtime support for old kernels is.
overlay=()
at=$(go env GOROOT)/src/internal/syscall/windows/at_windows.go
marker='STATUS_NOT_SUPPORTED:     // the file system'
if grep -qF "$marker" "$at"; then
	mkdir -p "$CACHE/overlay"
	sed "s|$marker|NTStatus(0xC0000002), // STATUS_NOT_IMPLEMENTED: Wine before 9.0 (hack/wine-test.sh)\n\t\t$marker|" \
		"$at" >"$CACHE/overlay/at_windows.go.new"
	cmp -s "$CACHE/overlay/at_windows.go.new" "$CACHE/overlay/at_windows.go" ||
		mv "$CACHE/overlay/at_windows.go.new" "$CACHE/overlay/at_windows.go"
	rm -f "$CACHE/overlay/at_windows.go.new"
	printf '{"Replace":{"%s":"%s"}}\n' "$at" "$CACHE/overlay/at_windows.go" >"$CACHE/overlay/overlay.json"
	overlay=(-overlay "$CACHE/overlay/overlay.json")
else
	log "warning: $at has changed; t.TempDir cleanups may fail under Wine 8"
fi

# Wine maps / to drive Z:. compose's parity test reads compose-go's fixtures
# from the module cache, which it finds with `go list` elsewhere.
winpath() { printf 'Z:%s' "${1//\//\\}"; }
TP_COMPOSE_GO_DIR=$(winpath "$(go list -m -f '{{.Dir}}' github.com/compose-spec/compose-go/v2)")
export TP_COMPOSE_GO_DIR

start=$SECONDS
failed=()
passed=0
for pkg in "${PACKAGES[@]}"; do
	name=$(echo "${pkg#./}" | tr / _)
	exe=$CACHE/bin/$name.exe
	if ! GOOS=windows GOARCH=amd64 CGO_ENABLED=0 go test -c "${overlay[@]}" -o "$exe" "$pkg" >/dev/null; then
		failed+=("$pkg (build)")
		continue
	fi
	[ -f "$exe" ] || continue # no test files
	out=$CACHE/$name.log
	pkgstart=$SECONDS
	# The binary runs in the package's directory, like `go test` does, so that
	# testdata/ is found; -test.timeout makes Go print the stuck goroutines
	# before timeout(1) kills wine.
	if (cd "$pkg" && timeout --kill-after=10 "$((TIMEOUT + 30))" "$WINE" "$exe" -test.v -test.count=1 \
		-test.timeout="${TIMEOUT}s") >"$out" 2>&1; then
		passed=$((passed + 1))
		printf 'ok   %-32s %3ds\n' "$pkg" "$((SECONDS - pkgstart))"
	else
		failed+=("$pkg")
		printf 'FAIL %-32s %3ds\n' "$pkg" "$((SECONDS - pkgstart))"
		grep -E -e '--- FAIL|^\s+\S+_test\.go:[0-9]+:|panic:|^FAIL' "$out" | cut -c1-300 | head -n 40 >&2 || tail -n 40 "$out" >&2
		echo "(full output: $out)" >&2
	fi
done
"$(dirname "$WINE")/wineserver" -k >/dev/null 2>&1 || "$(dirname "$WINE")/wineserver64" -k >/dev/null 2>&1 || true
log "windows/amd64 under $("$WINE" --version 2>/dev/null || echo wine): $passed passed, ${#failed[@]} failed, $((SECONDS - start))s"
[ "${#failed[@]}" -eq 0 ] || die "failed under wine: ${failed[*]}"

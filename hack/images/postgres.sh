#!/usr/bin/env bash
# Builds tp-postgres:dev, a real PostgreSQL server for the example application
# (examples/shop): a bookworm root filesystem with Debian's postgresql made by
# debootstrap and imported with `docker import` (no registry), as
# hack/images/debian.sh does. Idempotent: the image is tagged with a hash of
# this script and rebuilt only when that tag is missing.
#
# The image runs /usr/local/bin/tp-postgres: on an empty data directory it
# runs initdb with POSTGRES_USER (default postgres) and POSTGRES_PASSWORD
# (required), password authentication (scram-sha-256) for every TCP client;
# then it runs postgres as user postgres in the foreground.
set -euo pipefail

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
PACKAGES=postgresql-15
IMAGE=tp-postgres

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "$0 must run as root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap is missing: run make deps"

hash=$(sha256sum "$0" | cut -c1-12)
if docker image inspect "$IMAGE:$hash" >/dev/null 2>&1; then
	docker tag "$IMAGE:$hash" "$IMAGE:dev"
	exit 0
fi

root=$(mktemp -d /var/tmp/tp-postgres.XXXXXX)
trap 'rm -rf "$root"' EXIT
start=$(date +%s)
log "debootstrap $SUITE (minbase + $PACKAGES) into $root"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >/var/log/tp-debootstrap-postgres.log 2>&1 ||
	die "debootstrap failed: see /var/log/tp-debootstrap-postgres.log"
# The package's own cluster (created by its postinst) is not used: the
# entrypoint makes one with the container's password.
rm -rf "$root"/var/lib/postgresql/15/main "$root"/etc/postgresql/15/main
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
cat >"$root/usr/local/bin/tp-postgres" <<'SCRIPT'
#!/bin/sh
# tp-postgres: initdb on first start, then postgres in the foreground.
set -eu
BIN=/usr/lib/postgresql/15/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
USER=${POSTGRES_USER:-postgres}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "${POSTGRES_PASSWORD:-}" ]; then
		echo "tp-postgres: set POSTGRES_PASSWORD (the password of user $USER)" >&2
		exit 1
	fi
	mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
	pw=$(mktemp) && printf '%s\n' "$POSTGRES_PASSWORD" >"$pw" && chown postgres "$pw"
	as_postgres "$BIN/initdb" -D "$PGDATA" -U "$USER" --pwfile="$pw" \
		--auth-local=trust --auth-host=scram-sha-256 >/dev/null
	rm -f "$pw"
	echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
	echo "host all all ::/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
	echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
	echo "tp-postgres: initialized $PGDATA for user $USER" >&2
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$BIN/postgres" -D "$PGDATA"
SCRIPT
chmod 755 "$root/usr/local/bin/tp-postgres"
tar -C "$root" -c . | docker import -c 'CMD ["/usr/local/bin/tp-postgres"]' \
	-c 'EXPOSE 5432' - "$IMAGE:$hash" >/dev/null
docker tag "$IMAGE:$hash" "$IMAGE:dev"
log "image $IMAGE:dev ($IMAGE:$hash) in $(($(date +%s) - start))s"

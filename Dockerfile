# tp's single image, FROM scratch: /tp (cmd/tp-image), the entry point every
# container of tp runs (`/tp daemon run`, `/tp manager`, `/tp agent`, ...),
# and beside it one static binary per role, which /tp execs with the same
# argv: /tp-daemon (the daemon container), /tp-manager (the traffic-manager),
# /tp-agent (the traffic-agent and its init container) and /tp-volumes (the
# volume plugin's binary, which the CLI copies into the plugin). So a role
# pays at start only for its own dependencies (cmd/tp/roles).
# ca-certificates.crt is the build machine's CA bundle (Debian's
# ca-certificates; make image copies it into the build context), at the path
# Go's crypto/x509 reads, so that tp verifies TLS endpoints signed by public CAs.
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY tp tp-daemon tp-manager tp-agent tp-volumes /
ENTRYPOINT ["/tp"]

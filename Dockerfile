# tp's single image: one static binary, /tp, built from cmd/tp-image (the
# in-container roles without the CLI). The daemon container, the
# traffic-manager, the traffic-agent and the volume plugin run it through
# subcommands.
# ca-certificates.crt is the build machine's CA bundle (Debian's
# ca-certificates; make image copies it into the build context), at the path
# Go's crypto/x509 reads, so that tp verifies TLS endpoints signed by public CAs.
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY tp /tp
ENTRYPOINT ["/tp"]

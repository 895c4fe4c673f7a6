# tp's single image: the static tp binary. The daemon container, the
# traffic-manager and the traffic-agent all run it through subcommands.
FROM scratch
COPY tp /tp
ENTRYPOINT ["/tp"]

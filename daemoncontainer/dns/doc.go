// Package dns is the DNS server of the daemon container.
//
// Developer containers join the daemon container's network namespace
// (`--network container:tp`) and therefore share its /etc/resolv.conf. The
// daemon rewrites that file (see [RenderResolvConf]) so that it names this
// server and carries a Kubernetes-like search list, which makes `svc`,
// `svc.ns`, `svc.ns.svc.cluster.local` and `pod-0.headless.ns` resolve like
// inside a pod.
//
// The server routes each question by name, never by guessing:
//
//   - an alias ([Server.SetAliases]: a compose project's name for a cluster
//     service), bare or with a search domain, is answered with a CNAME to its
//     cluster name and the cluster's records for that name;
//   - names in the cluster domain and reverse names of the cluster CIDRs go to
//     the cluster through an injected [Exchanger] (the daemon implements it
//     over the tunnel to the cluster DNS service);
//   - names of the form `<x>.<cluster domain>.<original search domain>` are
//     answered NXDOMAIN locally: they are the search-list expansions of a
//     cluster name and exist nowhere, so asking the original resolvers would
//     only leak the name and add latency;
//   - every other name goes to Docker's embedded DNS server first when it
//     answers (the daemon container is on a user-defined network, e.g. a
//     compose project's: it knows the project's service names), then to the
//     original resolvers of the container (UDP, TCP on truncation), so public
//     names are never hijacked (see docker.go for the order, the loop Docker
//     can make and the cache lifetime of Docker's names).
//
// Every forward has a deadline and ends in SERVFAIL when it fails, so a client
// never hangs. Answers are cached by question and DO/CD bits, honouring the
// TTLs (RFC 2308 for negative answers), concurrent identical cold questions
// share one forward, and an answer that expired a short while ago is served
// when the forward for it fails (RFC 8767).
package dns

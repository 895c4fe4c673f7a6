package daemon

import (
	"context"
	"fmt"
	"net"
)

// Dial checks, from inside the daemon container's network namespace, that
// addr answers: HOST:PORT must accept a TCP connection (the netstack
// completes the handshake only once the cluster's end accepted), HOST alone
// must resolve. Names resolve as a joined container's do (the daemon's DNS,
// with the connection's search domains). The CLI runs it through `docker
// exec` (`tp daemon dial`), e.g. for tp compose's depends_on on a
// use-cluster service.
func Dial(ctx context.Context, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addrs, err := net.DefaultResolver.LookupHost(ctx, addr)
		if err != nil {
			return fmt.Errorf("resolve %s: %w", addr, err)
		}
		if len(addrs) == 0 {
			return fmt.Errorf("resolve %s: no address", addr)
		}
		return nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	return conn.Close()
}

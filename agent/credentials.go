package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"

	"github.com/tp-run/tp/internal/tlsbatch"
)

// TokenAudience is the audience of the projected ServiceAccount token the
// agent presents to the traffic-manager; the manager's TokenReview accepts
// no other, so the pod's ordinary API token is no use to it and this one no
// use against the API server.
const TokenAudience = "tp"

// DefaultTokenFile is where the webhook mounts the agent's token.
const DefaultTokenFile = "/var/run/secrets/tp.run/agent/token"

// managerTLS is the transport credentials for the manager's agent port:
// TLS 1.3, the server's certificate verified against caPEM (the chart's CA)
// for the host of the manager's address.
func managerTLS(caPEM []byte) (credentials.TransportCredentials, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate; the tp webhook sets it when it injects the agent", EnvManagerCA)
	}
	// Batched records: every intercepted byte crosses this connection.
	return tlsbatch.Wrap(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13})), nil
}

// tokenFile presents the token in path as a bearer token on every RPC. It
// reads the file each time: the kubelet rotates the projected token well
// before it expires.
type tokenFile struct{ path string }

func (t tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(t.path)
	if err != nil {
		return nil, fmt.Errorf("the agent's ServiceAccount token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, errors.New("the agent's ServiceAccount token file " + t.path + " is empty")
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity: the token never travels in plain text.
func (tokenFile) RequireTransportSecurity() bool { return true }

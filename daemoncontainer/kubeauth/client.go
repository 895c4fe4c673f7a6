package kubeauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// StatusError is a relay's refusal: the HTTP status and the server's reason.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("kubeauth relay: %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
	if e.Code == http.StatusUnauthorized {
		msg += " (the daemon's kubeconfig belongs to another tp connection; reconnect with `tp connect`)"
	}
	return msg
}

// RunPlugin is `tp kubeauth-plugin`: run by client-go in the daemon container
// as the exec plugin of user, it asks the relay at relayURL (a [Server] on the
// host) for a credential and writes the ExecCredential to stdout exactly as
// received. secret authenticates to the relay; when empty it is read from
// env([EnvSecret]). The ExecCredential request client-go passes in
// env([EnvExecInfo]) is forwarded. stdin is not read: the relayed exec config
// is never interactive, so client-go gives the plugin none. ctx bounds the
// whole exchange; the server bounds the plugin run.
func RunPlugin(ctx context.Context, relayURL, user, secret string, stdin io.Reader, stdout io.Writer, env func(string) string) error {
	if secret == "" {
		secret = env(EnvSecret)
	}
	if secret == "" {
		return fmt.Errorf("kubeauth relay: no secret: %s is not set (run by client-go from the kubeconfig that tp connect wrote)", EnvSecret)
	}
	if user == "" {
		return errors.New("kubeauth relay: no user given")
	}
	endpoint := strings.TrimSuffix(relayURL, "/") + "/credentials/" + url.PathEscape(user)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(env(EnvExecInfo)))
	if err != nil {
		return fmt.Errorf("kubeauth relay: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("Content-Type", "application/json")

	// No proxy: the relay is on the docker host, never behind the
	// container's proxy. No response timeout: the plugin may wait for a
	// browser login, and the server bounds it.
	client := &http.Client{Transport: &http.Transport{
		Proxy:       nil,
		DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, errConnRefused) {
			return fmt.Errorf("kubeauth relay at %s is not running (is `tp connect` still running on the host?): %w", relayURL, err)
		}
		return fmt.Errorf("kubeauth relay at %s: %w", relayURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, stderrTailBytes+1024))
		return &StatusError{Code: resp.StatusCode, Message: strings.TrimSpace(string(msg))}
	}
	// Read it whole first: a half-written credential must not reach client-go.
	cred, err := io.ReadAll(io.LimitReader(resp.Body, maxStdoutBytes))
	if err != nil {
		return fmt.Errorf("kubeauth relay at %s: reading the credential: %w", relayURL, err)
	}
	if _, err := stdout.Write(cred); err != nil {
		return fmt.Errorf("kubeauth relay: writing the credential: %w", err)
	}
	return nil
}

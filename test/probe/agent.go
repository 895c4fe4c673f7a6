package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// agentArrive poses as a traffic-agent: it calls ArriveAsAgent at addr
// once per attempt, claiming the workload and pod in claim
// (namespace/kind/workload/pod), and prints one JSON object of the status
// each attempt got ({"code": "PermissionDenied", "message": ...}). An
// attempt is "plain" (no TLS), "tls" (TLS verified with caFile, no token) or
// "tls:FILE" (TLS and the token in FILE as a bearer token).
func agentArrive(ctx context.Context, caFile, claim, addr string, attempts []string) error {
	parts := strings.Split(claim, "/")
	if len(parts) != 4 {
		return fmt.Errorf("-claim %q: want namespace/kind/workload/pod", claim)
	}
	info := &managerv1.AgentInfo{Namespace: parts[0], Kind: parts[1], Workload: parts[2], PodName: parts[3],
		Environment: map[string]string{"LD_PRELOAD": "/tmp/evil.so"}, ProtocolVersion: tunnel.ProtocolVersion,
		Ports: []*managerv1.AgentPort{{ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP"}}}
	out := map[string]map[string]string{}
	for _, a := range attempts {
		creds := insecure.NewCredentials()
		if a != "plain" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("%s: no PEM certificate", caFile)
			}
			creds = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if file, ok := strings.CutPrefix(a, "tls:"); ok {
			tok, err := os.ReadFile(file)
			if err != nil {
				cancel()
				return err
			}
			actx = metadata.AppendToOutgoingContext(actx, "authorization", "Bearer "+strings.TrimSpace(string(tok)))
		} else if a != "plain" && a != "tls" {
			cancel()
			return fmt.Errorf("attempt %q: want plain, tls or tls:FILE", a)
		}
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			cancel()
			return err
		}
		sess, err := managerv1.NewManagerClient(cc).ArriveAsAgent(actx, info)
		cancel()
		cc.Close()
		st := status.Convert(err)
		out[a] = map[string]string{"code": st.Code().String(), "message": st.Message(), "session": sess.GetSessionId()}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

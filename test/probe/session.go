package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// probeManagerSession tries to open a session with the traffic-manager at
// each address as an ordinary pod could: as a client and as an agent, in
// plaintext and over TLS without checking the certificate. It prints one line
// per attempt and fails if any attempt got a session.
func probeManagerSession(ctx context.Context, addrs []string) error {
	var got []string
	for _, addr := range addrs {
		for _, mode := range []string{"plaintext", "tls"} {
			creds := insecure.NewCredentials()
			if mode == "tls" {
				creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
			}
			cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
			if err != nil {
				return err
			}
			mc := managerv1.NewManagerClient(cc)
			_, cerr := mc.ArriveAsClient(ctx, &managerv1.ClientInfo{Name: "intruder", ProtocolVersion: tunnel.ProtocolVersion})
			_, aerr := mc.ArriveAsAgent(ctx, &managerv1.AgentInfo{Workload: "echo", Namespace: "default", Kind: "Deployment",
				PodName: "intruder", ProtocolVersion: tunnel.ProtocolVersion})
			cc.Close()
			for _, r := range []struct {
				as  string
				err error
			}{{"client", cerr}, {"agent", aerr}} {
				if r.err == nil {
					got = append(got, fmt.Sprintf("%s %s as %s", addr, mode, r.as))
					fmt.Printf("%s %s %s: SESSION\n", addr, mode, r.as)
				} else {
					fmt.Printf("%s %s %s: refused: %v\n", addr, mode, r.as, r.err)
				}
			}
		}
	}
	if len(got) > 0 {
		return fmt.Errorf("got sessions: %s", strings.Join(got, "; "))
	}
	return nil
}

// Command netcheck is the test bed's network probe. check-isolation.sh runs it
// in a plain Docker container and in a pod to prove which cluster addresses
// each side can reach.
//
//	netcheck serve ADDR            accept TCP connections on ADDR until SIGTERM
//	netcheck dial ADDR [TIMEOUT]   exit 0 if a TCP connection to ADDR succeeds
//	netcheck resolve NAME          exit 0 if NAME resolves (pure Go resolver)
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "netcheck:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: netcheck serve|dial|resolve ARG [TIMEOUT]")
	}
	timeout := 3 * time.Second
	if len(args) > 2 {
		d, err := time.ParseDuration(args[2])
		if err != nil {
			return fmt.Errorf("parse timeout: %w", err)
		}
		timeout = d
	}
	switch args[0] {
	case "serve":
		return serve(args[1])
	case "dial":
		conn, err := net.DialTimeout("tcp", args[1], timeout)
		if err != nil {
			return fmt.Errorf("dial %s: %w", args[1], err)
		}
		fmt.Printf("connected to %s from %s\n", args[1], conn.LocalAddr())
		return conn.Close()
	case "resolve":
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupHost(ctx, args[1])
		if err != nil {
			return fmt.Errorf("resolve %s: %w", args[1], err)
		}
		fmt.Printf("%s resolves to %v\n", args[1], addrs)
		return nil
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
}

func serve(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
		<-signals
		ln.Close()
	}()
	fmt.Printf("serving on %s\n", ln.Addr())
	for {
		conn, err := ln.Accept()
		if err != nil {
			return nil
		}
		go func() {
			defer conn.Close()
			fmt.Fprintf(conn, "netcheck %s\n", conn.LocalAddr())
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, conn)
		}()
	}
}

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/pkg/sftp"
)

// probeSFTP tries, at every address, to get an SFTP session (and a file) the
// way an intruder in the cluster would: it looks for an SSH banner, speaks
// SFTP at once, and speaks it after a tp mount handshake with a made-up
// token. It prints one line per attempt and fails if any attempt opened a
// session.
func probeSFTP(ctx context.Context, addrs []string) error {
	var opened []string
	for _, addr := range addrs {
		for _, how := range []string{"banner", "raw", "tp-mount"} {
			got, err := trySFTP(ctx, addr, how)
			if got != "" {
				opened = append(opened, addr+" "+how)
				fmt.Printf("%s %s: SESSION %s\n", addr, how, got)
				continue
			}
			fmt.Printf("%s %s: refused (%v)\n", addr, how, err)
		}
	}
	if len(opened) > 0 {
		return fmt.Errorf("SFTP or SSH reached at %s", strings.Join(opened, ", "))
	}
	return nil
}

// trySFTP returns what it got ("" for nothing) and why not.
func trySFTP(ctx context.Context, addr, how string) (string, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	conn, err := d.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	switch how {
	case "banner":
		_ = conn.SetReadDeadline(time.Now().Add(time.Second)) // an SSH server speaks first
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		if strings.HasPrefix(string(buf[:n]), "SSH-") {
			return "banner " + strings.TrimSpace(string(buf[:n])), nil
		}
		if err == nil {
			err = fmt.Errorf("no SSH banner but %q", buf[:n])
		}
		return "", err
	case "tp-mount":
		tok := make([]byte, 32)
		_, _ = rand.Read(tok)
		if _, err := io.WriteString(conn, "TP-MOUNT 1 "+hex.EncodeToString(tok)+"\n"); err != nil {
			return "", err
		}
	}
	type result struct {
		c   *sftp.Client
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := sftp.NewClientPipe(conn, conn)
		ch <- result{c, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-time.After(3 * time.Second):
		conn.Close()
		r = <-ch
		if r.err == nil {
			r.err = errors.New("no SFTP version answer")
		}
	}
	if r.err != nil {
		return "", r.err
	}
	defer r.c.Close()
	got := "sftp"
	if infos, err := r.c.ReadDir("/"); err == nil {
		got += fmt.Sprintf(", listed / (%d entries)", len(infos))
	}
	if f, err := r.c.Open("/var/run/secrets/kubernetes.io/serviceaccount/token"); err == nil {
		b, _ := io.ReadAll(f)
		f.Close()
		got += fmt.Sprintf(", read the token (%d bytes)", len(b))
	}
	return got, nil
}

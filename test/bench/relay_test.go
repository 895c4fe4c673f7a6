package main

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestDelayRelay checks that the relay delays the server's answers by its
// delay (one per round trip), not the client's requests, and passes every
// byte through.
func TestDelayRelay(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() { // an echo server
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	const delay = 50 * time.Millisecond
	r, err := startDelayRelay(l.Addr().String(), delay, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 3 {
		t0 := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(t0); rtt < delay || rtt > 10*delay {
			t.Errorf("round trip %d took %v, want about %v", i, rtt, delay)
		}
		if string(got) != "ping" {
			t.Errorf("round trip %d: got %q, want ping", i, got)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	wrote := make(chan error, 1)
	go func() { _, err := c.Write(big); wrote <- err }()
	got := make([]byte, len(big))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, big) {
		t.Error("1 MiB through the relay came back different")
	}
	c.Close()
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	l.Close()
}

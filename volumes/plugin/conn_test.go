package plugin

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/tp-run/tp/volumes/internal/mounttest"
)

// TestHandshake: what the plugin writes, and how it reads each answer.
func TestHandshake(t *testing.T) {
	for _, tc := range []struct {
		name, answer string
		wantErr      bool
		refused      bool
	}{
		{"ok", "OK\n", false, false},
		{"ok crlf", "OK\r\n", false, false},
		{"refused", "ERR unknown token\n", true, true},
		{"garbage", "SSH-2.0-OpenSSH\n", true, false},
		{"closed", "", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			got := make(chan string, 1)
			go func() {
				defer server.Close()
				line, _ := bufio.NewReader(server).ReadString('\n')
				got <- line
				_, _ = io.WriteString(server, tc.answer)
			}()
			err := Handshake(client, "s3cret", time.Second)
			if line := <-got; line != "TP-MOUNT 1 s3cret\n" {
				t.Errorf("handshake line = %q, want %q", line, "TP-MOUNT 1 s3cret\n")
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("Handshake = %v, want error %v", err, tc.wantErr)
			}
			if errors.Is(err, ErrRefused) != tc.refused {
				t.Errorf("errors.Is(%v, ErrRefused) = %v, want %v", err, !tc.refused, tc.refused)
			}
			if tc.refused && err.Error() != "the daemon refused the mount: unknown token" {
				t.Errorf("error = %q, want the daemon's reason", err)
			}
		})
	}
}

// TestHandshakeTimeout: a peer that never answers fails the handshake in time.
func TestHandshakeTimeout(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	go func() { _, _ = io.Copy(io.Discard, server) }()
	start := time.Now()
	if err := Handshake(client, "t", 200*time.Millisecond); err == nil {
		t.Fatal("Handshake without an answer succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Handshake took %v, want about its timeout", d)
	}
}

// TestHandshakeReadsNoFurther: the bytes after "OK\n" stay for SFTP.
func TestHandshakeReadsNoFurther(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		_, _ = bufio.NewReader(server).ReadString('\n')
		_, _ = io.WriteString(server, "OK\nrest")
	}()
	if err := Handshake(client, "t", time.Second); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(client)
	if string(b) != "rest" {
		t.Errorf("after the handshake read %q, want %q", b, "rest")
	}
}

func TestDialWrongToken(t *testing.T) {
	s := mounttest.NewServer(t, "right")
	_, err := Dial(context.Background(), s.Addr(), "wrong", time.Second)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("Dial with a wrong token = %v, want ErrRefused", err)
	}
}

// TestConnDeadline: a stalled server fails the operation with ErrBroken
// within the timeout, and every later one at once.
func TestConnDeadline(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Dial(context.Background(), s.Addr(), "tok", 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stat := func() error {
		return c.Do(context.Background(), func(sc *sftp.Client) error { _, err := sc.Stat(filepath.Join(dir, "f")); return err })
	}
	if err := stat(); err != nil {
		t.Fatalf("stat before the stall: %v", err)
	}
	s.Stall()
	start := time.Now()
	if err := stat(); !errors.Is(err, ErrBroken) {
		t.Fatalf("stat during the stall = %v, want ErrBroken", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("stalled stat took %v, want about 500ms", d)
	}
	s.Unstall()
	start = time.Now()
	if err := stat(); !errors.Is(err, ErrBroken) || time.Since(start) > 100*time.Millisecond {
		t.Errorf("stat after a stall = %v after %v, want ErrBroken at once", err, time.Since(start))
	}
	if c.Err() == nil {
		t.Error("Err() = nil after a stall")
	}
}

// TestConnBreak: a closed connection fails operations with ErrBroken.
func TestConnBreak(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	c, err := Dial(context.Background(), s.Addr(), "tok", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s.Break()
	start := time.Now()
	err = c.Do(context.Background(), func(sc *sftp.Client) error { _, err := sc.Stat("/"); return err })
	if !errors.Is(err, ErrBroken) {
		t.Fatalf("stat on a broken connection = %v, want ErrBroken", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v, want at once", d)
	}
}

// TestConnServerErrorsKeepConn: the server's answers (no such file) are no
// broken connection.
func TestConnServerErrorsKeepConn(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	c, err := Dial(context.Background(), s.Addr(), "tok", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Do(context.Background(), func(sc *sftp.Client) error { _, err := sc.Stat("/does/not/exist"); return err })
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of a missing file = %v, want os.ErrNotExist", err)
	}
	if c.Err() != nil {
		t.Errorf("Err() = %v after a server's error, want nil", c.Err())
	}
}

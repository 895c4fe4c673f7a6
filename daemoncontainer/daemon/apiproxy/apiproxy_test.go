package apiproxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestRun: bytes from stdin reach the socket's server and its answer
// reaches stdout; Run returns when the server closes.
func TestRun(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	served := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c) // until the proxy half-closes after stdin's EOF
		if err == nil {
			_, err = c.Write(append([]byte("echo:"), b...))
		}
		served <- err
	}()
	stdin := io.NopCloser(bytes.NewBufferString("hello"))
	var stdout bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := Run(ctx, sock, stdin, &stdout); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if got := stdout.String(); got != "echo:hello" {
		t.Errorf("stdout = %q, want %q", got, "echo:hello")
	}
}

func TestRunNoDaemon(t *testing.T) {
	err := Run(context.Background(), filepath.Join(t.TempDir(), "none.sock"), io.NopCloser(&bytes.Buffer{}), io.Discard)
	if err == nil {
		t.Fatal("Run to a missing socket succeeded")
	}
}

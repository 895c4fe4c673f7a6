package tlsbatch

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

func testCreds(t testing.TB) (client, server credentials.TransportCredentials) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "manager"}, DNSNames: []string{"manager"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	client = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool})
	return client, server
}

// handshake connects a client and a server over loopback TCP; wrap picks
// batched or plain credentials. It returns the TLS conns and the client's
// socket writes.
func handshake(t testing.TB, wrap bool) (net.Conn, net.Conn, *countingConn) {
	t.Helper()
	ccreds, screds := testCreds(t)
	if wrap {
		ccreds, screds = Wrap(ccreds), Wrap(screds)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type result struct {
		c   net.Conn
		err error
	}
	srv := make(chan result, 1)
	go func() {
		raw, err := lis.Accept()
		if err != nil {
			srv <- result{err: err}
			return
		}
		c, _, err := screds.ServerHandshake(raw)
		srv <- result{c, err}
	}()
	raw, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingConn{Conn: raw}
	client, _, err := ccreds.ClientHandshake(context.Background(), "manager", counted)
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	r := <-srv
	if r.err != nil {
		t.Fatalf("server handshake: %v", r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c, counted
}

// One Write of several records reaches the socket as one write, and the
// bytes arrive intact.
func TestOneWritePerWrite(t *testing.T) {
	msg := bytes.Repeat([]byte("0123456789abcdef"), 8<<10) // 128 KiB: 8 records
	for _, wrap := range []bool{false, true} {
		client, server, counted := handshake(t, wrap)
		before := counted.count()
		got := make(chan []byte, 1)
		go func() {
			b := make([]byte, len(msg))
			io.ReadFull(server, b)
			got <- b
		}()
		if _, err := client.Write(msg); err != nil {
			t.Fatalf("Write: %v", err)
		}
		if b := <-got; !bytes.Equal(b, msg) {
			t.Fatalf("wrap=%v: the server read other bytes", wrap)
		}
		writes := counted.count() - before
		switch {
		case wrap && writes != 1:
			t.Errorf("batched: one Write of 8 records took %d socket writes, want 1", writes)
		case !wrap && writes < 8:
			t.Errorf("plain TLS: one Write of 8 records took %d socket writes; the test expects one per record", writes)
		}
	}
}

// Both directions keep working with concurrent writers and small writes.
func TestBothWaysConcurrent(t *testing.T) {
	client, server, _ := handshake(t, true)
	const n = 200
	var wg sync.WaitGroup
	echoed := make(chan error, 1)
	go func() {
		_, err := io.CopyN(server, server, 2*n*100)
		echoed <- err
	}()
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := bytes.Repeat([]byte{byte('a' + w)}, 100)
			for range n {
				if _, err := client.Write(b); err != nil {
					t.Errorf("Write: %v", err)
					return
				}
			}
		}()
	}
	got := make([]byte, 2*n*100)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	wg.Wait()
	if err := <-echoed; err != nil {
		t.Fatalf("echo: %v", err)
	}
	if a, b := bytes.Count(got, []byte{'a'}), bytes.Count(got, []byte{'b'}); a != n*100 || b != n*100 {
		t.Errorf("echoed %d a and %d b, want %d each", a, b, n*100)
	}
}

// gRPC works over batched credentials: a unary call and a stream of large
// messages both ways.
func TestGRPC(t *testing.T) {
	ccreds, screds := testCreds(t)
	srv := grpc.NewServer(grpc.Creds(Wrap(screds)), grpc.WriteBufferSize(WriteBufferSize))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(Wrap(ccreds)),
		grpc.WithWriteBufferSize(WriteBufferSize), grpc.WithAuthority("manager"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check over batched TLS: %v, %v", resp, err)
	}
	// A watch streams status changes: flip it a few times.
	w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{Service: "x"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		st := healthpb.HealthCheckResponse_SERVING
		if i%2 == 1 {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		hs.SetServingStatus("x", st)
		for {
			r, err := w.Recv()
			if err != nil {
				t.Fatalf("Watch: %v", err)
			}
			if r.GetStatus() == st {
				break
			}
		}
	}
}

// BenchmarkBulk moves 32 KiB Writes (one gRPC flush each with the default
// buffer) and 128 KiB ones through TLS over loopback, plain and batched.
func BenchmarkBulk(b *testing.B) {
	for _, size := range []int{32 << 10, WriteBufferSize} {
		for _, wrap := range []bool{false, true} {
			name := fmt.Sprintf("write=%dKiB/batched=%v", size>>10, wrap)
			b.Run(name, func(b *testing.B) {
				client, server, _ := handshake(b, wrap)
				done := make(chan struct{})
				go func() {
					io.Copy(io.Discard, server)
					close(done)
				}()
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				b.ResetTimer()
				for range b.N {
					if _, err := client.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				client.Close()
				<-done
			})
		}
	}
}

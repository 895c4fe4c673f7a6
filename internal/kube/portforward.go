// Package kube holds tp's helpers for the Kubernetes API that are not any
// component's API: a port-forward dialer that yields net.Conns without a local
// listener, and kubeconfig loading.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"

	//lint:ignore SA1019 client-go's spdy and portforward packages still take this package's types
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// PortForwarder multiplexes connections to ports of one pod over a single
// port-forward session through the API server (SPDY, with client-go's
// websocket fallback). Each DialPort is one stream of that session.
type PortForwarder struct {
	namespace, pod string

	conn      httpstream.Connection
	mu        sync.Mutex
	requestID int
}

// NewPortForwarder opens a port-forward session to namespace/pod.
func NewPortForwarder(ctx context.Context, config *rest.Config, namespace, pod string) (*PortForwarder, error) {
	url, err := portForwardURL(config, namespace, pod)
	if err != nil {
		return nil, fmt.Errorf("port-forward to %s/%s: %w", namespace, pod, err)
	}
	transport, upgrader, err := spdy.RoundTripperFor(config)
	if err != nil {
		return nil, fmt.Errorf("port-forward to %s/%s: %w", namespace, pod, err)
	}
	var dialer httpstream.Dialer = spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, url)
	if ws, err := portforward.NewSPDYOverWebsocketDialer(url, config); err == nil {
		dialer = portforward.NewFallbackDialer(dialer, ws, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	type result struct {
		conn httpstream.Connection
		err  error
	}
	done := make(chan result, 1)
	go func() {
		conn, _, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
		done <- result{conn, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("port-forward to %s/%s: %w", namespace, pod, r.err)
		}
		return &PortForwarder{namespace: namespace, pod: pod, conn: r.conn}, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.conn != nil {
				_ = r.conn.Close()
			}
		}()
		return nil, fmt.Errorf("port-forward to %s/%s: %w", namespace, pod, ctx.Err())
	}
}

// Done is closed when the port-forward session ends (API server, kubelet or
// pod gone).
func (f *PortForwarder) Done() <-chan bool { return f.conn.CloseChan() }

// Close ends the session and every stream on it.
func (f *PortForwarder) Close() error { return f.conn.Close() }

// DialPort opens a connection to port of the pod.
func (f *PortForwarder) DialPort(port int) (net.Conn, error) {
	f.mu.Lock()
	f.requestID++
	id := f.requestID
	f.mu.Unlock()

	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(port))
	headers.Set(corev1.PortForwardRequestIDHeader, strconv.Itoa(id))
	errorStream, err := f.conn.CreateStream(headers)
	if err != nil {
		return nil, fmt.Errorf("port-forward %s/%s:%d: create error stream: %w", f.namespace, f.pod, port, err)
	}
	_ = errorStream.Close() // we never write to it
	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	dataStream, err := f.conn.CreateStream(headers)
	if err != nil {
		f.conn.RemoveStreams(errorStream)
		return nil, fmt.Errorf("port-forward %s/%s:%d: create data stream: %w", f.namespace, f.pod, port, err)
	}
	c := &streamConn{f: f, data: dataStream, errStream: errorStream, port: port}
	go c.watchErrors()
	return c, nil
}

// streamConn is one port-forward stream as a net.Conn.
type streamConn struct {
	f         *PortForwarder
	data      httpstream.Stream
	errStream httpstream.Stream
	port      int
	closeOnce sync.Once
}

// watchErrors reads the kubelet's error stream: a message there means the
// connection to the pod's port failed, so the data stream is reset.
func (c *streamConn) watchErrors() {
	msg, err := io.ReadAll(c.errStream)
	if err == nil && len(msg) > 0 {
		_ = c.data.Reset()
	}
}

func (c *streamConn) Read(b []byte) (int, error)  { return c.data.Read(b) }
func (c *streamConn) Write(b []byte) (int, error) { return c.data.Write(b) }

func (c *streamConn) Close() error {
	c.closeOnce.Do(func() {
		_ = c.data.Reset()
		c.f.conn.RemoveStreams(c.data, c.errStream)
	})
	return nil
}

// CloseWrite half-closes the stream.
func (c *streamConn) CloseWrite() error { return c.data.Close() }

func (c *streamConn) LocalAddr() net.Addr { return pfAddr("local") }
func (c *streamConn) RemoteAddr() net.Addr {
	return pfAddr(c.f.namespace + "/" + c.f.pod + ":" + strconv.Itoa(c.port))
}

// Deadlines are not supported by port-forward streams; gRPC does not need them.
func (c *streamConn) SetDeadline(time.Time) error      { return errNoDeadline }
func (c *streamConn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (c *streamConn) SetWriteDeadline(time.Time) error { return errNoDeadline }

var errNoDeadline = errors.New("port-forward streams do not support deadlines")

type pfAddr string

func (a pfAddr) Network() string { return "portforward" }
func (a pfAddr) String() string  { return string(a) }

// DialGRPC returns a plain-text gRPC client connection to port of the pod
// over this session (the traffic-manager's API); opts add to the defaults.
func (f *PortForwarder) DialGRPC(port int, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return f.DialPort(port) }),
	}, opts...)
	cc, err := grpc.NewClient("passthrough:///"+f.namespace+"/"+f.pod, opts...)
	if err != nil {
		return nil, fmt.Errorf("gRPC client for %s/%s:%d: %w", f.namespace, f.pod, port, err)
	}
	return cc, nil
}

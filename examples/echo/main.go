// Command echo is tp's example service: an HTTP server that reports which copy
// answered (the one in the cluster or a developer's local one), and a tiny
// client used by the demo from a container joined to tp.
//
//	echo serve            serve HTTP on :8080, gRPC on :9091 and UDP echo on :9090
//	echo get URL          GET URL and print the body (exit 1 on failure)
//	echo cat FILE...      print the files (the image has no shell: `kubectl exec` uses it)
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/tp-run/tp/examples/echo/echopb"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		args = []string{"serve"}
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve()
	case "get":
		if len(args) != 2 {
			err = fmt.Errorf("usage: echo get URL")
			break
		}
		err = get(args[1])
	case "cat":
		err = cat(args[1:])
	case "stat":
		err = stat(args[1:])
	case "append":
		if len(args) != 3 {
			err = fmt.Errorf("usage: echo append FILE TEXT")
			break
		}
		err = appendLine(args[1], args[2])
	default:
		err = fmt.Errorf("unknown command %q: use serve, get, cat, stat or append", args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

// cat prints the files to stdout, byte for byte.
func cat(files []string) error {
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		_, err = io.Copy(os.Stdout, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// stat prints each file's "uid gid mode" (mode in octal, with the setgid
// bit as 02000): what tests check of the files in the pod's volumes.
func stat(files []string) error {
	for _, name := range files {
		fi, err := os.Lstat(name)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no owner on this OS", name)
		}
		fmt.Printf("%d %d %o\n", st.Uid, st.Gid, st.Mode&0o7777)
	}
	return nil
}

// appendLine appends text and a newline to file, creating it (mode 0664
// and the umask): a write as the app's user.
func appendLine(file, text string) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o664)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(f, text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Reply is what every HTTP request gets back.
type Reply struct {
	Service string              `json:"service"`
	Copy    string              `json:"copy"` // "cluster" or "local": ECHO_COPY
	Pod     string              `json:"pod,omitempty"`
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Headers map[string][]string `json:"headers,omitempty"`
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func serve() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	httpAddr := env("ECHO_HTTP_ADDR", ":8080")
	udpAddr := env("ECHO_UDP_ADDR", ":9090")
	grpcAddr := env("ECHO_GRPC_ADDR", ":9091")
	service := env("ECHO_SERVICE", "echo")
	copyName := env("ECHO_COPY", "cluster")

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	// /bytes?n=N streams N bytes: bulk transfer for benchmarks.
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "n must be a non-negative integer", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 256<<10)
		for n > 0 {
			chunk := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:chunk]); err != nil {
				return
			}
			n -= chunk
		}
	})
	// /env?keys=A,B shows those environment variables: what a developer's
	// local copy received from the intercepted pod.
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		out := map[string]string{}
		for _, k := range strings.Split(r.URL.Query().Get("keys"), ",") {
			if v, ok := os.LookupEnv(k); ok {
				out[k] = v
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		reply := Reply{Service: service, Copy: copyName, Pod: os.Getenv("POD_NAME"),
			Method: r.Method, Path: r.URL.Path, Headers: r.Header}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(reply)
	})
	srv := &http.Server{Addr: httpAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	pc, err := net.ListenPacket("udp", udpAddr)
	if err != nil {
		return fmt.Errorf("listen udp %s: %w", udpAddr, err)
	}
	grpcLis, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return fmt.Errorf("listen grpc %s: %w", grpcAddr, err)
	}
	grpcSrv := grpc.NewServer()
	echopb.RegisterEchoServer(grpcSrv, &echoGRPC{service: service, copy: copyName})
	go func() {
		<-ctx.Done()
		_ = pc.Close()
		grpcSrv.GracefulStop()
		_ = srv.Shutdown(context.Background())
	}()
	go udpEcho(pc, copyName)
	go func() { _ = grpcSrv.Serve(grpcLis) }()
	log.Info("echo serving", "http", httpAddr, "grpc", grpcAddr, "udp", udpAddr, "copy", copyName)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}

// echoGRPC answers Who with the copy that runs it.
type echoGRPC struct {
	echopb.UnimplementedEchoServer
	service, copy string
}

func (e *echoGRPC) Who(ctx context.Context, req *echopb.WhoRequest) (*echopb.WhoReply, error) {
	reply := &echopb.WhoReply{Service: e.service, Copy: e.copy, Pod: os.Getenv("POD_NAME"), Message: req.GetMessage(),
		Metadata: map[string]string{}}
	md, _ := metadata.FromIncomingContext(ctx)
	for k, v := range md {
		reply.Metadata[k] = strings.Join(v, ",")
	}
	return reply, nil
}

// udpEcho answers every datagram with "<copy>:<datagram>".
func udpEcho(pc net.PacketConn, copyName string) {
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(append([]byte(copyName+":"), buf[:n]...), addr)
	}
}

func get(url string) error {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	var reply Reply
	if json.Unmarshal(body, &reply) == nil && reply.Service != "" {
		fmt.Printf("%s answered from the %s copy (pod %q) for %s %s\n", reply.Service, reply.Copy, reply.Pod, reply.Method, reply.Path)
		return nil
	}
	_, err = os.Stdout.Write(body)
	return err
}

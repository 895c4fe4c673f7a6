package agent

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// BenchmarkSpliceToApp measures the fast path: bulk bytes through the agent
// to the app (no intercept).
func BenchmarkSpliceToApp(b *testing.B) {
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	b.Cleanup(func() {
		sink.Close()
		<-done
	})
	app := &testServer{name: "sink", addr: sink.Addr().(*net.TCPAddr).AddrPort()}
	ta := startAgent(b, app, agentOptions{managerAddr: dead})

	c, err := net.Dial("tcp", ta.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHTTPModeToApp measures requests on a keep-alive connection in
// HTTP mode (a personal intercept exists) that go to the app.
func BenchmarkHTTPModeToApp(b *testing.B) {
	app := newTestServer(b, "app")
	dev := newTestServer(b, "dev")
	mgr := newFakeManager(b, dev.addr.String())
	ta := startAgent(b, app, agentOptions{managerAddr: mgr.address()})
	waitFor(b, "the agent to arrive", ta.arrived.Load)
	mgr.setIntercepts(personalIntercept("ic-1", ta.containerPt, map[string]string{"x-dev": "alice"}, ""))
	ta.waitRoutes(b, "ic-1")

	tr := &http.Transport{MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := "http://" + ta.addr + "/"
	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

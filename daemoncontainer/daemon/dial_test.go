package daemon

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestDial(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := l.Addr().String()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()
	t.Cleanup(func() { l.Close() })
	tests := []struct {
		addr    string
		wantErr bool
	}{
		{open, false},
		{refused, true},
		{"localhost", false},           // a name alone: it resolves
		{"no-such-host.invalid", true}, // .invalid never resolves
		{"no-such-host.invalid:5432", true},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := Dial(ctx, tt.addr)
		cancel()
		if (err != nil) != tt.wantErr {
			t.Errorf("Dial(%s): got %v, want error %v", tt.addr, err, tt.wantErr)
		}
	}
}

//go:build linux

// Package tuntest runs tests in throwaway network namespaces, where they may create TUN devices
// and routes without touching the host's network.
package tuntest

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Netns is a network namespace that lives as long as the test.
type Netns struct {
	handle netns.NsHandle
}

// NewNetns creates a network namespace with its loopback up. It skips the test unless the
// process may create namespaces and TUN devices (root, or CAP_SYS_ADMIN and CAP_NET_ADMIN, with
// /dev/net/tun).
func NewNetns(tb testing.TB) *Netns {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to create a network namespace and a TUN device (run with sudo)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skipf("needs /dev/net/tun: %v", err)
	}
	var h netns.NsHandle
	err := onThread(func() error {
		var err error
		h, err = netns.New() // unshares this thread, which onThread then discards
		return err
	})
	if err != nil {
		tb.Skipf("cannot create a network namespace: %v", err)
	}
	n := &Netns{handle: h}
	tb.Cleanup(func() { h.Close() })
	if err := n.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		tb.Fatalf("set lo up in the test namespace: %v", err)
	}
	return n
}

// Do runs fn on an OS thread inside the namespace and returns its error. Sockets, TUN devices
// and netlink changes made by fn belong to the namespace and may be used from any goroutine
// afterwards; goroutines started by fn run outside it.
func (n *Netns) Do(fn func() error) error {
	return onThread(func() error {
		if err := netns.Set(n.handle); err != nil {
			return fmt.Errorf("enter namespace: %w", err)
		}
		return fn()
	})
}

// DialContext dials from inside the namespace.
func (n *Netns) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// onThread runs fn in a goroutine locked to a thread that is thrown away afterwards, so that
// namespace changes never leak to other goroutines.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		errc <- fn()
	}()
	return <-errc
}

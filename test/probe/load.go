package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// loadSecond is the line `probe load` prints for every second of wall time:
// the requests that ended in it, ok (answered by the wanted copy) and
// failed, with the first failure of the second.
type loadSecond struct {
	Unix   int64  `json:"t"`
	OK     int64  `json:"ok"`
	Failed int64  `json:"failed"`
	Err    string `json:"err,omitempty"`
}

// load sends a steady load of GETs until SIGTERM (or -duration) and prints
// one loadSecond per second, so that a test reading the output afterwards
// (the pod's or container's log survives the load's own restarts) sees when
// requests failed and when they succeeded again.
//
//	probe load -url URL [-copy C] [-c N] [-fresh F] [-pause P] [-request-timeout T] [-duration D]
//
// A request succeeds when it is answered 200 and, with -copy, by that copy of
// the echo example; F of the N workers open a new connection for every
// request, the others keep theirs alive.
func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var (
		target   = fs.String("url", "", "URL to GET")
		want     = fs.String("copy", "", "the copy of echo that must answer (empty: any 200)")
		conc     = fs.Int("c", 2, "workers")
		fresh    = fs.Int("fresh", 1, "workers (of -c) that open a new connection for each request")
		pause    = fs.Duration("pause", 100*time.Millisecond, "pause between a worker's requests")
		timeout  = fs.Duration("request-timeout", 3*time.Second, "deadline of one request")
		duration = fs.Duration("duration", 0, "stop after this long (0: until SIGTERM or SIGINT)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		return errors.New("load: -url is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}

	var (
		mu  sync.Mutex
		cur = loadSecond{Unix: time.Now().Unix()}
		enc = json.NewEncoder(os.Stdout)
	)
	// flush prints the seconds before now (empty ones too: a second in
	// which no request ended is a second of a stalled load).
	flush := func(now int64) {
		for cur.Unix < now {
			_ = enc.Encode(cur)
			cur = loadSecond{Unix: cur.Unix + 1}
		}
	}
	record := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		flush(time.Now().Unix())
		if err == nil {
			cur.OK++
			return
		}
		cur.Failed++
		if cur.Err == "" {
			cur.Err = err.Error()
		}
	}

	var g errgroup.Group
	g.Go(func() error { // the clock: prints each second once it is over
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case now := <-tick.C:
				mu.Lock()
				flush(now.Unix())
				mu.Unlock()
			}
		}
	})
	for w := range *conc {
		client := &http.Client{Transport: newTransport(1), Timeout: *timeout}
		if w < *fresh {
			client.Transport.(*http.Transport).DisableKeepAlives = true
		}
		g.Go(func() error {
			defer client.CloseIdleConnections()
			for ctx.Err() == nil {
				body, err := getOnce(ctx, client, *target)
				if ctx.Err() != nil {
					return nil // the load ends: this request does not count
				}
				if err == nil && *want != "" {
					if got := copyOf(body); got != *want {
						err = fmt.Errorf("answered by copy %q, want %q", got, *want)
					}
				}
				record(err)
				select {
				case <-ctx.Done():
				case <-time.After(*pause):
				}
			}
			return nil
		})
	}
	return g.Wait()
}

package main

import (
	"fmt"
	"os"
	"time"
)

// The file probes read and write through a container's mounts (tp volumes).

// probeCat prints the file at path.
func probeCat(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}

// probeWrite writes content to the file at path (created or truncated).
func probeWrite(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o644)
}

// probeReadLoop reads the file at path whole, again and again until it is
// killed, printing "ok <bytes>" or "error <err>" per read. Each read opens
// the file anew, so the page cache does not answer.
func probeReadLoop(path string) error {
	for {
		if b, err := os.ReadFile(path); err != nil {
			fmt.Printf("error %v\n", err)
		} else {
			fmt.Printf("ok %d\n", len(b))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

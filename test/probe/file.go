package main

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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

// probeFSBench measures file access through a mount and prints one JSON
// line: "read FILE" reads a file sequentially, "walk DIR" lists and stats a
// tree (find + stat), "smallreads DIR" reads every regular file of a tree.
func probeFSBench(mode, path string) error {
	start := time.Now()
	var files, bytes int64
	switch mode {
	case "read":
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.CopyBuffer(io.Discard, f, make([]byte, 1<<20))
		if err != nil {
			return err
		}
		files, bytes = 1, n
	case "walk", "smallreads":
		err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			if !fi.Mode().IsRegular() {
				return nil
			}
			files++
			if mode == "smallreads" {
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				bytes += int64(len(b))
			}
			return nil
		})
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("fsbench mode %q: use read, walk or smallreads", mode)
	}
	secs := time.Since(start).Seconds()
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"mode": mode, "files": files, "bytes": bytes, "seconds": secs, "mbPerSecond": float64(bytes) / 1e6 / secs,
	})
}

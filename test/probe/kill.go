package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// killProcesses sends SIGTERM to every process whose command line is
// exactly argv (e.g. "/tp agent"), as an ephemeral container sharing a
// container's process namespace does to restart that container in place.
// It fails when no such process exists.
func killProcesses(argv []string) error {
	want := []byte(strings.Join(argv, "\x00") + "\x00")
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return err
	}
	var killed []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !bytes.Equal(cmdline, want) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			return fmt.Errorf("kill %d: %w", pid, err)
		}
		killed = append(killed, pid)
	}
	if len(killed) == 0 {
		return fmt.Errorf("no process %q", strings.Join(argv, " "))
	}
	fmt.Println("killed", killed)
	return nil
}

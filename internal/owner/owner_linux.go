package owner

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"strconv"
)

// startTime is pid's start time in clock ticks after boot (field 22 of
// /proc/PID/stat), and whether pid exists (a zombie does not: it ended). A
// pid that may exist but whose start time cannot be read gives "", true.
func startTime(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, fs.ErrNotExist) {
		return "", false
	}
	if err != nil {
		return "", true
	}
	// The command (field 2) is in parentheses and may hold spaces: count after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", true
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 { // fields 3..22
		return "", true
	}
	if string(f[0]) == "Z" { // a zombie: it ended, its parent has not reaped it yet
		return "", false
	}
	return string(f[19]), true
}

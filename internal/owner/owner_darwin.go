package owner

import (
	"errors"
	"strconv"

	"golang.org/x/sys/unix"
)

// startTime is pid's start time (kern.proc.pid's p_starttime), and whether
// pid exists.
func startTime(pid int) (string, bool) {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return "", false
	}
	p, err := unix.SysctlKinfoProc("kern.proc.pid", pid)
	if err != nil {
		return "", true
	}
	t := p.Proc.P_starttime
	return strconv.FormatInt(int64(t.Sec), 10) + "." + strconv.FormatInt(int64(t.Usec), 10), true
}

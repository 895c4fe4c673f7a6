//go:build !linux && !darwin

package owner

// startTime cannot tell on this OS: every pid may exist, so no owner is
// ever gone and only a tp command on a Linux or macOS host (or tp quit)
// removes what a killed CLI left.
func startTime(int) (string, bool) { return "", true }

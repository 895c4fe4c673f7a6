package cli

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// envFakeTool makes the test binary a stand-in for a local cluster's loader
// (kind, minikube, k3d): it writes its arguments and DOCKER_HOST to the file
// the variable names, prints "loaded", and fails with status 3 when its
// fifth argument is "fail". A copy of the test binary named after the tool
// works on every OS, where a shell script would not on Windows.
const envFakeTool = "TP_CLI_TEST_FAKE_TOOL"

func TestMain(m *testing.M) {
	if record := os.Getenv(envFakeTool); record != "" {
		os.Exit(fakeTool(record, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeTool(record string, args []string) int {
	got := strings.Join(args, " ") + "\nDOCKER_HOST=" + os.Getenv("DOCKER_HOST") + "\n"
	if err := os.WriteFile(record, []byte(got), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("loaded")
	if len(args) >= 5 && args[4] == "fail" {
		fmt.Fprintln(os.Stderr, "boom")
		return 3
	}
	return 0
}

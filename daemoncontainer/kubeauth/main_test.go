package kubeauth_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tp-run/tp/daemoncontainer/kubeauth"
)

// The test binary doubles as the two programs of the relay, chosen by its
// first argument (a test run's arguments all start with -test.):
//
//   - `fake-plugin`: a cloud exec plugin on the host, driven by FAKE_* env;
//   - `kubeauth-plugin --url URL --user NAME`: what `tp kubeauth-plugin` does
//     in the container, so client-go can run it from a rewritten kubeconfig.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "fake-plugin":
			os.Exit(fakePlugin())
		case kubeauth.PluginCommand:
			os.Exit(pluginCommand(os.Args[2:]))
		}
	}
	os.Exit(m.Run())
}

func pluginCommand(args []string) int {
	fs := flag.NewFlagSet(kubeauth.PluginCommand, flag.ContinueOnError)
	relayURL := fs.String("url", "", "relay URL")
	user := fs.String("user", "", "kubeconfig user")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	err := kubeauth.RunPlugin(context.Background(), *relayURL, *user, os.Getenv(kubeauth.EnvSecret), os.Stdin, os.Stdout, os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// fakePlugin behaves like an exec credential plugin:
//
//	FAKE_RECORD  file to write KUBERNETES_EXEC_INFO to
//	FAKE_STDERR  written to stderr
//	FAKE_SLEEP   duration to wait first
//	FAKE_EXIT    exit code (after FAKE_STDERR), no output when not 0
//	FAKE_STDOUT  written to stdout verbatim, instead of a credential
//	FAKE_TOKEN, FAKE_EXPIRY  the credential's token and expirationTimestamp;
//	             its apiVersion is the request's, as real plugins do.
func fakePlugin() int {
	info := os.Getenv(kubeauth.EnvExecInfo)
	if path := os.Getenv("FAKE_RECORD"); path != "" {
		if err := os.WriteFile(path, []byte(info), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
	}
	fmt.Fprint(os.Stderr, os.Getenv("FAKE_STDERR"))
	if d, err := time.ParseDuration(os.Getenv("FAKE_SLEEP")); err == nil {
		time.Sleep(d)
	}
	if code, _ := strconv.Atoi(os.Getenv("FAKE_EXIT")); code != 0 {
		return code
	}
	if out, ok := os.LookupEnv("FAKE_STDOUT"); ok {
		fmt.Print(out)
		return 0
	}
	var req struct {
		APIVersion string `json:"apiVersion"`
	}
	if err := json.Unmarshal([]byte(info), &req); err != nil {
		fmt.Fprintf(os.Stderr, "%s is not an ExecCredential: %v\n", kubeauth.EnvExecInfo, err)
		return 3
	}
	status := map[string]any{"token": os.Getenv("FAKE_TOKEN")}
	if exp := os.Getenv("FAKE_EXPIRY"); exp != "" {
		status["expirationTimestamp"] = exp
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
		"apiVersion": req.APIVersion,
		"kind":       "ExecCredential",
		"status":     status,
	})
	return 0
}

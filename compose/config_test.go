package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/cli/cli/command"
	cliflags "github.com/docker/cli/cli/flags"
	composecmd "github.com/docker/compose/v5/cmd/compose"
	"github.com/spf13/cobra"
)

// dockerComposeConfig runs docker compose's own `config` command (the
// compose library's cmd/compose, in process: no plugin needed) and returns
// what it prints.
func dockerComposeConfig(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cli, err := command.NewDockerCli(command.WithOutputStream(&out), command.WithErrorStream(&errOut), command.WithInputStream(io.NopCloser(strings.NewReader(""))))
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.Initialize(cliflags.NewClientOptions()); err != nil {
		t.Fatal(err)
	}
	// docker's root command: compose's pre-run calls its parent's.
	root := &cobra.Command{Use: "docker", SilenceErrors: true, SilenceUsage: true, TraverseChildren: true}
	root.AddCommand(composecmd.RootCommand(cli, &composecmd.BackendOptions{}))
	root.SetArgs(append([]string{"compose"}, args...))
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	err = root.ExecuteContext(context.Background())
	return out.String(), err
}

// tpConfig is `tp compose config` with the same arguments.
func tpConfig(t *testing.T, lo LoadOptions, format string) (string, error) {
	t.Helper()
	var out strings.Builder
	err := Config(context.Background(), lo, ConfigOptions{Format: format}, &out)
	return out.String(), err
}

// cleanComposeEnv unsets the COMPOSE_* variables for the test (restored after).
func cleanComposeEnv(t *testing.T) {
	for _, k := range []string{"COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "COMPOSE_PATH_SEPARATOR", "COMPOSE_ENV_FILES"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// composeGoDir is compose-go's module directory (in the module cache).
func composeGoDir(t *testing.T) string {
	t.Helper()
	// A test binary run without the go command (Windows under wine,
	// hack/wine-test.sh) is told the directory.
	if dir := os.Getenv("TP_COMPOSE_GO_DIR"); dir != "" {
		return dir
	}
	out, err := exec.Command("go", "list", "-m", "-json", "github.com/compose-spec/compose-go/v2").Output()
	if err != nil {
		t.Fatalf("go list compose-go: %v", err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go list compose-go: %v %s", err, out)
	}
	return m.Dir
}

// configCase is one project to load both ways.
type configCase struct {
	name string
	lo   LoadOptions
	args []string // docker compose's flags for lo
}

func fileCase(name, file string) configCase {
	return configCase{name: name, lo: LoadOptions{Files: []string{file}}, args: []string{"-f", file}}
}

func dirCase(name, dir string, profiles ...string) configCase {
	c := configCase{name: name, lo: LoadOptions{ProjectDirectory: dir, Profiles: profiles}, args: []string{"--project-directory", dir}}
	for _, p := range profiles {
		c.args = append(c.args, "--profile", p)
	}
	return c
}

// TestConfigMatchesDockerCompose: for compose-go's loader fixtures and for
// realistic projects without x-tp (compose/testdata), `tp compose config`
// prints byte for byte what `docker compose config` prints, in YAML and
// JSON; where docker compose refuses a project, tp refuses it with the same
// message.
func TestConfigMatchesDockerCompose(t *testing.T) {
	cleanComposeEnv(t)
	t.Setenv("GOLDEN_TAG", "1.2.3") // what compose-go's golden tests set
	t.Setenv("GOLDEN_PORT", "8080")
	t.Setenv("PUBLIC_PORT", "8080")
	var cases []configCase
	cg := composeGoDir(t)
	for _, root := range []string{filepath.Join(cg, "loader", "testdata"), filepath.Join(cg, "cli", "testdata")} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, path)
			ext := filepath.Ext(path)
			switch {
			case d.IsDir() && (d.Name() == "remote"):
				return fs.SkipDir // git and OCI includes: need the network
			case d.IsDir(), ext != ".yaml" && ext != ".yml", strings.Contains(d.Name(), ".golden."), strings.Contains(d.Name(), "context-url"):
				return nil
			}
			cases = append(cases, fileCase(filepath.Base(filepath.Dir(root))+"/"+rel, path))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	local, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := os.ReadDir(local)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if d.IsDir() {
			cases = append(cases, dirCase("testdata/"+d.Name(), filepath.Join(local, d.Name())))
		}
	}
	cases = append(cases,
		dirCase("testdata/profiles+debug", filepath.Join(local, "profiles"), "debug"),
		configCase{name: "testdata/envfiles+env-file", lo: LoadOptions{ProjectDirectory: filepath.Join(local, "envfiles"), EnvFiles: []string{filepath.Join(local, "envfiles", "app.env")}},
			args: []string{"--project-directory", filepath.Join(local, "envfiles"), "--env-file", filepath.Join(local, "envfiles", "app.env")}},
		configCase{name: "testdata/webstack+services", lo: LoadOptions{ProjectDirectory: filepath.Join(local, "webstack"), Services: []string{"worker"}},
			args: []string{"--project-directory", filepath.Join(local, "webstack"), "config", "worker"}},
	)
	if len(cases) < 30 {
		t.Fatalf("found only %d projects to compare; compose-go's fixtures moved?", len(cases))
	}
	matched, refused := 0, 0
	for _, c := range cases {
		for _, format := range []string{"yaml", "json"} {
			t.Run(c.name+"/"+format, func(t *testing.T) {
				args := append([]string{}, c.args...)
				if i := indexOf(args, "config"); i >= 0 {
					args = append(append(args[:i:i], "config", "--format", format), args[i+1:]...)
				} else {
					args = append(args, "config", "--format", format)
				}
				// docker compose sets COMPOSE_* of a project's .env in the
				// process's environment: tp first, and clean after each.
				cleanComposeEnv(t)
				got, err := tpConfig(t, c.lo, format)
				cleanComposeEnv(t)
				want, wantErr := dockerComposeConfig(t, args...)
				cleanComposeEnv(t)
				switch {
				case wantErr != nil && err == nil:
					t.Fatalf("docker compose config refuses it (%v); tp compose config printed:\n%s", wantErr, got)
				case wantErr != nil:
					if !strings.Contains(err.Error(), wantErr.Error()) {
						t.Fatalf("tp: %v\nwant docker compose's error: %v", err, wantErr)
					}
					t.Logf("refused alike: %v", wantErr)
					refused++
				case err != nil:
					t.Fatalf("tp compose config: %v; docker compose config printed:\n%s", err, want)
				case got != want:
					t.Fatalf("tp compose config:\n%s\ndocker compose config:\n%s", got, want)
				default:
					matched++
				}
			})
		}
	}
	t.Logf("%d outputs identical, %d refused alike, of %d projects", matched, refused, len(cases))
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

package intercept

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// EnvSyntaxes are the formats of --env-file.
var EnvSyntaxes = []string{"docker", "compose", "sh", "json"}

// WriteEnv writes env in one of EnvSyntaxes, keys sorted.
func WriteEnv(w io.Writer, syntax string, env map[string]string) error {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	switch syntax {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(env)
	case "docker":
		// docker's --env-file takes each line verbatim and has no quoting:
		// a value with a newline cannot be written.
		for _, k := range keys {
			if strings.ContainsAny(env[k], "\r\n") {
				return fmt.Errorf("variable %s has a multi-line value, which docker env files cannot hold: use --env-syntax compose, sh or json", k)
			}
			if _, err := fmt.Fprintf(w, "%s=%s\n", k, env[k]); err != nil {
				return err
			}
		}
		return nil
	case "compose":
		// compose env files: double-quoted values with \-escapes; $ doubled so
		// that compose does not interpolate it.
		r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`, "$", "$$")
		for _, k := range keys {
			if _, err := fmt.Fprintf(w, "%s=\"%s\"\n", k, r.Replace(env[k])); err != nil {
				return err
			}
		}
		return nil
	case "sh":
		for _, k := range keys {
			if _, err := fmt.Fprintf(w, "export %s='%s'\n", k, strings.ReplaceAll(env[k], "'", `'\''`)); err != nil {
				return err
			}
		}
		return nil
	default:
		return fmt.Errorf("unknown --env-syntax %q: use one of %s", syntax, strings.Join(EnvSyntaxes, ", "))
	}
}

// WriteEnvFile writes env to path (mode 0600: it holds the pod's Secrets)
// in one of EnvSyntaxes.
func WriteEnvFile(path, syntax string, env map[string]string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("--env-file: %w", err)
	}
	if err := WriteEnv(f, syntax, env); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

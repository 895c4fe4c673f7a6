package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// envSyntaxes are the formats of --env-file.
var envSyntaxes = []string{"docker", "compose", "sh", "json"}

// writeEnv writes env in one of envSyntaxes, keys sorted.
func writeEnv(w io.Writer, syntax string, env map[string]string) error {
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
		return fmt.Errorf("unknown --env-syntax %q: use one of %s", syntax, strings.Join(envSyntaxes, ", "))
	}
}

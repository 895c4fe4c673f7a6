package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// outputFlag adds kubectl's -o/--output flag for machine-readable output.
func outputFlag(cmd *cobra.Command, format *string) {
	cmd.Flags().StringVarP(format, "output", "o", "", "output format: json or yaml (default: human-readable)")
}

// printStructured writes v as JSON or YAML, or calls human for the default format.
func printStructured(w io.Writer, format string, v any, human func(io.Writer) error) error {
	switch format {
	case "":
		return human(w)
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode yaml: %w", err)
		}
		_, err = w.Write(b)
		return err
	default:
		return fmt.Errorf("unknown output format %q: use json or yaml", format)
	}
}

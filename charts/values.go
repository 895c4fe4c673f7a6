package charts

import (
	"fmt"

	"helm.sh/helm/v3/pkg/cli"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
)

// MergeValues builds chart values the way the helm CLI does: the -f files in
// order (a path, "-" for stdin, or an http(s) URL), deeper maps merged and
// later files winning, then each --set and each --set-string entry.
func MergeValues(files, set, setString []string) (map[string]any, error) {
	opts := values.Options{ValueFiles: files, Values: set, StringValues: setString}
	vals, err := opts.MergeValues(getter.All(cli.New()))
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	return vals, nil
}

// Package charts embeds the traffic-manager Helm chart (charts/tp) and
// installs, upgrades and uninstalls it with the Helm SDK, storing releases
// in Secrets like the helm CLI does. The CLI stamps the chart with its own
// version (Load), so by default the manager runs the image of that version.
package charts

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/Masterminds/semver/v3"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/ignore"
)

// chartDir is the chart's directory in chartFS.
const chartDir = "tp"

// chartFS holds the chart, dotfiles (.helmignore) included.
//
//go:embed all:tp
var chartFS embed.FS

// Load returns a fresh copy of the embedded chart with Metadata.AppVersion
// set to version, which is also the default image tag, and Metadata.Version
// set to version as SemVer 2: a leading "v" is dropped and a version that is
// not SemVer ("dev") becomes a pre-release of 0.0.0 ("0.0.0-dev"). An empty
// version keeps the chart's placeholders.
func Load(version string) (*chart.Chart, error) {
	files, err := chartFiles()
	if err != nil {
		return nil, fmt.Errorf("read the embedded chart: %w", err)
	}
	ch, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("load the embedded chart: %w", err)
	}
	if version != "" {
		ch.Metadata.AppVersion = version
		ch.Metadata.Version = chartVersion(version)
	}
	if err := ch.Validate(); err != nil {
		return nil, fmt.Errorf("chart for version %q: %w", version, err)
	}
	return ch, nil
}

// chartFiles reads the embedded chart, skipping what .helmignore excludes,
// like loader.LoadDir does for a directory.
func chartFiles() ([]*loader.BufferedFile, error) {
	rules := ignore.Empty()
	if f, err := chartFS.Open(path.Join(chartDir, ignore.HelmIgnore)); err == nil {
		rules, err = ignore.Parse(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", ignore.HelmIgnore, err)
		}
	}
	rules.AddDefaults()

	var files []*loader.BufferedFile
	err := fs.WalkDir(chartFS, chartDir, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(name, chartDir+"/")
		if name == chartDir {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if rules.Ignore(rel, fi) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		data, err := chartFS.ReadFile(name)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: rel, Data: data})
		return nil
	})
	return files, err
}

// chartVersion turns a CLI version into a SemVer 2 chart version.
func chartVersion(version string) string {
	v := strings.TrimPrefix(version, "v")
	if _, err := semver.StrictNewVersion(v); err == nil {
		return v
	}
	// A pre-release identifier allows only [0-9A-Za-z-] and dots between
	// non-empty identifiers.
	var b strings.Builder
	for _, r := range version {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '-', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	var ids []string
	for id := range strings.SplitSeq(b.String(), ".") {
		if id == "" {
			continue
		}
		if len(id) > 1 && id[0] == '0' && strings.Trim(id, "0123456789") == "" {
			id = "x" + id // numeric identifiers allow no leading zero
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		ids = []string{"unknown"}
	}
	return "0.0.0-" + strings.Join(ids, ".")
}

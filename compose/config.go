package compose

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/tp-run/tp/daemoncontainer"
)

// ConfigOptions are `tp compose config`'s.
type ConfigOptions struct {
	// Format is yaml (default) or json.
	Format string
}

// Config writes the project compose would run: without x-tp exactly what
// `docker compose config` prints (the same loader, environment resolution,
// container name check, and $ escaped as $$); with it the transformed
// project, with tp's notes (the daemon container's published ports,
// replaced services, what tp changed) as comments before it (YAML only).
func Config(ctx context.Context, lo LoadOptions, o ConfigOptions, w io.Writer) error {
	format := cmp.Or(o.Format, "yaml")
	if format != "yaml" && format != "json" {
		return fmt.Errorf("--format %q: want yaml or json", o.Format)
	}
	p, err := Load(ctx, lo)
	if err != nil {
		return err
	}
	plan, err := ParsePlan(p)
	if err != nil {
		return err
	}
	if p, err = p.WithServicesEnvironmentResolved(true); err != nil {
		return fmt.Errorf("compose config: %w", err)
	}
	if err := p.CheckContainerNameUnicity(); err != nil {
		return fmt.Errorf("compose config: %w", err)
	}
	if !plan.HasExtension() {
		return marshalProject(w, p, format)
	}
	t, err := Transform(p, plan, daemoncontainer.ContainerName(cmp.Or(plan.Connection.Name, daemoncontainer.DefaultName)))
	if err != nil {
		return err
	}
	if format == "yaml" {
		fmt.Fprintf(w, "# tp: connection %q\n", cmp.Or(plan.Connection.Name, daemoncontainer.DefaultName))
		for _, pc := range t.Publish {
			fmt.Fprintf(w, "# tp: the daemon container publishes %s:%s->%d/%s\n", cmp.Or(pc.HostIP, "0.0.0.0"), pc.Published, pc.Target, cmp.Or(pc.Protocol, "tcp"))
		}
		for _, name := range sortedKeys(t.Replaced) {
			fmt.Fprintf(w, "# tp: service %s is not started: its name is the cluster's service %s\n", name, t.Replaced[name])
		}
		for _, n := range t.Notes {
			fmt.Fprintf(w, "# tp: %s\n", n)
		}
	}
	return marshalProject(w, t.Project, format)
}

// marshalProject marshals p as `docker compose config` does: interpolated
// values are escaped ($ as $$) so that the output loads to the same model.
func marshalProject(w io.Writer, p *types.Project, format string) error {
	marshal := p.MarshalYAML
	if format == "json" {
		marshal = p.MarshalJSON
	}
	b, err := marshal()
	if err != nil {
		return fmt.Errorf("compose config: %w", err)
	}
	_, err = w.Write(bytes.ReplaceAll(b, []byte{'$'}, []byte{'$', '$'}))
	return err
}

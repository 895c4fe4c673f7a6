package compose

import (
	"cmp"
	"context"
	"fmt"
	"io"

	"github.com/tp-run/tp/daemoncontainer"
)

// Config writes the project compose would run: without x-tp exactly what
// `docker compose config` prints; with it the transformed project, with
// tp's notes (the daemon container's published ports, replaced services,
// what tp changed) as comments before it.
func Config(ctx context.Context, o LoadOptions, w io.Writer) error {
	p, err := Load(ctx, o)
	if err != nil {
		return err
	}
	plan, err := ParsePlan(p)
	if err != nil {
		return err
	}
	if !plan.HasExtension() {
		b, err := p.MarshalYAML()
		if err != nil {
			return fmt.Errorf("compose config: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	t, err := Transform(p, plan, daemoncontainer.ContainerName(cmp.Or(plan.Connection.Name, daemoncontainer.DefaultName)))
	if err != nil {
		return err
	}
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
	b, err := t.Project.MarshalYAML()
	if err != nil {
		return fmt.Errorf("compose config: %w", err)
	}
	_, err = w.Write(b)
	return err
}

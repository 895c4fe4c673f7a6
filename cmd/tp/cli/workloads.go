package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/charts"
	"github.com/tp-run/tp/daemoncontainer"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// grpcMessage turns a gRPC status into a plain error with its message (the
// manager's messages already say what to do).
func grpcMessage(err error) error {
	if s, ok := status.FromError(err); ok {
		return errors.New(s.Message())
	}
	return err
}

func newLeaveCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	var connection, namespace string
	var force bool
	cmd := &cobra.Command{
		Use:   "leave NAME",
		Short: "End an intercept: its traffic goes back to the app in the cluster",
		Long: `End an intercept: its traffic goes back to the app in the cluster.

With --force, end the intercepts named NAME of whoever holds them (a teammate's
that is in your way, see tp list). That needs the right to patch the
intercepted workload, checked by the API server with your own credentials.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := docker.Dial(cmd.Context(), connection)
			if err != nil {
				return err
			}
			defer d.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			if _, err := d.RemoveIntercept(ctx, &managerv1.RemoveInterceptRequest{Name: args[0], Namespace: namespace, Force: force}); err != nil {
				return fmt.Errorf("leave %s: %w", args[0], grpcMessage(err))
			}
			fmt.Fprintf(streams.Out, "Left intercept %s\n", args[0])
			docker.removeStale(ctx, d.Docker(), d, d.Connection.Name) // the volumes of the intercept left
			return nil
		},
	}
	cmd.Flags().StringVar(&connection, "name", daemoncontainer.DefaultName, "connection name")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "namespace of the intercept (default: the connection's)")
	cmd.Flags().BoolVar(&force, "force", false, "end the intercept whoever holds it (needs patch on the workload)")
	return cmd
}

type workloadJSON struct {
	Name           string          `json:"name"`
	Namespace      string          `json:"namespace"`
	Kind           string          `json:"kind"`
	Services       []string        `json:"services"`
	AgentInstalled bool            `json:"agentInstalled"`
	OptedOut       bool            `json:"optedOut,omitempty"`
	Intercepts     []interceptJSON `json:"intercepts,omitempty"`
}

type interceptJSON struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	State         string            `json:"state"`
	Owner         string            `json:"owner"`
	OwnerLastSeen string            `json:"ownerLastSeen,omitempty"`
	Service       string            `json:"service"`
	ServicePort   int32             `json:"servicePort"`
	ContainerPort int32             `json:"containerPort"`
	LocalPort     int32             `json:"localPort"`
	Headers       map[string]string `json:"headers,omitempty"`
	PathPrefix    string            `json:"pathPrefix,omitempty"`
	// Ingest: the owner has the pod's env and mounts, but no traffic.
	Ingest bool `json:"ingest,omitempty"`
	// Mounts are the app container's mount paths (read-only ones marked
	// ":ro"), which --docker-run mounts; single files, which it cannot
	// mount, are marked " (file, not mountable)". Only the owner sees them.
	Mounts []string `json:"mounts,omitempty"`
}

func interceptView(i *managerv1.InterceptInfo) interceptJSON {
	v := interceptJSON{
		ID: i.GetId(), Name: i.GetSpec().GetName(),
		State:   strings.ToLower(strings.TrimPrefix(i.GetState().String(), "INTERCEPT_STATE_")),
		Owner:   fmt.Sprintf("%s@%s (connection %s)", i.GetOwner().GetUser(), i.GetOwner().GetHost(), i.GetOwner().GetName()),
		Service: i.GetServiceName(), ServicePort: i.GetServicePort(), ContainerPort: i.GetContainerPort(),
		LocalPort: i.GetSpec().GetLocalPort(), Headers: i.GetSpec().GetHeaders(), PathPrefix: i.GetSpec().GetPathPrefix(),
		Mounts: mountPaths(i), Ingest: i.GetSpec().GetIngest(),
	}
	if t := i.GetOwnerLastSeen(); t != nil {
		v.OwnerLastSeen = t.AsTime().Format(time.RFC3339)
	}
	return v
}

func newListCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	var connection, namespace, output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List interceptable workloads, their agents and intercepts (owner, state, last seen)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := docker.Dial(cmd.Context(), connection)
			if err != nil {
				return err
			}
			defer d.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			resp, err := d.ListWorkloads(ctx, &managerv1.ListWorkloadsRequest{Namespace: namespace})
			if err != nil {
				return fmt.Errorf("list: %w", grpcMessage(err))
			}
			var out []workloadJSON
			for _, w := range resp.GetWorkloads() {
				v := workloadJSON{Name: w.GetName(), Namespace: w.GetNamespace(), Kind: w.GetKind(), Services: w.GetServices(),
					AgentInstalled: w.GetAgentInstalled(), OptedOut: w.GetOptedOut()}
				for _, i := range w.GetIntercepts() {
					v.Intercepts = append(v.Intercepts, interceptView(i))
				}
				out = append(out, v)
			}
			sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
			return printStructured(streams.Out, output, out, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAMESPACE\tWORKLOAD\tKIND\tSERVICES\tAGENT\tINTERCEPTS")
				for _, wl := range out {
					agent := "no"
					if wl.AgentInstalled {
						agent = "yes"
					}
					if wl.OptedOut {
						agent = "opted out"
					}
					var is []string
					for _, i := range wl.Intercepts {
						desc := fmt.Sprintf("%s [%s] by %s, seen %s", i.Name, i.State, i.Owner, i.OwnerLastSeen)
						if i.Ingest {
							desc = fmt.Sprintf("%s [%s, ingest (no traffic)] by %s, seen %s", i.Name, i.State, i.Owner, i.OwnerLastSeen)
						}
						if len(i.Mounts) > 0 {
							desc += ", mounts " + strings.Join(i.Mounts, " ")
						}
						is = append(is, desc)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", wl.Namespace, wl.Name, wl.Kind, strings.Join(wl.Services, ","), agent, strings.Join(is, "; "))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().StringVar(&connection, "name", daemoncontainer.DefaultName, "connection name")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "namespace (default: the connection's)")
	outputFlag(cmd, &output)
	return cmd
}

func newUninstallCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	var (
		connection, namespace, agent string
		allAgents, everything        bool
	)
	cmd := &cobra.Command{
		Use:   "uninstall (--agent NAME | --all-agents | --everything)",
		Short: "Remove traffic-agents (restoring the workloads exactly), or everything tp installed",
		Args:  cobra.NoArgs,
	}
	kube := kubeFlags(cmd)
	cmd.Flags().StringVar(&connection, "name", daemoncontainer.DefaultName, "connection name")
	cmd.Flags().StringVar(&agent, "agent", "", "restore this workload")
	cmd.Flags().BoolVar(&allAgents, "all-agents", false, "restore every workload of the namespace")
	cmd.Flags().BoolVar(&everything, "everything", false, "restore every workload in every namespace, uninstall the traffic-manager and quit")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		n := 0
		for _, b := range []bool{agent != "", allAgents, everything} {
			if b {
				n++
			}
		}
		if n != 1 {
			return errors.New("give exactly one of --agent NAME, --all-agents, --everything")
		}
		if kube.Namespace != nil {
			namespace = *kube.Namespace
		}
		d, err := docker.Dial(cmd.Context(), connection)
		if err != nil {
			return err
		}
		defer d.Close()
		// The connection's own cluster, not the host's current context.
		connKube, err := d.Connection.KubeFlags(kube)
		if err != nil {
			return err
		}
		req := &managerv1.UninstallAgentsRequest{Namespace: namespace}
		switch {
		case agent != "":
			if req.Namespace == "" {
				req.Namespace = d.Connection.Namespace
			}
			req.Workloads = []string{agent}
		case allAgents:
			if req.Namespace == "" {
				req.Namespace = d.Connection.Namespace
			}
			req.All = true
		case everything:
			req.Namespace, req.All = "", true
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
		defer cancel()
		resp, err := d.UninstallAgents(ctx, req)
		if err != nil {
			return fmt.Errorf("uninstall: %w", grpcMessage(err))
		}
		for _, r := range resp.GetRestored() {
			fmt.Fprintf(streams.Out, "Restored %s\n", r)
		}
		if !everything {
			return nil
		}
		mns := d.Connection.ManagerNamespace
		if err := charts.Uninstall(ctx, connKube, charts.Options{Namespace: mns, Wait: true}); err != nil && !errors.Is(err, charts.ErrNotInstalled) {
			return err
		}
		fmt.Fprintf(streams.Out, "Traffic-manager uninstalled from namespace %s\n", mns)
		return daemoncontainer.Quit(ctx, d.Docker(), connection)
	}
	return cmd
}

func mountPaths(i *managerv1.InterceptInfo) []string {
	var out []string
	for _, m := range i.GetMounts() {
		p := m.GetPath()
		if m.GetReadOnly() {
			p += ":ro"
		}
		if m.GetFile() {
			p += " (file, not mountable)"
		}
		out = append(out, p)
	}
	return out
}

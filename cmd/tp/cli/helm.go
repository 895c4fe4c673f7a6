package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/release"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/charts"
	"github.com/tp-run/tp/internal/version"
)

func newHelmCommand(streams genericiooptions.IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "helm",
		Short: "Install, upgrade or uninstall the traffic-manager (the chart is embedded in tp)",
	}
	cmd.AddCommand(
		newHelmInstallCommand(streams, "install", "Install the traffic-manager", charts.Install),
		newHelmInstallCommand(streams, "upgrade", "Upgrade the traffic-manager (installs it when missing)", charts.Upgrade),
		newHelmUninstallCommand(streams),
	)
	return cmd
}

type helmFlags struct {
	valueFiles, set, setString []string
	timeout                    time.Duration
	noWait, reuseValues        bool
	image                      imageFlags
}

// imageFlags name the traffic-manager's image for clusters that cannot
// pull tp:<version> (the chart's image.registry, image.tag and
// imagePullSecrets).
type imageFlags struct {
	registry, tag string
	pullSecrets   []string
}

func (f *imageFlags) addFlags(cmd *cobra.Command, when string) {
	cmd.Flags().StringVar(&f.registry, "image-registry", "", "registry of the traffic-manager's (and agents') image"+when+", e.g. ghcr.io/me: the image is REGISTRY/tp:TAG (chart value image.registry)")
	cmd.Flags().StringVar(&f.tag, "image-tag", "", "tag of that image (default: this tp's version; chart value image.tag)")
	cmd.Flags().StringArrayVar(&f.pullSecrets, "image-pull-secret", nil, "Secret in the manager's namespace with the registry's credentials (repeatable; chart value imagePullSecrets)")
}

func (f *imageFlags) values() map[string]any {
	return charts.ImageValues(f.registry, f.tag, f.pullSecrets)
}

func newHelmInstallCommand(streams genericiooptions.IOStreams, use, short string, action func(context.Context, genericclioptions.RESTClientGetter, charts.Options) (*release.Release, error)) *cobra.Command {
	var f helmFlags
	cmd := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs}
	kube := kubeFlags(cmd)
	cmd.Flags().StringArrayVarP(&f.valueFiles, "values", "f", nil, "values file (repeatable)")
	cmd.Flags().StringArrayVar(&f.set, "set", nil, "set a value: key=value (repeatable)")
	cmd.Flags().StringArrayVar(&f.setString, "set-string", nil, "set a string value: key=value (repeatable)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 2*time.Minute, "how long to wait for the traffic-manager to be ready")
	cmd.Flags().BoolVar(&f.noWait, "no-wait", false, "do not wait for the traffic-manager to be ready")
	f.image.addFlags(cmd, "")
	if use == "upgrade" {
		cmd.Flags().BoolVar(&f.reuseValues, "reuse-values", false, "start from the installed release's values")
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		vals, err := charts.MergeValues(f.valueFiles, f.set, f.setString)
		if err != nil {
			return err
		}
		vals = chartutil.MergeTables(f.image.values(), vals) // the image flags win over --set
		ns := managerNamespace(kube.Namespace)
		rel, err := action(cmd.Context(), kube, charts.Options{
			Namespace: ns, Values: vals, Version: version.Version,
			Wait: !f.noWait, Timeout: f.timeout, ReuseValues: f.reuseValues,
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(streams.Out, "Traffic-manager %s: release %s revision %d in namespace %s (version %s)\n",
			rel.Info.Status, rel.Name, rel.Version, rel.Namespace, rel.Chart.Metadata.AppVersion)
		return nil
	}
	return cmd
}

func newHelmUninstallCommand(streams genericiooptions.IOStreams) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{Use: "uninstall", Short: "Uninstall the traffic-manager", Args: cobra.NoArgs}
	kube := kubeFlags(cmd)
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the objects to be deleted")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ns := managerNamespace(kube.Namespace)
		restored, err := restoreAllWorkloads(cmd.Context(), kube, ns)
		if err != nil {
			return err
		}
		for _, r := range restored {
			fmt.Fprintf(streams.Out, "Restored %s\n", r)
		}
		if err := charts.Uninstall(cmd.Context(), kube, charts.Options{Namespace: ns, Wait: true, Timeout: timeout}); err != nil {
			return err
		}
		fmt.Fprintf(streams.Out, "Traffic-manager uninstalled from namespace %s\n", ns)
		return nil
	}
	return cmd
}

// managerNamespace is --namespace for the helm commands, or "tp".
func managerNamespace(flag *string) string {
	if flag != nil && *flag != "" {
		return *flag
	}
	return defaultManagerNamespace
}

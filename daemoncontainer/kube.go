package daemoncontainer

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// kubeconfigPaths is the kubeconfig file(s) a connection is made with, as
// absolute paths for LabelKubeconfig: --kubeconfig, else $KUBECONFIG, else ""
// (the default ~/.kube/config).
func kubeconfigPaths(getter genericclioptions.RESTClientGetter) string {
	paths := os.Getenv("KUBECONFIG")
	if cf, ok := getter.(*genericclioptions.ConfigFlags); ok && cf.KubeConfig != nil && *cf.KubeConfig != "" {
		paths = *cf.KubeConfig
	}
	var out []string
	for _, p := range filepath.SplitList(paths) {
		if p == "" {
			continue
		}
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		out = append(out, p)
	}
	return strings.Join(out, string(filepath.ListSeparator))
}

// KubeFlags returns the kubectl-style flags of the connection's own cluster:
// the kubeconfig and context its labels record, not the host's current
// context, which may have changed since `tp connect`. user are the flags the
// user gave the command: its --kubeconfig and --namespace are kept, a
// --context other than the connection's is an error.
//
// A connection made with a $KUBECONFIG list of files sets $KUBECONFIG of this
// process to that list (kubectl's loading rules read the list only from
// there).
func (c Connection) KubeFlags(user *genericclioptions.ConfigFlags) (*genericclioptions.ConfigFlags, error) {
	if user != nil && user.Context != nil && *user.Context != "" && *user.Context != c.Context {
		return nil, fmt.Errorf("connection %q is for context %s, not %s: leave out --context, or pick the connection of that context with --name",
			c.Name, c.Context, *user.Context)
	}
	f := genericclioptions.NewConfigFlags(true)
	kubeconfig := c.Kubeconfig
	if user != nil && user.KubeConfig != nil && *user.KubeConfig != "" {
		kubeconfig = *user.KubeConfig
	}
	if user != nil && user.Namespace != nil {
		ns := *user.Namespace
		f.Namespace = &ns
	}
	if strings.ContainsRune(kubeconfig, filepath.ListSeparator) {
		if err := os.Setenv("KUBECONFIG", kubeconfig); err != nil {
			return nil, err
		}
		kubeconfig = ""
	}
	context := c.Context
	f.KubeConfig, f.Context = &kubeconfig, &context
	return f, nil
}

package main

// Placeholder imports pin the required libraries in go.mod until the
// packages that use them land; removed once every one is imported for real.
import (
	_ "github.com/compose-spec/compose-go/v2/loader"
	_ "github.com/docker/docker/client"
	_ "github.com/miekg/dns"
	_ "github.com/pkg/sftp"
	_ "github.com/spf13/cobra"
	_ "github.com/vishvananda/netlink"
	_ "go.uber.org/goleak"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sys/unix"
	_ "google.golang.org/grpc"
	_ "google.golang.org/protobuf/proto"
	_ "gvisor.dev/gvisor/pkg/tcpip/stack"
	_ "helm.sh/helm/v3/pkg/action"
	_ "k8s.io/cli-runtime/pkg/genericclioptions"
	_ "k8s.io/client-go/tools/portforward"
)

func main() {}

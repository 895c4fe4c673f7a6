package daemoncontainer

import (
	"archive/tar"
	"io"
	"testing"
)

func TestContainerName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "tp"}, {DefaultName, "tp"}, {"a", "tp-a"}, {"dev-2", "tp-dev-2"},
	} {
		if got := ContainerName(tc.in); got != tc.want {
			t.Errorf("ContainerName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestLabelsRoundTrip: what create writes into labels is what Find reads back.
func TestLabelsRoundTrip(t *testing.T) {
	labels := map[string]string{
		LabelConnection: "a", LabelContext: "ctx", LabelNamespace: "ns",
		LabelManagerNamespace: "tp", LabelVersion: "v1", LabelKubeauthPID: "42",
	}
	got := connectionFrom("id1", "/tp-a", labels, "running")
	want := Connection{Name: "a", ContainerName: "tp-a", ContainerID: "id1", Running: true, State: "running",
		Context: "ctx", Namespace: "ns", ManagerNamespace: "tp", Version: "v1", KubeauthPID: "42"}
	if got != want {
		t.Errorf("connectionFrom = %+v, want %+v", got, want)
	}
	if c := connectionFrom("id", "tp", labels, "exited"); c.Running {
		t.Errorf("an exited container reads as running")
	}
}

func TestTarFile(t *testing.T) {
	r, err := tarFile(KubeconfigPath, []byte("apiVersion: v1\n"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(r)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == "etc/tp/kubeconfig" {
			b, _ := io.ReadAll(tr)
			if string(b) != "apiVersion: v1\n" || h.Mode != 0o600 {
				t.Errorf("kubeconfig entry: %q mode %o, want the content with mode 600", b, h.Mode)
			}
		}
	}
	if len(names) != 2 || names[0] != "etc/tp/" || names[1] != "etc/tp/kubeconfig" {
		t.Errorf("archive holds %q, want [etc/tp/ etc/tp/kubeconfig]", names)
	}
}

package volumes

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"regexp"
	"strings"
	"testing"
)

func TestPluginName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"v1.2.3", "tp-volumes:v1.2.3"}, {"", "tp-volumes:dev"}, {"v1-3-gabc+dirty", "tp-volumes:v1-3-gabc-dirty"},
	} {
		if got := PluginName(tc.in); got != tc.want {
			t.Errorf("PluginName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

var validVolumeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

func TestVolumeName(t *testing.T) {
	a, _ := volumeName("default", "/var/run/secrets/kubernetes.io/serviceaccount")
	b, _ := volumeName("default", "/var/run/secrets/kubernetes.io/serviceaccount")
	if a == b {
		t.Errorf("two volume names for the same path are both %q, want new ones", a)
	}
	if !strings.HasPrefix(a, "tp-default-serviceaccount-") {
		t.Errorf("volume name %q, want tp-default-serviceaccount-<random>", a)
	}
	for _, tc := range [][2]string{{"a b/c", "/"}, {"", "/x y"}, {strings.Repeat("x", 100), "/.."}} {
		n, _ := volumeName(tc[0], tc[1])
		if !validVolumeName.MatchString(n) || len(n) > 80 {
			t.Errorf("volumeName(%q, %q) = %q, not a valid volume name", tc[0], tc[1], n)
		}
	}
}

// TestPluginTar: what PluginCreate gets: config.json as the contract wants
// it, and the binary at rootfs/tp.
func TestPluginTar(t *testing.T) {
	config, err := pluginConfig("sha256:1234")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writePluginTar(&buf, config, 5, strings.NewReader("ELF!!")); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
		if h.Name == "rootfs/tp" && h.Mode != 0o755 {
			t.Errorf("rootfs/tp mode %o, want 755", h.Mode)
		}
	}
	if string(files["rootfs/tp"]) != "ELF!!" {
		t.Errorf("rootfs/tp = %q", files["rootfs/tp"])
	}
	for _, d := range []string{"rootfs/run/docker/plugins/", "rootfs/mnt/volumes/", "rootfs/var/lib/tp-volumes/"} {
		if _, ok := files[d]; !ok {
			t.Errorf("no directory %s in the rootfs", d)
		}
	}
	var c struct {
		Entrypoint []string
		Interface  struct {
			Types  []string
			Socket string
		}
		Network         struct{ Type string }
		PropagatedMount string
		Linux           struct {
			Capabilities []string
			Devices      []struct{ Path string }
		}
		Env []struct{ Name, Value string }
	}
	if err := json.Unmarshal(files["config.json"], &c); err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Entrypoint, " ") != "/tp volumes plugin" || c.Interface.Socket != "tp.sock" ||
		strings.Join(c.Interface.Types, ",") != "docker.volumedriver/1.0" || c.Network.Type != "host" ||
		c.PropagatedMount != "/mnt/volumes" || strings.Join(c.Linux.Capabilities, ",") != "CAP_SYS_ADMIN" ||
		len(c.Linux.Devices) != 1 || c.Linux.Devices[0].Path != "/dev/fuse" {
		t.Errorf("config.json = %s", files["config.json"])
	}
}

package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestState: what one start saves, the next start reads; Forget leaves
// nothing to take up; a zero State keeps nothing.
func TestState(t *testing.T) {
	s := State{Dir: filepath.Join(t.TempDir(), "tp")}
	if _, err := s.Kubeconfig(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("first start: Kubeconfig err %v, want ErrNotExist", err)
	}
	if id, err := s.session(); err != nil || id != "" {
		t.Fatalf("first start: session %q, %v; want none", id, err)
	}
	if err := s.SaveKubeconfig([]byte("kc")); err != nil {
		t.Fatal(err)
	}
	if err := s.saveSession("sess-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.saveMounts(savedMounts{Owned: map[string]string{"ns/a": "id-a"}, Tokens: map[string]string{"id-a": "tok"}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{kubeconfigFile, sessionFile, mountsFile} {
		fi, err := os.Stat(filepath.Join(s.Dir, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", name, fi.Mode(), err)
		}
	}
	if fi, err := os.Stat(s.Dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v, %v; want 0700", fi.Mode(), err)
	}
	kc, err := s.Kubeconfig()
	id, _ := s.session()
	m, _ := s.mounts()
	if err != nil || string(kc) != "kc" || id != "sess-1" || m.Tokens["id-a"] != "tok" || m.Owned["ns/a"] != "id-a" {
		t.Errorf("next start reads kubeconfig %q (%v), session %q, mounts %+v", kc, err, id, m)
	}
	if err := s.Forget(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Kubeconfig(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Forget: Kubeconfig err %v, want ErrNotExist", err)
	}
	if id, _ := s.session(); id != "" {
		t.Errorf("after Forget: session %q, want none", id)
	}

	var none State
	if err := none.SaveKubeconfig([]byte("kc")); err != nil {
		t.Fatal(err)
	}
	if _, err := none.Kubeconfig(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("zero State kept a kubeconfig (err %v)", err)
	}
}

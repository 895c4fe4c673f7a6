package intercept

import (
	"errors"
	"slices"
	"strings"
	"testing"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

func TestPickMounts(t *testing.T) {
	mounts := []*managerv1.Mount{
		{Path: "/etc/app/config", ReadOnly: true},
		{Path: "/etc/app/config.yaml", ReadOnly: true, File: true},
		{Path: "/var"},
	}
	for _, tc := range []struct {
		name        string
		o           MountOptions
		wantPicked  []Volume
		wantSkipped []string
		wantErr     error  // errors.Is
		wantErrText string // in the message, for the user
	}{
		{name: "all but files", o: MountOptions{},
			wantPicked:  []Volume{{Path: "/etc/app/config", ReadOnly: true}, {Path: "/var"}},
			wantSkipped: []string{"/etc/app/config.yaml"}},
		{name: "read-only", o: MountOptions{ReadOnly: true},
			wantPicked:  []Volume{{Path: "/etc/app/config", ReadOnly: true}, {Path: "/var", ReadOnly: true}},
			wantSkipped: []string{"/etc/app/config.yaml"}},
		{name: "disabled", o: MountOptions{Disabled: true}},
		{name: "one directory", o: MountOptions{Paths: []string{"/var"}}, wantPicked: []Volume{{Path: "/var"}}},
		{name: "a file by path", o: MountOptions{Paths: []string{"/var", "/etc/app/config.yaml"}},
			wantErr: ErrFileMount, wantErrText: "--mount-path /etc/app/config.yaml: the mount is a single file"},
		{name: "no such mount", o: MountOptions{Paths: []string{"/nope"}},
			wantErrText: "there are: /etc/app/config, /etc/app/config.yaml, /var"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			picked, skipped, err := PickMounts(mounts, tc.o)
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err %v, want %v", err, tc.wantErr)
			}
			if tc.wantErrText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrText) {
					t.Errorf("err %v, want one that says %q", err, tc.wantErrText)
				}
				return
			}
			if err != nil {
				t.Fatalf("err %v, want none", err)
			}
			if !slices.Equal(picked, tc.wantPicked) {
				t.Errorf("picked %v, want %v", picked, tc.wantPicked)
			}
			if !slices.Equal(skipped, tc.wantSkipped) {
				t.Errorf("skipped %v, want %v", skipped, tc.wantSkipped)
			}
		})
	}
}

func TestSkippedNoteNamesThePath(t *testing.T) {
	if got := SkippedNote("/etc/app/config.yaml"); !strings.HasPrefix(got, "Not mounting /etc/app/config.yaml: it is a single file") || strings.Contains(got, "\n") {
		t.Errorf("got %q, want one line that names the path", got)
	}
}

package plugin

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
)

// The Docker plugin protocol: JSON over HTTP POSTs on the plugin's socket.
const contentType = "application/vnd.docker.plugins.v1+json"

type request struct {
	Name string            `json:"Name"`
	ID   string            `json:"ID"`
	Opts map[string]string `json:"Opts"`
}

// Handler serves Plugin.Activate and the VolumeDriver API.
func (d *Driver) Handler() http.Handler {
	mux := http.NewServeMux()
	handle := func(path string, f func(ctx context.Context, r request) any) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, hr *http.Request) {
			var r request
			body, _ := io.ReadAll(io.LimitReader(hr.Body, 1<<20))
			if len(body) > 0 {
				if err := json.Unmarshal(body, &r); err != nil {
					reply(w, errReply{Err: "bad request: " + err.Error()})
					return
				}
			}
			reply(w, f(hr.Context(), r))
		})
	}
	handle("/Plugin.Activate", func(context.Context, request) any {
		return map[string][]string{"Implements": {"VolumeDriver"}}
	})
	handle("/VolumeDriver.Create", func(_ context.Context, r request) any {
		return errOf(d.Create(r.Name, r.Opts))
	})
	handle("/VolumeDriver.Remove", func(_ context.Context, r request) any {
		return errOf(d.Remove(r.Name))
	})
	handle("/VolumeDriver.Mount", func(ctx context.Context, r request) any {
		dir, err := d.Mount(context.WithoutCancel(ctx), r.Name, r.ID)
		return mountReply{Mountpoint: dir, Err: errString(err)}
	})
	handle("/VolumeDriver.Unmount", func(_ context.Context, r request) any {
		return errOf(d.Unmount(r.Name, r.ID))
	})
	handle("/VolumeDriver.Path", func(_ context.Context, r request) any {
		dir, err := d.Path(r.Name)
		return mountReply{Mountpoint: dir, Err: errString(err)}
	})
	handle("/VolumeDriver.Get", func(_ context.Context, r request) any {
		i, err := d.Get(r.Name)
		if err != nil {
			return errOf(err)
		}
		return struct {
			Volume Info `json:"Volume"`
			Err    string
		}{Volume: i}
	})
	handle("/VolumeDriver.List", func(context.Context, request) any {
		return struct {
			Volumes []Info `json:"Volumes"`
			Err     string
		}{Volumes: d.List()}
	})
	handle("/VolumeDriver.Capabilities", func(context.Context, request) any {
		return map[string]map[string]string{"Capabilities": {"Scope": "local"}}
	})
	return mux
}

type errReply struct {
	Err string `json:"Err"`
}

type mountReply struct {
	Mountpoint string `json:"Mountpoint"`
	Err        string `json:"Err"`
}

func errOf(err error) errReply { return errReply{Err: errString(err)} }

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", contentType)
	_ = json.NewEncoder(w).Encode(v)
}

//go:build linux

package daemon

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// sessionManager answers ResumeSession and ArriveAsClient; the other RPCs
// are not called.
type sessionManager struct {
	managerv1.ManagerClient
	resumeErr       error
	resumed, arrive int
}

func (m *sessionManager) ResumeSession(_ context.Context, req *managerv1.ResumeSessionRequest, _ ...grpc.CallOption) (*managerv1.SessionInfo, error) {
	m.resumed++
	if m.resumeErr != nil {
		return nil, m.resumeErr
	}
	return &managerv1.SessionInfo{SessionId: req.GetSessionId()}, nil
}

func (m *sessionManager) ArriveAsClient(context.Context, *managerv1.ClientInfo, ...grpc.CallOption) (*managerv1.SessionInfo, error) {
	m.arrive++
	return &managerv1.SessionInfo{SessionId: "new"}, nil
}

func TestTakeSession(t *testing.T) {
	for _, tt := range []struct {
		name        string
		prev        *managerv1.SessionInfo
		saved       string // State's session of the container's previous start
		resumeErr   error
		wantID      string
		wantResumed bool
		wantErr     codes.Code
	}{
		{"first connect arrives", nil, "", nil, "new", false, codes.OK},
		{"reconnect resumes", &managerv1.SessionInfo{SessionId: "old"}, "", nil, "old", true, codes.OK},
		{"a session the manager lost: arrive anew", &managerv1.SessionInfo{SessionId: "old"}, "", status.Error(codes.NotFound, "unknown"), "new", false, codes.OK},
		{"the manager fails: retry, do not arrive", &managerv1.SessionInfo{SessionId: "old"}, "", status.Error(codes.Unavailable, "down"), "", false, codes.Unavailable},
		{"a restarted container resumes its saved session", nil, "saved", nil, "saved", true, codes.OK},
		{"a saved session the manager lost: arrive anew", nil, "saved", status.Error(codes.NotFound, "unknown"), "new", false, codes.OK},
		{"this process's session wins over the saved one", &managerv1.SessionInfo{SessionId: "old"}, "saved", nil, "old", true, codes.OK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &connector{log: slog.New(slog.NewTextHandler(io.Discard, nil)), session: tt.prev, savedSession: tt.saved}
			m := &sessionManager{resumeErr: tt.resumeErr}
			sess, resumed, err := c.takeSession(context.Background(), m, &managerv1.ClientInfo{})
			if got := status.Code(err); got != tt.wantErr {
				t.Fatalf("err %v, want code %v", err, tt.wantErr)
			}
			if sess.GetSessionId() != tt.wantID || resumed != tt.wantResumed {
				t.Errorf("got session %q resumed %v, want %q %v", sess.GetSessionId(), resumed, tt.wantID, tt.wantResumed)
			}
			if tt.wantErr != codes.OK && m.arrive != 0 {
				t.Errorf("arrived %d times after a failed resume, want none", m.arrive)
			}
		})
	}
}

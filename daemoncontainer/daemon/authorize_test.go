package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/internal/kube"
)

func unseenErr(t *testing.T) error {
	t.Helper()
	st, err := status.New(codes.PermissionDenied, "webhook did not see it").
		WithDetails(&errdetails.ErrorInfo{Domain: kube.ErrorDomain, Reason: kube.ReasonAuthorizationUnseen})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestWithAuthorizationWritesAgainWhileUnseen(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	authorized, calls := 0, 0
	got, err := withAuthorization(context.Background(), log, "intercept",
		func() error { authorized++; return nil },
		func() (string, error) {
			calls++
			if calls < 3 {
				return "", unseenErr(t)
			}
			return "ok", nil
		})
	if err != nil || got != "ok" {
		t.Fatalf("got %q, %v; want ok", got, err)
	}
	if authorized != 3 || calls != 3 {
		t.Errorf("authorized %d times, called %d times; want 3 and 3 (a fresh annotation before each call)", authorized, calls)
	}
}

func TestWithAuthorizationOtherErrorsEndAtOnce(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for name, callErr := range map[string]error{
		"another session":       status.Error(codes.PermissionDenied, "names another session"),
		"other detail":          mustDetail(t, &errdetails.ErrorInfo{Domain: "example.com", Reason: kube.ReasonAuthorizationUnseen}),
		"not a status":          errors.New("plain"),
		"unseen without detail": status.Error(codes.PermissionDenied, "the traffic-manager's webhook did not see"),
	} {
		calls := 0
		_, err := withAuthorization(context.Background(), log, "intercept",
			func() error { return nil },
			func() (int, error) { calls++; return 0, callErr })
		if !errors.Is(err, callErr) && status.Code(err) != status.Code(callErr) || calls != 1 {
			t.Errorf("%s: err %v after %d calls; want the call's error after 1", name, err, calls)
		}
	}
	authErr := errors.New("forbidden")
	calls := 0
	_, err := withAuthorization(context.Background(), log, "intercept",
		func() error { return authErr },
		func() (int, error) { calls++; return 0, nil })
	if !errors.Is(err, authErr) || calls != 0 {
		t.Errorf("failed authorize: err %v, %d calls; want the authorize error and no call", err, calls)
	}
}

func TestWithAuthorizationEndsWithContext(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	_, err := withAuthorization(ctx, log, "intercept",
		func() error { return nil },
		func() (int, error) { calls++; cancel(); return 0, unseenErr(t) })
	if !authorizationUnseen(err) || calls != 1 {
		t.Errorf("cancelled: err %v after %d calls; want the unseen error after 1", err, calls)
	}
}

func mustDetail(t *testing.T, d *errdetails.ErrorInfo) error {
	t.Helper()
	st, err := status.New(codes.PermissionDenied, "x").WithDetails(d)
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

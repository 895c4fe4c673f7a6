package daemon

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/internal/kube"
)

// authorizeRetryFor bounds how long the daemon writes the authorize
// annotation again while the traffic-manager says its webhook did not see it.
// Right after an install or a restart of the manager, the API server may
// not reach the new pod's webhook for a few seconds (its endpoint not yet
// published, its certificate not yet in the webhook configuration), and the
// webhook's failure policy lets the annotation's write pass unseen.
const authorizeRetryFor = 15 * time.Second

// withAuthorization runs authorize (write the annotation with the user's
// credentials) and then call (the manager's call that checks it), and runs
// both again, after a growing pause, while call fails because the webhook did
// not see the annotation (authorizationUnseen), until authorizeRetryFor has
// passed or ctx ends. Any other error ends it at once.
func withAuthorization[T any](ctx context.Context, log *slog.Logger, what string, authorize func() error, call func() (T, error)) (T, error) {
	deadline := time.Now().Add(authorizeRetryFor)
	pause := 200 * time.Millisecond
	for {
		var zero T
		if err := authorize(); err != nil {
			return zero, err
		}
		res, err := call()
		if err == nil || !authorizationUnseen(err) || time.Now().Add(pause).After(deadline) {
			return res, err
		}
		log.Info("the traffic-manager's webhook did not see the authorization (a manager just installed or restarted?); writing it again",
			"what", what, "in", pause)
		select {
		case <-ctx.Done():
			return zero, err
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// authorizationUnseen reports whether err is the traffic-manager's "its
// webhook did not see the authorize annotation" (kube.ReasonAuthorizationUnseen).
func authorizationUnseen(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == kube.ErrorDomain && info.GetReason() == kube.ReasonAuthorizationUnseen {
			return true
		}
	}
	return false
}

package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
)

// ErrUnknownSession is what an Authorizer returns (wrapped) for a session it
// does not know. It crosses gRPC as codes.Unauthenticated, and Dial returns
// an error wrapping it.
var ErrUnknownSession = errors.New("unknown session")

// ErrIncompatibleVersion is wrapped by every *VersionError.
var ErrIncompatibleVersion = errors.New("incompatible tunnel protocol version")

// VersionError is returned when client and server speak different tunnel
// protocol versions.
type VersionError struct {
	Client, Server uint32
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("tunnel protocol version mismatch: client speaks v%d, server speaks v%d; "+
		"upgrade the older side so that both run the same tp release", e.Client, e.Server)
}

func (e *VersionError) Unwrap() error { return ErrIncompatibleVersion }

// RemoteError is an error the other end of a flow reported: why it could not
// reach the destination, or why it aborted the flow. It unwraps to the
// matching native error, so errors.Is(err, syscall.ECONNREFUSED) holds for a
// refused dial, syscall.EHOSTUNREACH for an unreachable destination,
// os.ErrDeadlineExceeded (and context.DeadlineExceeded) for a timeout,
// syscall.ECONNRESET for a reset and syscall.EACCES for a destination the
// server's policy does not allow (the message says which setting allows it).
type RemoteError struct {
	Code    tunnelv1.ErrorCode
	Message string
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return "remote: " + e.native().Error()
	}
	return "remote: " + e.Message
}

func (e *RemoteError) Unwrap() error { return e.native() }

// Is makes a remote timeout match context.DeadlineExceeded as well, like a
// local dial timeout does.
func (e *RemoteError) Is(target error) bool {
	return e.Code == tunnelv1.ErrorCode_ERROR_CODE_TIMEOUT && target == context.DeadlineExceeded
}

// Timeout implements net.Error.
func (e *RemoteError) Timeout() bool { return e.Code == tunnelv1.ErrorCode_ERROR_CODE_TIMEOUT }

// Temporary implements net.Error.
func (e *RemoteError) Temporary() bool { return e.Timeout() }

var errOther = errors.New("tunnel flow failed")

func (e *RemoteError) native() error {
	switch e.Code {
	case tunnelv1.ErrorCode_ERROR_CODE_REFUSED:
		return syscall.ECONNREFUSED
	case tunnelv1.ErrorCode_ERROR_CODE_UNREACHABLE:
		return syscall.EHOSTUNREACH
	case tunnelv1.ErrorCode_ERROR_CODE_TIMEOUT:
		return os.ErrDeadlineExceeded
	case tunnelv1.ErrorCode_ERROR_CODE_RESET:
		return syscall.ECONNRESET
	case tunnelv1.ErrorCode_ERROR_CODE_DENIED:
		return syscall.EACCES
	default:
		return errOther
	}
}

// errorCode classifies a local error for an Error frame.
func errorCode(err error) tunnelv1.ErrorCode {
	var re *RemoteError
	switch {
	case errors.As(err, &re):
		return re.Code
	case errors.Is(err, syscall.ECONNREFUSED):
		return tunnelv1.ErrorCode_ERROR_CODE_REFUSED
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		// A DialFunc's policy refusal, or a local firewall's.
		return tunnelv1.ErrorCode_ERROR_CODE_DENIED
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EHOSTDOWN), errors.Is(err, syscall.ENETDOWN):
		return tunnelv1.ErrorCode_ERROR_CODE_UNREACHABLE
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, context.Canceled):
		return tunnelv1.ErrorCode_ERROR_CODE_RESET
	case isTimeout(err):
		return tunnelv1.ErrorCode_ERROR_CODE_TIMEOUT
	default:
		return tunnelv1.ErrorCode_ERROR_CODE_OTHER
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ETIMEDOUT) || (errors.As(err, &ne) && ne.Timeout())
}

// timeoutError is a local timeout. Like net's own, it matches both
// os.ErrDeadlineExceeded and context.DeadlineExceeded.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }
func (timeoutError) Is(target error) bool {
	return target == os.ErrDeadlineExceeded || target == context.DeadlineExceeded
}

// contextError maps a context's error to the errors net returns for it.
func contextError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return timeoutError{}
	}
	return err
}

// toStatus converts an error to a gRPC status error (containerd's
// errgrpc.ToGRPC): errors this package knows get their code and details.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var ve *VersionError
	switch {
	case errors.As(err, &ve):
		st := status.New(codes.FailedPrecondition, err.Error())
		if withDetail, derr := st.WithDetails(&tunnelv1.VersionMismatch{
			ClientVersion: ve.Client, ServerVersion: ve.Server,
		}); derr == nil {
			st = withDetail
		}
		return st.Err()
	case errors.Is(err, ErrUnknownSession):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	default:
		return status.Error(codes.Unknown, err.Error())
	}
}

// statusError is a gRPC status converted back to a native error: errors.Is
// finds the native error and status.FromError the original status.
type statusError struct {
	st     *status.Status
	native error
}

func (e *statusError) Error() string              { return e.native.Error() }
func (e *statusError) Unwrap() error              { return e.native }
func (e *statusError) GRPCStatus() *status.Status { return e.st }

// fromStatus converts a gRPC status error back to a native error
// (containerd's errgrpc.ToNative). Errors without a status pass unchanged.
func fromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.OK {
		return err
	}
	var native error
	switch st.Code() {
	case codes.Unauthenticated:
		native = fmt.Errorf("%s: %w", st.Message(), ErrUnknownSession)
	case codes.FailedPrecondition:
		for _, d := range st.Details() {
			if vm, ok := d.(*tunnelv1.VersionMismatch); ok {
				native = &VersionError{Client: vm.GetClientVersion(), Server: vm.GetServerVersion()}
			}
		}
	case codes.Unimplemented:
		// A peer without the Tunnel service (or without this method).
		native = fmt.Errorf("%s: the peer does not serve tunnel protocol v%d: %w",
			st.Message(), ProtocolVersion, ErrIncompatibleVersion)
	case codes.Canceled:
		native = fmt.Errorf("%s: %w", st.Message(), context.Canceled)
	case codes.DeadlineExceeded:
		native = fmt.Errorf("%s: %w", st.Message(), timeoutError{})
	}
	if native == nil {
		return err
	}
	return &statusError{st: st, native: native}
}

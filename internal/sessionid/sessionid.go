// Package sessionid holds what the traffic-manager and its clients agree on
// about session identifiers. A session id is a bearer secret: whoever holds
// it acts as the session (heartbeats, intercepts, the intercepted traffic).
// The manager hands it only to the client that arrived; everywhere else (tp
// list, tp status of other users, annotations that anyone who can read a
// workload sees, logs) a session is named by its public id, a hash of the
// secret that cannot be turned back into it.
package sessionid

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
)

// Public is the public name of the session whose secret id is secret.
func Public(secret string) string {
	if secret == "" {
		return ""
	}
	sum := sha256.Sum256([]byte("tp session " + secret))
	return hex.EncodeToString(sum[:8])
}

// Verifier is what the manager keeps in the cluster to recognize the session
// whose secret id is secret when its client resumes it: a full-length hash
// over a prefix of its own, so that it is neither the secret nor its public
// id, and neither can be derived from the other.
func Verifier(secret string) string {
	if secret == "" {
		return ""
	}
	sum := sha256.Sum256([]byte("tp session verifier " + secret))
	return hex.EncodeToString(sum[:])
}

// Verify reports whether secret is the secret id of the session with the
// given verifier, in constant time.
func Verify(secret, verifier string) bool {
	if secret == "" || verifier == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(Verifier(secret)), []byte(verifier)) == 1
}

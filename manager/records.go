package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// Session records: the manager keeps every client session and its
// intercepts in one Secret per session in its own namespace, so that a new
// manager pod takes them up (docs/manager.md, "Session records"). A record
// holds the session's public id and the verifier of its secret id, never the
// secret: whoever reads the Secret can neither act as the session nor learn
// its id. Agent sessions are not recorded: agents arrive again.
const (
	// recordLabel and recordComponent mark the Secrets of session records.
	recordLabel     = "app.kubernetes.io/component"
	recordComponent = "session-record"
	// recordKey is the Secret's data key of the record (JSON).
	recordKey = "record.json"
	// recordPrefix starts a record's Secret name; the public id follows.
	recordPrefix = "tp-session-"
	// recordVersion is the format of the records this manager writes and reads.
	recordVersion = 1
)

// recordJSON is a session record as stored.
type recordJSON struct {
	Version    int             `json:"version"`
	Session    sessionJSON     `json:"session"`
	Intercepts []interceptJSON `json:"intercepts"`
}

type sessionJSON struct {
	ID       string          `json:"id"`
	Verifier string          `json:"verifier"`
	Client   json.RawMessage `json:"client"` // managerv1.ClientInfo, protojson
	Arrived  time.Time       `json:"arrived"`
}

type interceptJSON struct {
	ID              string          `json:"id"`
	User            string          `json:"user"`
	Spec            json.RawMessage `json:"spec"` // managerv1.InterceptSpec, protojson
	Workload        workloadRef     `json:"workload"`
	Container       string          `json:"container"`
	ServiceName     string          `json:"serviceName"`
	ServicePortName string          `json:"servicePortName"`
	ServicePort     int32           `json:"servicePort"`
	ContainerPort   int32           `json:"containerPort"`
	Created         time.Time       `json:"created"`
}

// record is one session's record: the session and its intercepts by id, and
// the Secret it was last written to (for its resourceVersion).
type record struct {
	session    session
	intercepts map[string]*intercept
	secret     *corev1.Secret
}

// errSessionEnded says an intercept was put for a session without a record.
var errSessionEnded = errors.New("the session ended")

// sessionRecords keeps the records in Secrets and a copy in memory, which
// answers List. It is the registry's interceptStore.
type sessionRecords struct {
	kube      kubernetes.Interface
	namespace string

	mu      sync.Mutex
	byOwner map[string]*record // by the session's public id
}

func newSessionRecords(kube kubernetes.Interface, namespace string) *sessionRecords {
	return &sessionRecords{kube: kube, namespace: namespace, byOwner: map[string]*record{}}
}

// load reads the records a previous manager wrote. A record it cannot read
// (another format) is left alone and reported in skipped.
func (r *sessionRecords) load(ctx context.Context) (sessions []session, skipped []error, err error) {
	list, err := r.kube.CoreV1().Secrets(r.namespace).List(ctx, metav1.ListOptions{LabelSelector: recordLabel + "=" + recordComponent})
	if err != nil {
		return nil, nil, fmt.Errorf("list the session records (Secrets labelled %s=%s in namespace %s): %w; "+
			"the manager needs list on secrets there: run `tp helm upgrade`", recordLabel, recordComponent, r.namespace, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range list.Items {
		sec := &list.Items[i]
		rec, err := decodeRecord(sec)
		if err != nil {
			skipped = append(skipped, fmt.Errorf("session record %s: %w", sec.Name, err))
			continue
		}
		r.byOwner[rec.session.id] = rec
		sessions = append(sessions, rec.session)
	}
	return sessions, skipped, nil
}

// reload reads the record of the session with public id id again: during a
// rolling update the previous manager pod serves on for a while after this
// one loaded the records, and may have recorded a session or intercept
// since. False when the cluster has no such record.
func (r *sessionRecords) reload(ctx context.Context, id string) (session, bool, error) {
	sec, err := r.kube.CoreV1().Secrets(r.namespace).Get(ctx, recordPrefix+id, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return session{}, false, nil
	} else if err != nil {
		return session{}, false, fmt.Errorf("read the session record %s%s in namespace %s: %w", recordPrefix, id, r.namespace, err)
	}
	rec, err := decodeRecord(sec)
	if err != nil {
		return session{}, false, fmt.Errorf("session record %s: %w", sec.Name, err)
	}
	r.mu.Lock()
	r.byOwner[id] = rec
	r.mu.Unlock()
	return rec.session, true, nil
}

// addSession writes the record of a new client session.
func (r *sessionRecords) addSession(ctx context.Context, s session) error {
	rec := &record{session: s, intercepts: map[string]*intercept{}}
	sec, err := encodeRecord(rec)
	if err != nil {
		return err
	}
	sec.Name, sec.Namespace = recordPrefix+s.id, r.namespace
	got, err := r.kube.CoreV1().Secrets(r.namespace).Create(ctx, sec, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create the session record %s in namespace %s: %w", sec.Name, r.namespace, err)
	}
	rec.secret = got
	r.mu.Lock()
	r.byOwner[s.id] = rec
	r.mu.Unlock()
	return nil
}

// removeSession deletes the record of the session with public id id.
func (r *sessionRecords) removeSession(ctx context.Context, id string) error {
	r.mu.Lock()
	delete(r.byOwner, id)
	r.mu.Unlock()
	err := r.kube.CoreV1().Secrets(r.namespace).Delete(ctx, recordPrefix+id, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the session record %s%s in namespace %s: %w", recordPrefix, id, r.namespace, err)
	}
	return nil
}

// Put implements interceptStore: it writes ic into its owner's record.
func (r *sessionRecords) Put(ctx context.Context, ic *intercept) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok := r.byOwner[ic.Owner]
	if !ok {
		return fmt.Errorf("intercept %s of session %s: %w", ic.Spec.GetName(), ic.Owner, errSessionEnded)
	}
	next := maps.Clone(rec.intercepts)
	next[ic.ID] = ic
	return r.write(ctx, rec, next)
}

// Delete implements interceptStore.
func (r *sessionRecords) Delete(ctx context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.byOwner {
		if _, ok := rec.intercepts[id]; ok {
			next := maps.Clone(rec.intercepts)
			delete(next, id)
			return r.write(ctx, rec, next)
		}
	}
	return nil
}

// List implements interceptStore.
func (r *sessionRecords) List(context.Context) ([]*intercept, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*intercept
	for _, rec := range r.byOwner {
		for _, ic := range rec.intercepts {
			out = append(out, ic)
		}
	}
	return out, nil
}

// write updates rec's Secret to hold intercepts, then rec; r.mu is held.
// A conflict (someone else changed the Secret) is resolved once by writing
// over the Secret as it is now: the manager is the records' only writer.
func (r *sessionRecords) write(ctx context.Context, rec *record, intercepts map[string]*intercept) error {
	next := &record{session: rec.session, intercepts: intercepts}
	sec, err := encodeRecord(next)
	if err != nil {
		return err
	}
	secrets := r.kube.CoreV1().Secrets(r.namespace)
	sec.ObjectMeta = *rec.secret.ObjectMeta.DeepCopy()
	got, err := secrets.Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		var now *corev1.Secret
		if now, err = secrets.Get(ctx, sec.Name, metav1.GetOptions{}); err == nil {
			sec.ObjectMeta = now.ObjectMeta
			got, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("update the session record %s in namespace %s: %w", sec.Name, r.namespace, err)
	}
	rec.intercepts, rec.secret = intercepts, got
	return nil
}

func encodeRecord(rec *record) (*corev1.Secret, error) {
	client, err := protojson.Marshal(rec.session.client)
	if err != nil {
		return nil, fmt.Errorf("session record: %w", err)
	}
	out := recordJSON{Version: recordVersion, Session: sessionJSON{
		ID: rec.session.id, Verifier: rec.session.verifier, Client: client, Arrived: rec.session.arrived.UTC(),
	}, Intercepts: []interceptJSON{}}
	ics := make([]*intercept, 0, len(rec.intercepts))
	for _, ic := range rec.intercepts {
		ics = append(ics, ic)
	}
	sortIntercepts(ics)
	for _, ic := range ics {
		spec, err := protojson.Marshal(ic.Spec)
		if err != nil {
			return nil, fmt.Errorf("session record: intercept %s: %w", ic.ID, err)
		}
		out.Intercepts = append(out.Intercepts, interceptJSON{
			ID: ic.ID, User: ic.User, Spec: spec, Workload: ic.Workload, Container: ic.Container,
			ServiceName: ic.ServiceName, ServicePortName: ic.ServicePortName, ServicePort: ic.ServicePort,
			ContainerPort: ic.ContainerPort, Created: ic.Created.UTC(),
		})
	}
	data, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("session record: %w", err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{
			recordLabel:                 recordComponent,
			"app.kubernetes.io/part-of": "tp",
			"app.kubernetes.io/name":    "traffic-manager",
			"tp.run/session":            rec.session.id,
		}},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{recordKey: data},
	}, nil
}

func decodeRecord(sec *corev1.Secret) (*record, error) {
	var in recordJSON
	if err := json.Unmarshal(sec.Data[recordKey], &in); err != nil {
		return nil, fmt.Errorf("%s: %w", recordKey, err)
	}
	if in.Version != recordVersion {
		return nil, fmt.Errorf("format version %d, this manager reads %d", in.Version, recordVersion)
	}
	if in.Session.ID == "" || in.Session.Verifier == "" {
		return nil, errors.New("no session id or verifier")
	}
	if sec.Name != recordPrefix+in.Session.ID {
		return nil, fmt.Errorf("holds session %s, not the one its name says", in.Session.ID)
	}
	client := &managerv1.ClientInfo{}
	if err := protojson.Unmarshal(in.Session.Client, client); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	rec := &record{
		session: session{
			id: in.Session.ID, verifier: in.Session.Verifier, kind: clientSession,
			client: client, arrived: in.Session.Arrived,
		},
		intercepts: map[string]*intercept{},
		secret:     sec.DeepCopy(),
	}
	for _, j := range in.Intercepts {
		spec := &managerv1.InterceptSpec{}
		if err := protojson.Unmarshal(j.Spec, spec); err != nil {
			return nil, fmt.Errorf("intercept %s: spec: %w", j.ID, err)
		}
		rec.intercepts[j.ID] = &intercept{
			ID: j.ID, Owner: in.Session.ID, User: j.User, Spec: spec, Workload: j.Workload, Container: j.Container,
			ServiceName: j.ServiceName, ServicePortName: j.ServicePortName, ServicePort: j.ServicePort,
			ContainerPort: j.ContainerPort, Created: j.Created,
		}
	}
	return rec, nil
}

package driveropts

import "testing"

func TestOptionsRoundTrip(t *testing.T) {
	o := Options{Addr: "172.17.0.3:9022", Token: "00ff", Path: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}
	got, err := Parse(o.Map())
	if err != nil || got != o {
		t.Errorf("Parse(Map()) = %+v, %v; want %+v", got, err, o)
	}
}

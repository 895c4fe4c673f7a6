package agent

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func validEnviron() []string {
	return []string{
		"TP_MANAGER_ADDR=traffic-manager.tp.svc:8082",
		"TP_MANAGER_CA=-----BEGIN CERTIFICATE-----",
		"TP_AGENT_WORKLOAD=echo",
		"TP_AGENT_KIND=Deployment",
		"TP_AGENT_NAMESPACE=default",
		"TP_AGENT_POD_NAME=echo-7d9c-abcde",
		"TP_AGENT_POD_IP=10.42.0.7",
		"TP_AGENT_CONTAINER=echo",
		`TP_AGENT_PORTS=[{"name":"http","containerPort":8080,"agentPort":9900,"protocol":"TCP","mechanism":"rename"},` +
			`{"name":"","containerPort":9090,"agentPort":9901,"protocol":"TCP","mechanism":"redirect"}]`,
		"TP_AGENT_HEALTH_ADDR=:9898",
		"GREETING=hello",
		"DATABASE_URL=postgres://db:5432/x?a=b",
	}
}

func TestConfigFromEnv(t *testing.T) {
	cfg, err := ConfigFromEnv(validEnviron())
	if err != nil {
		t.Fatalf("ConfigFromEnv: %v", err)
	}
	want := Config{
		ManagerAddr: "traffic-manager.tp.svc:8082",
		ManagerCA:   []byte("-----BEGIN CERTIFICATE-----"),
		TokenFile:   DefaultTokenFile,
		Workload:    "echo", Kind: "Deployment", Namespace: "default",
		PodName: "echo-7d9c-abcde", PodIP: netip.MustParseAddr("10.42.0.7"), Container: "echo",
		Ports: []Port{
			{Name: "http", ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP", Mechanism: MechanismRename},
			{ContainerPort: 9090, AgentPort: 9901, Protocol: "TCP", Mechanism: MechanismRedirect},
		},
		HealthAddr:  ":9898",
		Environment: map[string]string{"GREETING": "hello", "DATABASE_URL": "postgres://db:5432/x?a=b"},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v, want %+v", cfg, want)
	}
	if cfg, err := ConfigFromEnv(append(validEnviron(), "TP_AGENT_TOKEN_FILE=/t/token")); err != nil || cfg.TokenFile != "/t/token" {
		t.Errorf("TP_AGENT_TOKEN_FILE: got %q, %v; want /t/token", cfg.TokenFile, err)
	}
	ports, err := PortsFromEnv(validEnviron())
	if err != nil || !reflect.DeepEqual(ports, want.Ports) {
		t.Errorf("PortsFromEnv: got %+v, %v; want %+v", ports, err, want.Ports)
	}
}

func TestConfigFromEnvErrors(t *testing.T) {
	without := func(name string) []string {
		var env []string
		for _, kv := range validEnviron() {
			if !strings.HasPrefix(kv, name+"=") {
				env = append(env, kv)
			}
		}
		return env
	}
	with := func(kv string) []string { return append(validEnviron(), kv) }
	cases := []struct {
		name    string
		environ []string
		want    []string // substrings of the error
	}{
		{"nothing", nil, []string{"TP_MANAGER_ADDR is not set", "TP_MANAGER_CA is not set", "TP_AGENT_WORKLOAD is not set",
			"TP_AGENT_NAMESPACE is not set", "TP_AGENT_POD_NAME is not set", "TP_AGENT_POD_IP is not set",
			"TP_AGENT_PORTS is not set", "TP_AGENT_KIND is not set", "webhook"}},
		{"no manager", without("TP_MANAGER_ADDR"), []string{"TP_MANAGER_ADDR is not set"}},
		{"no CA", without("TP_MANAGER_CA"), []string{"TP_MANAGER_CA is not set"}},
		{"bad pod IP", with("TP_AGENT_POD_IP=10.42.0"), []string{`TP_AGENT_POD_IP="10.42.0" is not an IP address`}},
		{"ports not JSON", with("TP_AGENT_PORTS=8080"), []string{"TP_AGENT_PORTS is not a JSON list"}},
		{"misspelt field", with(`TP_AGENT_PORTS=[{"container_port":8080,"agentPort":9900,"mechanism":"rename"}]`),
			[]string{"containerPort 0 out of range"}},
		{"no kind", without("TP_AGENT_KIND"), []string{"TP_AGENT_KIND is not set"}},
		{"no ports", with("TP_AGENT_PORTS=[]"), []string{"no ports"}},
		{"port range", with(`TP_AGENT_PORTS=[{"containerPort":0,"agentPort":70000,"mechanism":"rename"}]`),
			[]string{"containerPort 0 out of range", "agentPort 70000 out of range"}},
		{"UDP", with(`TP_AGENT_PORTS=[{"name":"dns","containerPort":53,"agentPort":9900,"protocol":"UDP","mechanism":"rename"}]`),
			[]string{`port 0 ("dns"): protocol "UDP" is not supported`}},
		{"mechanism", with(`TP_AGENT_PORTS=[{"containerPort":80,"agentPort":9900,"mechanism":"iptables"}]`),
			[]string{`mechanism "iptables", want "rename" or "redirect"`}},
		{"duplicates", with(`TP_AGENT_PORTS=[{"containerPort":80,"agentPort":9900,"mechanism":"rename"},{"containerPort":80,"agentPort":9900,"mechanism":"rename"}]`),
			[]string{"agentPort 9900 used twice", "containerPort 80 used twice"}},
		{"same port", with(`TP_AGENT_PORTS=[{"containerPort":9900,"agentPort":9900,"mechanism":"rename"}]`),
			[]string{"agentPort and containerPort are both 9900"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ConfigFromEnv(tc.environ)
			if err == nil {
				t.Fatalf("got nil error, want one containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got %q, want it to contain %q", err, w)
				}
			}
		})
	}
	// Fields a newer webhook adds are ignored.
	if ports, err := PortsFromEnv([]string{`TP_AGENT_PORTS=[{"containerPort":80,"agentPort":9900,"mechanism":"rename","future":true}]`}); err != nil || len(ports) != 1 {
		t.Errorf("PortsFromEnv with an unknown field: got %v, %v; want the port", ports, err)
	}
	if _, err := PortsFromEnv(nil); err == nil || !strings.Contains(err.Error(), "TP_AGENT_PORTS is not set") {
		t.Errorf("PortsFromEnv(nil): got %v, want TP_AGENT_PORTS is not set", err)
	}
}

func TestReportedEnvironment(t *testing.T) {
	environ := []string{
		"GREETING=hello",
		"EMPTY=",
		"WITH_EQUALS=a=b=c",
		"HOSTNAME=echo-7d9c-abcde",
		"TP_AGENT_WORKLOAD=echo",
		"TP_AGENT_PORTS=[]",
		"TP_MANAGER_ADDR=traffic-manager.tp:8081",
		"TP_MANAGER_CA=-----BEGIN CERTIFICATE-----",
		"TP_AGENT_TOKEN_FILE=/var/run/secrets/tp.run/agent/token",
		"TP_USER=kept", // not an agent variable
		"KUBERNETES_SERVICE_HOST=10.43.0.1",
		"KUBERNETES_SERVICE_PORT=443",
		"KUBERNETES_SERVICE_PORT_HTTPS=443",
		"KUBERNETES_PORT=tcp://10.43.0.1:443",
		"KUBERNETES_PORT_443_TCP=tcp://10.43.0.1:443",
		"KUBERNETES_PORT_443_TCP_PROTO=tcp",
		"KUBERNETES_PORT_443_TCP_PORT=443",
		"KUBERNETES_PORT_443_TCP_ADDR=10.43.0.1",
		"KUBERNETES_VERSION=app's own", // not a service link
		"REDIS_SERVICE_HOST=10.43.7.7", // another service's link: the app sees it too
		"REDIS_PORT=tcp://10.43.7.7:6379",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"GREETING=later wins",
		"malformed",
	}
	got := ReportedEnvironment(environ)
	want := map[string]string{
		"GREETING":           "later wins",
		"EMPTY":              "",
		"WITH_EQUALS":        "a=b=c",
		"HOSTNAME":           "echo-7d9c-abcde",
		"TP_USER":            "kept",
		"KUBERNETES_VERSION": "app's own",
		"REDIS_SERVICE_HOST": "10.43.7.7",
		"REDIS_PORT":         "tcp://10.43.7.7:6379",
	}
	if !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// A PATH the app's env sets explicitly is the app's.
	if got := ReportedEnvironment([]string{"PATH=/app/bin:/usr/bin"}); got["PATH"] != "/app/bin:/usr/bin" {
		t.Errorf("explicit PATH: got %v, want it kept", got)
	}
}

func TestMountsFromEnv(t *testing.T) {
	got, err := MountsFromEnv([]string{`TP_AGENT_MOUNTS=[{"path":"/etc/secret","readOnly":true},{"path":"/var"}]`})
	if want := []Mount{{Path: "/etc/secret", ReadOnly: true}, {Path: "/var"}}; err != nil || !slices.Equal(got, want) {
		t.Errorf("got %v, %v, want %v", got, err, want)
	}
	if got, err := MountsFromEnv(nil); err != nil || got != nil {
		t.Errorf("unset: got %v, %v, want none", got, err)
	}
	for _, bad := range []string{`/var`, `[{"path":"var"}]`, `[{"path":"/var/../etc"}]`, `[{"path":"/"}]`, `[{"path":"/a"},{"path":"/a"}]`} {
		if _, err := MountsFromEnv([]string{"TP_AGENT_MOUNTS=" + bad}); err == nil || !strings.Contains(err.Error(), "TP_AGENT_MOUNTS") {
			t.Errorf("%s: got %v, want an error naming TP_AGENT_MOUNTS", bad, err)
		}
	}
}

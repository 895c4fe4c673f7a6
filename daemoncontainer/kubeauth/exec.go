package kubeauth

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/pkg/apis/clientauthentication"
	"k8s.io/client-go/pkg/apis/clientauthentication/install"
	clientauthenticationv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"
	clientauthenticationv1beta1 "k8s.io/client-go/pkg/apis/clientauthentication/v1beta1"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// PluginCommand is the hidden tp subcommand that client-go runs in the
	// container in place of the original exec plugin.
	PluginCommand = "kubeauth-plugin"
	// EnvSecret carries the relay's bearer secret to [PluginCommand]; it is
	// set in the env of the rewritten exec config.
	EnvSecret = "TP_KUBEAUTH_SECRET"
	// EnvExecInfo is the variable in which client-go hands an exec plugin its
	// ExecCredential request.
	EnvExecInfo = "KUBERNETES_EXEC_INFO"
)

// The ExecCredential codecs, set up as client-go's exec authenticator does,
// so that requests and answers are decoded exactly as client-go would.
var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)

	apiVersions = map[string]schema.GroupVersion{
		clientauthenticationv1beta1.SchemeGroupVersion.String(): clientauthenticationv1beta1.SchemeGroupVersion,
		clientauthenticationv1.SchemeGroupVersion.String():      clientauthenticationv1.SchemeGroupVersion,
	}
)

func init() {
	install.Install(scheme)
}

// CheckAPIVersion reports whether client-go supports the apiVersion of an
// exec config (client.authentication.k8s.io/v1 or v1beta1).
func CheckAPIVersion(apiVersion string) error {
	if _, ok := apiVersions[apiVersion]; !ok {
		return fmt.Errorf("exec plugin apiVersion %q is not supported; use %s or %s",
			apiVersion, clientauthenticationv1.SchemeGroupVersion, clientauthenticationv1beta1.SchemeGroupVersion)
	}
	return nil
}

// PluginExecConfig returns the exec config that replaces original in the
// container's kubeconfig: client-go runs `binary kubeauth-plugin --url
// relayURL --user user` with the secret in [EnvSecret], never interactively,
// with the apiVersion and provideClusterInfo of the original plugin.
func PluginExecConfig(binary, relayURL, user, secret string, original *clientcmdapi.ExecConfig) *clientcmdapi.ExecConfig {
	return &clientcmdapi.ExecConfig{
		Command:            binary,
		Args:               []string{PluginCommand, "--url", relayURL, "--user", user},
		Env:                []clientcmdapi.ExecEnvVar{{Name: EnvSecret, Value: secret}},
		APIVersion:         original.APIVersion,
		ProvideClusterInfo: original.ProvideClusterInfo,
		InteractiveMode:    clientcmdapi.NeverExecInteractiveMode,
		InstallHint: fmt.Sprintf("%s relays the exec plugin %q of user %q to tp on the host; "+
			"it needs `tp connect` to be running there", binary, original.Command, user),
	}
}

// requestFor returns the KUBERNETES_EXEC_INFO for a host run of a plugin with
// the given apiVersion: body decoded and re-encoded as client-go encodes it,
// never interactive (the host run has no stdin). An empty body yields the
// request client-go would send without cluster info.
func requestFor(gv schema.GroupVersion, body []byte) ([]byte, error) {
	cred := &clientauthentication.ExecCredential{}
	if len(body) > 0 {
		_, gvk, err := codecs.UniversalDecoder(gv).Decode(body, nil, cred)
		if err != nil {
			return nil, fmt.Errorf("decoding ExecCredential request: %w", err)
		}
		if gvk.Group != gv.Group || gvk.Version != gv.Version {
			return nil, fmt.Errorf("ExecCredential request is %s, the plugin is configured for %s",
				schema.GroupVersion{Group: gvk.Group, Version: gvk.Version}, gv)
		}
	}
	cred.Spec.Interactive = false
	cred.Status = nil
	data, err := runtime.Encode(codecs.LegacyCodec(gv), cred)
	if err != nil {
		return nil, fmt.Errorf("encoding ExecCredential request: %w", err)
	}
	return data, nil
}

// checkCredential applies client-go's checks to a plugin's stdout, so that a
// bad answer fails on the host with the plugin named, not later in the
// container.
func checkCredential(gv schema.GroupVersion, stdout []byte) error {
	cred := &clientauthentication.ExecCredential{}
	_, gvk, err := codecs.UniversalDecoder(gv).Decode(stdout, nil, cred)
	if err != nil {
		return fmt.Errorf("decoding the plugin's stdout: %w", err)
	}
	if gvk.Group != gv.Group || gvk.Version != gv.Version {
		return fmt.Errorf("exec plugin is configured to use API version %s, plugin returned version %s",
			gv, schema.GroupVersion{Group: gvk.Group, Version: gvk.Version})
	}
	switch s := cred.Status; {
	case s == nil:
		return fmt.Errorf("exec plugin didn't return a status field")
	case s.Token == "" && s.ClientCertificateData == "" && s.ClientKeyData == "":
		return fmt.Errorf("exec plugin didn't return a token or cert/key pair")
	case (s.ClientCertificateData == "") != (s.ClientKeyData == ""):
		return fmt.Errorf("exec plugin returned only certificate or key, not both")
	}
	return nil
}

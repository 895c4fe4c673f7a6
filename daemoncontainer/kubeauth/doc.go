// Package kubeauth relays client-go exec credential plugins from the daemon
// container to the host.
//
// Kubeconfigs for EKS, GKE, AKS and OIDC clusters authenticate with exec
// plugins (`aws eks get-token`, `gke-gcloud-auth-plugin`, `kubelogin`, ...).
// Those must run on the host, where the user's cloud CLI, its credentials and
// a browser live; the daemon container only has the static `/tp` binary. So
// the kubeconfig handed to the container (package
// [github.com/tp-run/tp/daemoncontainer/kubeconfig]) replaces each exec
// plugin with `/tp kubeauth-plugin` (see [PluginExecConfig]), which asks a
// small HTTP server on the host to run the original plugin:
//
//	client-go (daemon, in the container)
//	  -> exec /tp kubeauth-plugin --url URL --user NAME   (env TP_KUBEAUTH_SECRET, KUBERNETES_EXEC_INFO)
//	     -> RunPlugin: POST URL/credentials/NAME, Authorization: Bearer SECRET, body = KUBERNETES_EXEC_INFO
//	        -> Server (in tp on the host): runs the ORIGINAL plugin exactly as client-go would
//	           (command, args, host environment + the plugin's env, KUBERNETES_EXEC_INFO,
//	           no stdin, bounded by a timeout), checks its output, answers it verbatim
//	     <- the plugin's ExecCredential on stdout
//	  <- client-go caches the token/certificate until its expirationTimestamp
//
// # Protocol
//
// POST /credentials/{user} with the bearer secret and the ExecCredential
// request client-go put in KUBERNETES_EXEC_INFO (an empty body is allowed: the
// server then builds the request itself). Answers:
//
//   - 200: the plugin's stdout, an ExecCredential of the plugin's apiVersion
//     (client.authentication.k8s.io/v1 or v1beta1), untouched: the token,
//     client certificate and expirationTimestamp reach client-go as the plugin
//     wrote them;
//   - 400: the body is not an ExecCredential of the user's apiVersion;
//   - 401: missing or wrong secret (checked before anything else, so user names
//     cannot be probed);
//   - 404: no exec plugin is registered for that user;
//   - 502: the plugin failed, timed out or wrote no usable credential; the body
//     says why and carries the tail of the plugin's stderr, which RunPlugin
//     turns into its error so the daemon log shows it.
//
// Plugin runs are serialised per user (like client-go, which holds a lock
// while its plugin runs), so a burst of requests does not open several
// browser windows for one login.
//
// # Wiring (cmd/tp)
//
// On the host, in `tp connect`, before the daemon container starts:
//
//	raw, _ := loadingRules.Load()                      // the user's kubeconfig, un-rewritten
//	secret := rand.Text()                              // crypto/rand, per connection
//	l, _ := net.Listen("tcp", addr)                    // Linux: the docker bridge gateway, e.g. "172.17.0.1:0";
//	                                                   // Docker Desktop: "127.0.0.1:0"
//	url := "http://host.docker.internal:" + port(l)    // as the container reaches the listener
//	res, _ := kubeconfig.ForContainer(*raw, contextName, kubeconfig.Options{
//		Kubeauth: &kubeconfig.KubeauthRelay{URL: url, Secret: secret, Binary: "/tp"}, ...})
//	users := map[string]*clientcmdapi.ExecConfig{}
//	for _, u := range res.ExecUsers { users[u] = raw.AuthInfos[u].Exec }
//	srv := kubeauth.NewServer(users, secret, log)
//	g.Go(func() error { return srv.Serve(ctx, l) })    // must live as long as the daemon needs tokens
//
// Only start the server when res.ExecUsers is not empty. The server must keep
// running while the daemon runs: client-go asks again whenever a credential
// expires (EKS tokens last 15 minutes), so the process owning it is the one
// that stays up for the connection. The secret is stored only in the
// container's kubeconfig (the exec env TP_KUBEAUTH_SECRET); a new server gets
// a new secret and needs a new kubeconfig.
//
// In the container, the hidden command `tp kubeauth-plugin --url URL --user
// NAME` is a few lines:
//
//	return kubeauth.RunPlugin(cmd.Context(), flags.url, flags.user,
//		os.Getenv(kubeauth.EnvSecret), cmd.InOrStdin(), cmd.OutOrStdout(), os.Getenv)
//
// It must print nothing else on stdout; its error goes to stderr, which
// client-go forwards to the daemon's log.
//
// # Limits
//
// The plugin runs non-interactively (no stdin): plugins that prompt on the
// terminal fail with their own message, and the user should log in on the
// host first (`aws sso login`, `gcloud auth login`, `az login`). Plugins that
// open a browser (kubelogin, oidc-login) work, because they run on the host,
// within the server's timeout (see [Server.PluginTimeout]). When the exec
// config sets provideClusterInfo, the plugin sees the cluster as the
// container's kubeconfig describes it, i.e. with a rewritten loopback server
// address; cloud clusters are never rewritten. kubectl's kuberc plugin policy
// (PluginPolicy) is not applied: the server runs only the plugins of the
// kubeconfig the user chose, as kubectl would by default.
package kubeauth

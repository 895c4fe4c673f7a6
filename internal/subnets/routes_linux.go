package subnets

import "os"

// HostRoutes returns the routes of the host's main table, IPv4 and IPv6.
func HostRoutes() ([]Route, error) {
	var out []Route
	for file, parse := range map[string]func(f *os.File) ([]Route, error){
		"/proc/net/route":      func(f *os.File) ([]Route, error) { return parseProcRoute(f) },
		"/proc/net/ipv6_route": func(f *os.File) ([]Route, error) { return parseProcIPv6Route(f) },
	} {
		f, err := os.Open(file)
		if err != nil {
			continue // no IPv6
		}
		rs, err := parse(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

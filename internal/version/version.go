// Package version holds the build's version, stamped at link time, and the
// names derived from it (the image every component runs from).
package version

// Version is set at build time with
// -ldflags "-X github.com/tp-run/tp/internal/version.Version=...".
var Version = "dev"

// ImageRepository is the image name of tp's single image (daemon, manager and
// agent all run from it).
const ImageRepository = "tp"

// Image returns the image reference of this build: tp:<version>.
func Image() string { return ImageRepository + ":" + Tag() }

// Tag is Version made safe for an image tag (letters, digits, '_', '.', '-').
func Tag() string {
	b := []byte(Version)
	for i, c := range b {
		ok := c == '_' || c == '.' || c == '-' ||
			(c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !ok {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "dev"
	}
	return string(b)
}

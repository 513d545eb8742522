// Package version carries the build's version string, set by the linker (make build).
package version

// Version is overwritten with -ldflags "-X .../internal/version.Version=...".
var Version = "dev"

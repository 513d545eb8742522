package datastore

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config says how to reach etcd. It is the one etcd connection configuration of tabbyd
// (the etcd section of tabbyd.yaml), tabbyctl (flags, TABBY_ETCD_*, tabbyctl.yaml) and
// tabby-cni (the etcd_* keys of the network configuration): each fills it in from its own
// sources and calls Validate, whose errors name the setting.
type Config struct {
	Endpoints []string
	CAFile    string
	CertFile  string
	KeyFile   string
	Username  string
	Password  string
	// DialTimeout bounds the first connection; 0 means 5 s.
	DialTimeout time.Duration
	// Prefix is the key root, DefaultPrefix when empty.
	Prefix string
}

// The names of Config's settings in tabbyd.yaml and tabbyctl.yaml, which ConfigError
// uses.
const (
	KeyEndpoints   = "etcd.endpoints"
	KeyCAFile      = "etcd.caFile"
	KeyCertFile    = "etcd.certFile"
	KeyKeyFile     = "etcd.keyFile"
	KeyUsername    = "etcd.username"
	KeyPassword    = "etcd.password"
	KeyDialTimeout = "etcd.dialTimeout"
	KeyPrefix      = "etcd.prefix"
)

// ConfigError is a setting of Config that Validate refuses. Key is the setting's name in
// tabbyd.yaml (KeyEndpoints, …); a program that calls it something else (tabby-cni's
// etcd_endpoints, tabbyctl's --endpoints) renames it before showing the error.
type ConfigError struct {
	Key     string
	Problem string
}

func (e *ConfigError) Error() string { return e.Key + ": " + e.Problem }

// Validate checks every setting, in the order of the fields, and returns a *ConfigError
// for the first that is wrong: at least one endpoint, each an http:// or https:// URL with
// host and port; the client certificate and its key named together; a username and a
// password together; a dial timeout that is not negative; a key root that is absolute.
// Whether the files can be read is the TLS setup's to say (tabbyd checks it at start).
func (c Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &ConfigError{Key: key, Problem: fmt.Sprintf(format, args...)}
	}
	if len(c.Endpoints) == 0 {
		return bad(KeyEndpoints, "at least one endpoint is required")
	}
	for _, e := range c.Endpoints {
		if problem := endpointProblem(e); problem != "" {
			return bad(KeyEndpoints, "%q is not an etcd URL such as http://10.0.0.10:2379: %s", e, problem)
		}
	}
	switch {
	case c.CertFile != "" && c.KeyFile == "":
		return bad(KeyKeyFile, "required with %s (the client certificate's key)", KeyCertFile)
	case c.KeyFile != "" && c.CertFile == "":
		return bad(KeyCertFile, "required with %s (the client certificate)", KeyKeyFile)
	case c.Username != "" && c.Password == "":
		return bad(KeyPassword, "required with %s", KeyUsername)
	case c.Password != "" && c.Username == "":
		return bad(KeyUsername, "required with %s", KeyPassword)
	case c.DialTimeout < 0:
		return bad(KeyDialTimeout, "%s is negative", c.DialTimeout)
	case c.Prefix != "" && (!strings.HasPrefix(c.Prefix, "/") || strings.Trim(c.Prefix, "/") == ""):
		return bad(KeyPrefix, "%q must be an absolute key root such as /calico", c.Prefix)
	}
	return nil
}

// endpointProblem says what is wrong with an etcd endpoint URL, or "".
func endpointProblem(e string) string {
	u, err := url.Parse(e)
	switch {
	case err != nil, u.Scheme == "" && u.Opaque != "":
		return "it must be of the form http(s)://host:port"
	case u.Scheme != "http" && u.Scheme != "https":
		return "the scheme must be http or https"
	case u.Hostname() == "" || u.Port() == "":
		return "it must be of the form http(s)://host:port"
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.User != nil:
		return "it must be only http(s)://host:port"
	}
	if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
		return "the port must be 1-65535"
	}
	return ""
}

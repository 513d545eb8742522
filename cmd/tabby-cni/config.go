package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"go.yaml.in/yaml/v3"

	"github.com/tabby-net/tabby/datastore"
)

// Defaults of the network configuration. They match tabbyd's own defaults (SPEC §10), so a
// host that runs both with no configuration at all agrees on where the MTU file and the
// locks live.
const (
	defaultDataDir      = "/var/lib/tabby"
	defaultRunDir       = "/run/tabby"
	defaultTabbydConfig = "/etc/tabby/tabbyd.yaml"
	defaultLogLevel     = "info"

	// defaultPodMTU is used when neither the configuration nor tabbyd says otherwise.
	defaultPodMTU = 1500
	minMTU        = 576
	maxMTU        = 9000
	// The published MTU is derived from the NIC's, which may exceed what one configures by
	// hand (AWS's 9001 in Direct mode); it only has to be one the kernel accepts for a veth.
	minPublishedMTU = 68
	maxPublishedMTU = 65535
)

// netConf is the network configuration exactly as the runtime hands it over on stdin
// (SPEC §8). Key names follow Calico's CNI plugin where Calico has one, so a Calico
// conflist needs only its "type" changed.
type netConf struct {
	types.PluginConf

	// IPAM shadows the embedded one to read Calico's pool restriction too.
	IPAM ipamConf `json:"ipam"`

	EtcdEndpoints  string `json:"etcd_endpoints"`
	EtcdCACertFile string `json:"etcd_ca_cert_file"`
	EtcdCertFile   string `json:"etcd_cert_file"`
	EtcdKeyFile    string `json:"etcd_key_file"`
	EtcdPrefix     string `json:"etcd_prefix"`

	Nodename string `json:"nodename"`
	MTU      int    `json:"mtu"`
	DataDir  string `json:"data_dir"`
	RunDir   string `json:"run_dir"`
	LogLevel string `json:"log_level"`
	LogFile  string `json:"log_file"`

	// TabbydConfig is where tabbyd's configuration file lives, consulted for the etcd
	// settings when etcd_endpoints is empty. Tests and hosts with several tabbyd
	// instances point it elsewhere.
	TabbydConfig string `json:"tabbyd_config"`
}

// ipamConf is the "ipam" section. tabby-cni is its own IPAM, so "type" may only name it
// (or Calico's, whose behaviour it is); ipv4_pools restricts assignments to some pools, as
// in Calico, given by CIDR or by name. Only a pool named there is used when its
// assignmentMode is Manual.
type ipamConf struct {
	Type      string   `json:"type"`
	IPv4Pools []string `json:"ipv4_pools"`
}

// config is the validated, defaulted configuration one command works with.
type config struct {
	// Network is the network name; it prefixes IPAM handles ("<network>.<containerID>").
	Network    string
	CNIVersion string

	// Etcd is how to reach the datastore, from the etcd_* keys or tabbyd's configuration;
	// its DialTimeout is the plugin's probe timeout.
	Etcd datastore.Config

	Nodename string
	// MTU is the configured MTU; 0 means "what tabbyd publishes in <DataDir>/mtu".
	MTU      int
	DataDir  string
	RunDir   string
	LogLevel slog.Level
	LogFile  string

	// Pools and PoolNames restrict assignments to these pools; both empty means every
	// pool in Automatic assignment mode that selects the node.
	Pools     []netip.Prefix
	PoolNames []string

	// PrevResult is the result of the ADD, handed over by the runtime on CHECK and DEL;
	// nil when absent.
	PrevResult types.Result
}

// configError is a problem with the network configuration. It maps to the CNI error code
// "invalid network configuration" and names the offending key.
type configError struct {
	Key    string
	Reason string
}

func (e *configError) Error() string {
	return fmt.Sprintf("invalid network configuration: %s: %s", e.Key, e.Reason)
}

func badKey(key, format string, args ...any) error {
	return &configError{Key: key, Reason: fmt.Sprintf(format, args...)}
}

// environment is what the configuration defaults depend on outside the JSON itself.
// Kept explicit so the defaulting rules are testable without touching the real host.
type environment struct {
	Hostname func() (string, error)
}

func hostEnvironment() environment { return environment{Hostname: os.Hostname} }

// loadConfig parses, defaults and validates the network configuration from stdin. It has no
// side effects: nothing is created, nothing is contacted.
func loadConfig(stdin []byte, env environment) (*config, error) {
	var raw netConf
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, &configError{Key: "(document)", Reason: fmt.Sprintf("not valid JSON: %v", err)}
	}
	if raw.Name == "" {
		return nil, badKey("name", "missing; the network needs a name (it prefixes IPAM handles)")
	}
	if raw.RawPrevResult != nil {
		if err := version.ParsePrevResult(&raw.PluginConf); err != nil {
			return nil, badKey("prevResult", "%v", err)
		}
	}

	c := &config{
		Network:    raw.Name,
		CNIVersion: raw.CNIVersion,
		Etcd: datastore.Config{
			CAFile:      raw.EtcdCACertFile,
			CertFile:    raw.EtcdCertFile,
			KeyFile:     raw.EtcdKeyFile,
			Prefix:      raw.EtcdPrefix,
			DialTimeout: etcdProbeTimeout,
		},
		Nodename:   raw.Nodename,
		MTU:        raw.MTU,
		DataDir:    raw.DataDir,
		RunDir:     raw.RunDir,
		LogFile:    raw.LogFile,
		PrevResult: raw.PrevResult,
	}

	switch raw.IPAM.Type {
	case "", "tabby-cni", "calico-ipam":
	default:
		return nil, badKey("ipam.type", "%q is not supported: tabby-cni assigns addresses itself (leave it out, or use \"tabby-cni\")", raw.IPAM.Type)
	}
	for _, s := range raw.IPAM.IPv4Pools {
		if !strings.Contains(s, "/") {
			if datastore.CheckName(s) != "" {
				return nil, badKey("ipam.ipv4_pools", "%q is neither the CIDR of an IPv4 pool (e.g. 10.244.0.0/16) nor a pool name", s)
			}
			c.PoolNames = append(c.PoolNames, s)
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is4() || p != p.Masked() {
			return nil, badKey("ipam.ipv4_pools", "%q is not the CIDR of an IPv4 pool (e.g. 10.244.0.0/16)", s)
		}
		c.Pools = append(c.Pools, p)
	}

	level, err := parseLogLevel(raw.LogLevel)
	if err != nil {
		return nil, err
	}
	c.LogLevel = level

	if raw.EtcdEndpoints != "" {
		for _, e := range strings.Split(raw.EtcdEndpoints, ",") {
			if e = strings.TrimSpace(e); e != "" {
				c.Etcd.Endpoints = append(c.Etcd.Endpoints, e)
			}
		}
		if len(c.Etcd.Endpoints) == 0 {
			return nil, badKey("etcd_endpoints", "%q names no endpoint", raw.EtcdEndpoints)
		}
	} else {
		// No endpoints here: use tabbyd's, so one file configures the whole host.
		path := raw.TabbydConfig
		if path == "" {
			path = defaultTabbydConfig
		}
		if err := c.fillFromTabbyd(path); err != nil {
			return nil, err
		}
	}

	if c.Nodename == "" {
		name, err := env.Hostname()
		if err != nil {
			return nil, badKey("nodename", "not set and the hostname is unknown: %v", err)
		}
		// Lower-cased, as Calico and tabbyd do: both must claim blocks under one name.
		c.Nodename = strings.ToLower(strings.TrimSpace(name))
	}
	if c.DataDir == "" {
		c.DataDir = defaultDataDir
	}
	if c.RunDir == "" {
		c.RunDir = defaultRunDir
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// validate checks every value; the error names the key.
func (c *config) validate() error {
	if err := c.Etcd.Validate(); err != nil {
		var ce *datastore.ConfigError
		if !errors.As(err, &ce) {
			return badKey("etcd_endpoints", "%v", err)
		}
		key, ok := cniEtcdKeys[ce.Key]
		if !ok {
			key = ce.Key // set only in tabbyd's configuration, under this name
		}
		return badKey(key, "%s", renameEtcdKeys(ce.Problem))
	}
	if err := validateNodename(c.Nodename); err != nil {
		return badKey("nodename", "%v", err)
	}
	if c.MTU != 0 && (c.MTU < minMTU || c.MTU > maxMTU) {
		return badKey("mtu", "must be between %d and %d (or 0 for the MTU tabbyd publishes), got %d", minMTU, maxMTU, c.MTU)
	}
	for key, dir := range map[string]string{"data_dir": c.DataDir, "run_dir": c.RunDir} {
		if !filepath.IsAbs(dir) {
			return badKey(key, "must be an absolute path, got %q", dir)
		}
	}
	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		return badKey("log_file", "must be an absolute path, got %q", c.LogFile)
	}
	if strings.Contains(c.Network, "/") {
		// The handle "<network>.<containerID>" is an etcd key segment: a slash would
		// change the key layout.
		return badKey("name", "%q must not contain '/'", c.Network)
	}
	return nil
}

// cniEtcdKeys are the network configuration's names of the etcd settings (Calico's).
var cniEtcdKeys = map[string]string{
	datastore.KeyEndpoints: "etcd_endpoints",
	datastore.KeyCAFile:    "etcd_ca_cert_file",
	datastore.KeyCertFile:  "etcd_cert_file",
	datastore.KeyKeyFile:   "etcd_key_file",
	datastore.KeyPrefix:    "etcd_prefix",
}

// renameEtcdKeys puts the network configuration's names into a message of
// datastore.Config.Validate that names another setting.
func renameEtcdKeys(msg string) string {
	for from, to := range cniEtcdKeys {
		msg = strings.ReplaceAll(msg, from, to)
	}
	return msg
}

// validateNodename accepts what can be a key segment and a Calico node name: lowercase
// DNS-1123 subdomain characters.
func validateNodename(n string) error {
	if len(n) > 253 {
		return fmt.Errorf("%q is longer than 253 characters", n)
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return fmt.Errorf("%q: only lowercase letters, digits, '-' and '.' are allowed", n)
		}
	}
	return nil
}

func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, badKey("log_level", "%q is not one of debug, info, warning, error", s)
}

// fillFromTabbyd takes the etcd settings from tabbyd's configuration file (SPEC §10), and
// nodeName, dataDir and runDir too where the network configuration leaves them empty: the
// plugin must claim addresses under the same node name as the daemon that routes them.
// Viper, which reads that file for tabbyd, matches keys case-insensitively; so does this.
func (c *config) fillFromTabbyd(path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return badKey("etcd_endpoints", "not set, and tabbyd's configuration %s does not exist", path)
	}
	if err != nil {
		return badKey("tabbyd_config", "%v", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return badKey("tabbyd_config", "%s is not valid YAML: %v", path, err)
	}
	etcd, _ := lookup(doc, "etcd").(map[string]any)

	switch eps := lookup(etcd, "endpoints").(type) {
	case string:
		for _, e := range strings.Split(eps, ",") {
			if e = strings.TrimSpace(e); e != "" {
				c.Etcd.Endpoints = append(c.Etcd.Endpoints, e)
			}
		}
	case []any:
		for _, e := range eps {
			s, ok := e.(string)
			if !ok {
				return badKey("tabbyd_config", "%s: etcd.endpoints: %v is not a string", path, e)
			}
			c.Etcd.Endpoints = append(c.Etcd.Endpoints, s)
		}
	}
	if len(c.Etcd.Endpoints) == 0 {
		return badKey("etcd_endpoints", "not set, and tabbyd's configuration %s has no etcd.endpoints", path)
	}

	strs := []struct {
		from map[string]any
		key  string
		into *string
	}{
		{etcd, "caFile", &c.Etcd.CAFile},
		{etcd, "certFile", &c.Etcd.CertFile},
		{etcd, "keyFile", &c.Etcd.KeyFile},
		{etcd, "username", &c.Etcd.Username},
		{etcd, "password", &c.Etcd.Password},
		{etcd, "prefix", &c.Etcd.Prefix},
		{doc, "nodeName", &c.Nodename},
		{doc, "dataDir", &c.DataDir},
		{doc, "runDir", &c.RunDir},
	}
	for _, s := range strs {
		if *s.into != "" {
			continue // the network configuration wins
		}
		switch v := lookup(s.from, s.key).(type) {
		case nil:
		case string:
			*s.into = v
		case int, int64, uint64, float64, bool:
			// A password of digits reads as a number; tabbyd takes it as text too.
			*s.into = fmt.Sprint(v)
		default:
			// The value is not repeated: it may be the etcd password.
			return badKey("tabbyd_config", "%s: %s: a %T is not a single value", path, s.key, v)
		}
	}
	return nil
}

// lookup finds key in m ignoring case, as viper does.
func lookup(m map[string]any, key string) any {
	for k, v := range m {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return nil
}

// podMTU resolves the MTU of both veth ends: the configured one, else the one tabbyd
// publishes in <data_dir>/mtu (it knows the tunnel overhead), else 1500.
func podMTU(c *config, log *slog.Logger) (int, error) {
	if c.MTU != 0 {
		return c.MTU, nil
	}
	path := filepath.Join(c.DataDir, "mtu")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		log.Info("tabbyd has published no pod MTU; using the default", "file", path, "mtu", defaultPodMTU)
		return defaultPodMTU, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read pod MTU: %w", err)
	}
	mtu, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("pod MTU file %s: %q is not a decimal number", path, strings.TrimSpace(string(data)))
	}
	if mtu < minPublishedMTU || mtu > maxPublishedMTU {
		return 0, fmt.Errorf("pod MTU file %s: %d is not between %d and %d", path, mtu, minPublishedMTU, maxPublishedMTU)
	}
	return mtu, nil
}

package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/daemon/autodetect"
	"github.com/tabby-net/tabby/datastore"
)

// DefaultConfigFile is read when no --config is given; its absence is not an error.
const DefaultConfigFile = "/etc/tabby/tabbyd.yaml"

// EnvPrefix is the prefix of the environment variables that set configuration keys:
// TABBY_ETCD_ENDPOINTS sets etcd.endpoints, TABBY_DATAPLANE_ROUTEPROTOCOL sets
// dataplane.routeProtocol.
const EnvPrefix = "TABBY"

// Config is tabbyd's configuration (SPEC §10) after defaults, file, environment and flags
// were merged and every value was validated.
type Config struct {
	// NodeName is the name of this host's Node resource; "" means the lower-cased hostname.
	NodeName string
	// Etcd is how to reach the datastore: the etcd section, checked by its Validate.
	Etcd datastore.Config
	IPv4 IPv4Config
	BGP  BGPConfig
	Data DataplaneConfig
	// Labels are the Node's labels, the ones BGPPeer and IPPool selectors match.
	Labels map[string]string
	// HealthListen and MetricsListen are host:port; "" disables the listener.
	HealthListen  string
	MetricsListen string
	// DataDir holds state that outlives a boot (the published pod MTU).
	DataDir string
	// RunDir holds state of this boot (the graceful-restart marker).
	RunDir string
	// StatusSocket is the unix socket tabbyctl reads the status from.
	StatusSocket string
	LogLevel     slog.Level
	// File is the configuration file that was read, "" when none was.
	File string
}

// IPv4Config says how the node finds its own address: a fixed Address or an Autodetect
// method. Both empty means first-found.
type IPv4Config struct {
	// Address is the configured node address; its Bits() is -1 when it was given without
	// a prefix length (the interface holding it supplies one).
	Address    netip.Prefix
	HasAddress bool
	Autodetect autodetect.Method
}

// BGPConfig holds the host-local BGP settings; the cluster-wide ones live in etcd.
type BGPConfig struct {
	// SecretsDir holds the BGP passwords: <SecretsDir>/<secret name>/<key>.
	SecretsDir string
	// ConnectRetry, HoldTime and Keepalive are the session timers (SPEC §7).
	ConnectRetry time.Duration
	HoldTime     time.Duration
	Keepalive    time.Duration
	// ReadinessExplicitPeers is the readiness rule for explicit BGPPeers' sessions after
	// the start-up grace (bgp.readiness.explicitPeers).
	ReadinessExplicitPeers bgp.ExplicitPeers
}

// DataplaneConfig tunes the kernel side.
type DataplaneConfig struct {
	// RouteProtocol marks every route tabby writes; only routes with it are ever changed.
	RouteProtocol int
	// RouteRefreshInterval is the period of the full route resync; 0 disables it.
	RouteRefreshInterval time.Duration
	// MTU overrides the detected host MTU; 0 means detect.
	MTU int
	// IPTablesBackend is "auto", "nft" or "legacy".
	IPTablesBackend string
}

// ConfigError is a configuration value tabbyd refuses. Its text is the one line the
// operator sees: "config: <key>: <why>". The command exits with code 2 for it.
type ConfigError struct {
	// Key is the configuration key (e.g. "dataplane.routeProtocol") or the file name.
	Key string
	Msg string
}

func (e *ConfigError) Error() string { return "config: " + e.Key + ": " + e.Msg }

// LoadOptions say where the configuration comes from besides the environment.
type LoadOptions struct {
	// File is the configuration file; "" means DefaultConfigFile, which may be absent.
	File string
	// Flags are the command's flags; only the ones the user set override other sources.
	// Flag names: config, node-name, log-level, etcd-endpoints.
	Flags *pflag.FlagSet
}

// AddFlags defines the flags LoadConfig reads: --config, --node-name, --log-level and
// --etcd-endpoints. A flag the user does not set leaves the lower layers in force.
func AddFlags(fs *pflag.FlagSet) {
	fs.String("config", DefaultConfigFile, "configuration file")
	fs.String("node-name", "", "name of this host's Node (default: the hostname)")
	fs.String("log-level", "info", "debug, info, warn or error")
	fs.StringSlice("etcd-endpoints", nil, "etcd URLs, comma-separated")
}

// setting is one scalar or list key: its canonical name (the case the docs use), default,
// the flag that may set it, and how a raw value from any source becomes a Config field.
type setting struct {
	key   string
	def   any
	flag  string
	apply func(c *Config, raw any) error
}

// settings lists every key tabbyd knows besides labels. The list is the single source of
// truth for defaults, flag binding, unknown-key detection and decoding; keys are decoded in
// this order, so a key may look at the ones above it.
func settings() []setting {
	return []setting{
		{key: "nodeName", def: "", flag: "node-name", apply: func(c *Config, raw any) (err error) {
			c.NodeName, err = asString(raw)
			if err == nil && c.NodeName != "" {
				err = validNodeName(c.NodeName)
			}
			return err
		}},
		// The etcd section is read as it is written (the TLS files must be readable now,
		// not at the first connection); datastore.Config.Validate checks the rest once
		// every key is in, the same rules as for tabbyctl and tabby-cni.
		{key: datastore.KeyEndpoints, def: []string{"http://127.0.0.1:2379"}, flag: "etcd-endpoints", apply: func(c *Config, raw any) (err error) {
			c.Etcd.Endpoints, err = asStringList(raw)
			return err
		}},
		{key: datastore.KeyCAFile, def: "", apply: func(c *Config, raw any) (err error) {
			c.Etcd.CAFile, err = readableFile(raw)
			return err
		}},
		{key: datastore.KeyCertFile, def: "", apply: func(c *Config, raw any) (err error) {
			c.Etcd.CertFile, err = readableFile(raw)
			return err
		}},
		{key: datastore.KeyKeyFile, def: "", apply: func(c *Config, raw any) (err error) {
			c.Etcd.KeyFile, err = readableFile(raw)
			return err
		}},
		{key: datastore.KeyUsername, def: "", apply: func(c *Config, raw any) (err error) {
			c.Etcd.Username, err = asString(raw)
			return err
		}},
		{key: datastore.KeyPassword, def: "", apply: func(c *Config, raw any) (err error) {
			c.Etcd.Password, err = asString(raw)
			return err
		}},
		{key: datastore.KeyPrefix, def: datastore.DefaultPrefix, apply: func(c *Config, raw any) (err error) {
			c.Etcd.Prefix, err = asString(raw)
			return err
		}},
		{key: "ipv4.address", def: "", apply: func(c *Config, raw any) error {
			s, err := asString(raw)
			if err != nil || s == "" {
				return err
			}
			p, err := parseNodeAddress(s)
			if err != nil {
				return err
			}
			c.IPv4.Address, c.IPv4.HasAddress = p, true
			return nil
		}},
		{key: "ipv4.autodetect", def: "", apply: func(c *Config, raw any) error {
			s, err := asString(raw)
			if err != nil {
				return err
			}
			if s != "" && c.IPv4.HasAddress {
				return errors.New("set either ipv4.address or ipv4.autodetect, not both")
			}
			if s == "" {
				s = "first-found"
			}
			c.IPv4.Autodetect, err = autodetect.ParseMethod(s)
			return err
		}},
		{key: "bgp.secretsDir", def: "/etc/tabby/secrets", apply: func(c *Config, raw any) (err error) {
			c.BGP.SecretsDir, err = absPath(raw)
			return err
		}},
		{key: "bgp.connectRetry", def: "5s", apply: func(c *Config, raw any) (err error) {
			c.BGP.ConnectRetry, err = durationAtLeast(raw, time.Second)
			return err
		}},
		{key: "bgp.holdTime", def: "90s", apply: func(c *Config, raw any) (err error) {
			if c.BGP.HoldTime, err = asDuration(raw); err != nil {
				return err
			}
			// RFC 4271 §4.2: zero (no keepalives) or at least three seconds.
			if c.BGP.HoldTime != 0 && c.BGP.HoldTime < 3*time.Second {
				return fmt.Errorf("%s must be 0 or at least 3s (RFC 4271)", c.BGP.HoldTime)
			}
			return nil
		}},
		{key: "bgp.keepalive", def: "30s", apply: func(c *Config, raw any) (err error) {
			if c.BGP.Keepalive, err = durationAtLeast(raw, time.Second); err != nil {
				return err
			}
			if c.BGP.HoldTime != 0 && c.BGP.Keepalive >= c.BGP.HoldTime {
				return fmt.Errorf("%s must be shorter than bgp.holdTime (%s)", c.BGP.Keepalive, c.BGP.HoldTime)
			}
			return nil
		}},
		{key: "bgp.readiness.explicitPeers", def: string(bgp.ExplicitPeersAny), apply: func(c *Config, raw any) error {
			s, err := asString(raw)
			if err != nil {
				return err
			}
			c.BGP.ReadinessExplicitPeers, err = bgp.ParseExplicitPeers(s)
			return err
		}},
		{key: "dataplane.routeProtocol", def: 95, apply: func(c *Config, raw any) (err error) {
			if c.Data.RouteProtocol, err = asInt(raw); err != nil {
				return err
			}
			p := c.Data.RouteProtocol
			if p < 1 || p > 255 {
				return fmt.Errorf("%d is not a route protocol number (1..255)", p)
			}
			// 1..4 are the kernel's own (redirect, kernel, boot, static): tabby would adopt and
			// sweep routes that the kernel and the operator installed.
			if p <= 4 {
				return fmt.Errorf("%d is reserved by the kernel (redirect, kernel, boot, static); use 5..255", p)
			}
			return nil
		}},
		{key: "dataplane.routeRefreshInterval", def: "90s", apply: func(c *Config, raw any) (err error) {
			if c.Data.RouteRefreshInterval, err = asDuration(raw); err != nil {
				return err
			}
			if d := c.Data.RouteRefreshInterval; d != 0 && d < time.Second {
				return fmt.Errorf("%s must be 0 (off) or at least 1s", d)
			}
			return nil
		}},
		{key: "dataplane.mtu", def: 0, apply: func(c *Config, raw any) (err error) {
			if c.Data.MTU, err = asInt(raw); err != nil {
				return err
			}
			if m := c.Data.MTU; m != 0 && (m < 576 || m > 65535) {
				return fmt.Errorf("%d must be 0 (detect) or 576..65535", m)
			}
			return nil
		}},
		{key: "dataplane.iptablesBackend", def: "auto", apply: func(c *Config, raw any) (err error) {
			if c.Data.IPTablesBackend, err = asString(raw); err != nil {
				return err
			}
			switch c.Data.IPTablesBackend {
			case "auto", "nft", "legacy":
				return nil
			}
			return fmt.Errorf("%q must be auto, nft or legacy", c.Data.IPTablesBackend)
		}},
		{key: "health.listen", def: "127.0.0.1:9099", apply: func(c *Config, raw any) (err error) {
			c.HealthListen, err = listenAddr(raw)
			return err
		}},
		{key: "metrics.listen", def: "127.0.0.1:9091", apply: func(c *Config, raw any) (err error) {
			c.MetricsListen, err = listenAddr(raw)
			return err
		}},
		{key: "dataDir", def: "/var/lib/tabby", apply: func(c *Config, raw any) (err error) {
			c.DataDir, err = absPath(raw)
			return err
		}},
		{key: "runDir", def: "/run/tabby", apply: func(c *Config, raw any) (err error) {
			c.RunDir, err = absPath(raw)
			return err
		}},
		// The default of statusSocket depends on runDir, so it is filled in after decoding.
		{key: "statusSocket", def: "", apply: func(c *Config, raw any) (err error) {
			s, err := asString(raw)
			if err != nil {
				return err
			}
			if s == "" {
				c.StatusSocket = filepath.Join(c.RunDir, "tabbyd.sock")
				return nil
			}
			c.StatusSocket, err = absPath(s)
			return err
		}},
		{key: "logLevel", def: "info", flag: "log-level", apply: func(c *Config, raw any) error {
			s, err := asString(raw)
			if err != nil {
				return err
			}
			switch strings.ToLower(s) {
			case "debug":
				c.LogLevel = slog.LevelDebug
			case "info":
				c.LogLevel = slog.LevelInfo
			case "warn", "warning":
				c.LogLevel = slog.LevelWarn
			case "error":
				c.LogLevel = slog.LevelError
			default:
				return fmt.Errorf("%q must be debug, info, warn or error", s)
			}
			return nil
		}},
	}
}

// labelsKey is decoded apart from the other keys: viper lower-cases the keys of maps, and
// label keys are case-sensitive.
const labelsKey = "labels"

// LoadConfig merges defaults, the configuration file, TABBY_* environment variables and
// the flags the user set (in rising precedence), and validates the result. Every refused
// value is a *ConfigError naming its key.
func LoadConfig(opts LoadOptions) (*Config, error) {
	v := viper.New()
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	for _, s := range settings() {
		v.SetDefault(s.key, s.def)
		if s.flag != "" && opts.Flags != nil {
			if f := opts.Flags.Lookup(s.flag); f != nil {
				if err := v.BindPFlag(s.key, f); err != nil {
					return nil, fmt.Errorf("bind flag --%s: %w", s.flag, err)
				}
			}
		}
	}

	cfg := &Config{}
	if opts.File == "" && opts.Flags != nil && opts.Flags.Changed("config") {
		opts.File, _ = opts.Flags.GetString("config")
	}
	file, explicit := opts.File, true
	if file == "" {
		file, explicit = DefaultConfigFile, false
	}
	raw, err := readConfigFile(file, explicit)
	if err != nil {
		return nil, err
	}
	// Taken before viper sees the map: MergeConfigMap lower-cases its keys in place.
	fileLabels := map[string]any{}
	if raw != nil {
		cfg.File = file
		if err := checkKeys(file, raw); err != nil {
			return nil, err
		}
		for k, v := range raw {
			if m, ok := v.(map[string]any); ok && strings.ToLower(k) == labelsKey {
				fileLabels = m
				delete(raw, k)
			}
		}
		if err := v.MergeConfigMap(raw); err != nil {
			return nil, &ConfigError{Key: file, Msg: err.Error()}
		}
	}

	for _, s := range settings() {
		if err := s.apply(cfg, v.Get(s.key)); err != nil {
			return nil, &ConfigError{Key: s.key, Msg: err.Error()}
		}
	}
	if err := cfg.Etcd.Validate(); err != nil {
		var ce *datastore.ConfigError
		if errors.As(err, &ce) {
			return nil, &ConfigError{Key: ce.Key, Msg: ce.Problem}
		}
		return nil, &ConfigError{Key: "etcd", Msg: err.Error()}
	}
	if cfg.Labels, err = loadLabels(fileLabels); err != nil {
		return nil, &ConfigError{Key: labelsKey, Msg: err.Error()}
	}
	return cfg, nil
}

// readConfigFile parses the YAML file into a map that keeps the keys' case. A missing
// default file is no configuration at all; a missing file named with --config is an error.
func readConfigFile(file string, explicit bool) (map[string]any, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil, nil
	}
	if err != nil {
		return nil, &ConfigError{Key: file, Msg: "cannot read the configuration file: " + unwrapPathError(err)}
	}
	raw := map[string]any{}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, &ConfigError{Key: file, Msg: strings.ReplaceAll(err.Error(), "\n", "; ")}
	}
	return raw, nil
}

// checkKeys refuses keys tabbyd does not know, so that a typo is not silently ignored.
// Keys match case-insensitively, as viper matches them; sections nest (bgp.readiness.…).
func checkKeys(file string, raw map[string]any) error {
	known := map[string]bool{}
	sections := map[string]bool{}
	for _, s := range settings() {
		key := strings.ToLower(s.key)
		known[key] = true
		for i, c := range key {
			if c == '.' {
				sections[key[:i]] = true
			}
		}
	}
	if _, ok := raw[labelsKey]; ok {
		if _, isMap := raw[labelsKey].(map[string]any); !isMap && raw[labelsKey] != nil {
			return &ConfigError{Key: labelsKey, Msg: "must be a mapping of label names to values"}
		}
	}
	return checkSection(file, "", raw, known, sections)
}

// checkSection checks the keys of one mapping, at path (the empty path is the top), and
// the sections in it in turn.
func checkSection(file, path string, raw map[string]any, known, sections map[string]bool) error {
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		full := k
		if path != "" {
			full = path + "." + k
		}
		lk := strings.ToLower(full)
		switch {
		case lk == labelsKey:
		case sections[lk]:
			sub, ok := raw[k].(map[string]any)
			if !ok {
				if raw[k] == nil {
					continue
				}
				return &ConfigError{Key: full, Msg: "must be a mapping"}
			}
			if err := checkSection(file, full, sub, known, sections); err != nil {
				return err
			}
		case !known[lk]:
			return &ConfigError{Key: file, Msg: fmt.Sprintf("unknown key %q", full)}
		}
	}
	return nil
}

// loadLabels takes TABBY_LABELS ("k=v,k2=v2") over the file's labels mapping.
func loadLabels(file map[string]any) (map[string]string, error) {
	out := map[string]string{}
	if env, ok := os.LookupEnv(EnvPrefix + "_LABELS"); ok && env != "" {
		for _, kv := range strings.Split(env, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok {
				return nil, fmt.Errorf("%s_LABELS: %q is not key=value", EnvPrefix, kv)
			}
			out[k] = val
		}
	} else {
		for k, v := range file {
			s, err := asString(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = s
		}
	}
	for k, v := range out {
		if err := validLabel(k, v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Label syntax as Kubernetes and Calico's selectors accept it.
var (
	labelNameRE   = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	labelPrefixRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	labelValueRE  = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
	nodeNameRE    = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

func validLabel(k, v string) error {
	name := k
	if prefix, n, ok := strings.Cut(k, "/"); ok {
		if len(prefix) > 253 || !labelPrefixRE.MatchString(prefix) {
			return fmt.Errorf("%q: the prefix must be a DNS subdomain", k)
		}
		name = n
	}
	if !labelNameRE.MatchString(name) {
		return fmt.Errorf("%q is not a valid label name", k)
	}
	if !labelValueRE.MatchString(v) {
		return fmt.Errorf("%s: %q is not a valid label value", k, v)
	}
	return nil
}

// validNodeName accepts the names Calico accepts for nodes: a lower-case DNS subdomain.
// It also keeps the name usable as one etcd key segment.
func validNodeName(n string) error {
	if len(n) > 253 || !nodeNameRE.MatchString(n) {
		return fmt.Errorf("%q is not a valid node name (lower-case letters, digits, '-' and '.')", n)
	}
	return nil
}

// parseNodeAddress reads "10.0.0.5/24" or "10.0.0.5". Without a prefix length the result
// has Bits() == -1: the interface that holds the address decides.
func parseNodeAddress(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 address with a prefix length", s)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 address", s)
	}
	return netip.PrefixFrom(a, -1), nil
}

func asString(raw any) (string, error) {
	switch v := raw.(type) {
	case nil:
		return "", nil
	case string:
		return strings.TrimSpace(v), nil
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(v), nil
	}
	// The value itself is not repeated: it may be a password.
	return "", fmt.Errorf("must be a single value, not %s", shapeOf(raw))
}

// shapeOf names the YAML shape of a value that should have been a scalar.
func shapeOf(raw any) string {
	switch raw.(type) {
	case []any, []string:
		return "a list"
	case map[string]any, map[any]any:
		return "a map"
	}
	return fmt.Sprintf("a %T", raw)
}

// asStringList accepts a YAML list, a []string from a flag, or a comma-separated string
// (environment variables).
func asStringList(raw any) ([]string, error) {
	var items []string
	switch v := raw.(type) {
	case nil:
	case string:
		items = strings.Split(v, ",")
	case []string:
		items = v
	case []any:
		for _, e := range v {
			s, err := asString(e)
			if err != nil {
				return nil, err
			}
			items = append(items, s)
		}
	default:
		return nil, fmt.Errorf("%v must be a list", raw)
	}
	var out []string
	for _, s := range items {
		if s = strings.Trim(strings.TrimSpace(s), "[]"); s != "" {
			out = append(out, s)
		}
	}
	return out, nil
}

func asInt(raw any) (int, error) {
	switch v := raw.(type) {
	case int:
		return v, nil
	case int64:
		return int(v), nil
	case uint64:
		return int(v), nil
	case float64:
		if v == float64(int(v)) {
			return int(v), nil
		}
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("%v is not a whole number", raw)
}

// asDuration reads Go duration text ("90s", "1m30s"); a bare number counts as seconds.
func asDuration(raw any) (time.Duration, error) {
	switch v := raw.(type) {
	case int, int64, uint64:
		n, _ := asInt(v)
		return time.Duration(n) * time.Second, nil
	case string:
		s := strings.TrimSpace(v)
		if n, err := strconv.Atoi(s); err == nil {
			return time.Duration(n) * time.Second, nil
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration such as 90s", v)
		}
		if d < 0 {
			return 0, fmt.Errorf("%s must not be negative", d)
		}
		return d, nil
	}
	return 0, fmt.Errorf("%v is not a duration such as 90s", raw)
}

func durationAtLeast(raw any, least time.Duration) (time.Duration, error) {
	d, err := asDuration(raw)
	if err != nil {
		return 0, err
	}
	if d < least {
		return 0, fmt.Errorf("%s must be at least %s", d, least)
	}
	return d, nil
}

func absPath(raw any) (string, error) {
	s, err := asString(raw)
	if err != nil {
		return "", err
	}
	if !filepath.IsAbs(s) {
		return "", fmt.Errorf("%q must be an absolute path", s)
	}
	return filepath.Clean(s), nil
}

// readableFile checks at start that a named file can be opened, so that a wrong path is
// reported as configuration, not as an etcd connection failure minutes later.
func readableFile(raw any) (string, error) {
	s, err := asString(raw)
	if err != nil || s == "" {
		return s, err
	}
	f, err := os.Open(s)
	if err != nil {
		return "", errors.New(unwrapPathError(err))
	}
	f.Close()
	return s, nil
}

// listenAddr accepts host:port with a literal IP host (or an empty host for every
// address), or "" to switch the listener off.
func listenAddr(raw any) (string, error) {
	s, err := asString(raw)
	if err != nil || s == "" {
		return s, err
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port", s)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			return "", fmt.Errorf("%q: %q is not an IP address", s, host)
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", fmt.Errorf("%q: %q is not a port number", s, port)
	}
	return s, nil
}

func unwrapPathError(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Path + ": " + pe.Err.Error()
	}
	return err.Error()
}

// ResolveNodeName returns the configured node name or, like Calico, the lower-cased
// hostname.
func (c *Config) ResolveNodeName() (string, error) {
	if c.NodeName != "" {
		return c.NodeName, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node name: no nodeName configured and no hostname: %w", err)
	}
	name := strings.ToLower(strings.TrimSpace(h))
	if err := validNodeName(name); err != nil {
		return "", &ConfigError{Key: "nodeName", Msg: "not set, and the hostname " + err.Error()}
	}
	return name, nil
}

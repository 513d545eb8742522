package daemon

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/datastore"
)

// testFlags returns the flags cmd/tabbyd defines, parsed from args.
func testFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("tabbyd", pflag.ContinueOnError)
	AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tabbyd.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDefaults(t *testing.T) {
	// Only the missing default file is read, so the defaults show through.
	cfg, err := LoadConfig(LoadOptions{File: writeFile(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Etcd: datastore.Config{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/calico"},
		BGP: BGPConfig{SecretsDir: "/etc/tabby/secrets", ConnectRetry: 5 * time.Second, HoldTime: 90 * time.Second, Keepalive: 30 * time.Second,
			ReadinessExplicitPeers: bgp.ExplicitPeersAny},
		Data:          DataplaneConfig{RouteProtocol: 95, RouteRefreshInterval: 90 * time.Second, IPTablesBackend: "auto"},
		Labels:        map[string]string{},
		HealthListen:  "127.0.0.1:9099",
		MetricsListen: "127.0.0.1:9091",
		DataDir:       "/var/lib/tabby",
		RunDir:        "/run/tabby",
		StatusSocket:  "/run/tabby/tabbyd.sock",
		LogLevel:      slog.LevelInfo,
		File:          cfg.File,
	}
	if cfg.IPv4.Autodetect.String() != "first-found" || cfg.IPv4.HasAddress {
		t.Errorf("ipv4 = %+v, want first-found", cfg.IPv4)
	}
	cfg.IPv4 = IPv4Config{}
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", *cfg, want)
	}
}

// TestConfigPrecedence: file < TABBY_* environment < flags.
func TestConfigPrecedence(t *testing.T) {
	file := writeFile(t, `
nodeName: from-file
etcd:
  endpoints: ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
  prefix: /tabby
ipv4:
  address: 10.30.0.206/24
dataplane:
  routeProtocol: 96
  mtu: 9001
labels:
  Rack: A1
  example.com/zone: east
runDir: /run/tabby-a
logLevel: warn
`)
	cfg, err := LoadConfig(LoadOptions{File: file})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "from-file" || cfg.Etcd.Prefix != "/tabby" || cfg.Data.RouteProtocol != 96 || cfg.Data.MTU != 9001 ||
		cfg.IPv4.Address.String() != "10.30.0.206/24" || cfg.LogLevel != slog.LevelWarn ||
		cfg.StatusSocket != "/run/tabby-a/tabbyd.sock" || cfg.File != file {
		t.Errorf("file values not taken: %+v", cfg)
	}
	if want := []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}; !reflect.DeepEqual(cfg.Etcd.Endpoints, want) {
		t.Errorf("endpoints = %v, want %v", cfg.Etcd.Endpoints, want)
	}
	// Label keys keep their case: selectors are case-sensitive.
	if want := map[string]string{"Rack": "A1", "example.com/zone": "east"}; !reflect.DeepEqual(cfg.Labels, want) {
		t.Errorf("labels = %v, want %v", cfg.Labels, want)
	}

	t.Setenv("TABBY_NODENAME", "from-env")
	t.Setenv("TABBY_ETCD_ENDPOINTS", "http://10.0.0.3:2379,http://10.0.0.4:2379")
	t.Setenv("TABBY_DATAPLANE_ROUTEPROTOCOL", "97")
	t.Setenv("TABBY_LOGLEVEL", "debug")
	t.Setenv("TABBY_LABELS", "Rack=B2")
	cfg, err = LoadConfig(LoadOptions{File: file})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "from-env" || cfg.Data.RouteProtocol != 97 || cfg.LogLevel != slog.LevelDebug || cfg.Data.MTU != 9001 {
		t.Errorf("env values not taken over the file: %+v", cfg)
	}
	if want := []string{"http://10.0.0.3:2379", "http://10.0.0.4:2379"}; !reflect.DeepEqual(cfg.Etcd.Endpoints, want) {
		t.Errorf("endpoints = %v, want %v", cfg.Etcd.Endpoints, want)
	}
	if want := map[string]string{"Rack": "B2"}; !reflect.DeepEqual(cfg.Labels, want) {
		t.Errorf("labels = %v, want %v", cfg.Labels, want)
	}

	fs := testFlags(t, "--node-name", "from-flag", "--etcd-endpoints", "https://10.0.0.5:2379", "--log-level", "error")
	cfg, err = LoadConfig(LoadOptions{File: file, Flags: fs})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "from-flag" || cfg.LogLevel != slog.LevelError || !reflect.DeepEqual(cfg.Etcd.Endpoints, []string{"https://10.0.0.5:2379"}) {
		t.Errorf("flags not taken over env and file: %+v", cfg)
	}
	// Flags the user did not set leave the lower layers alone.
	cfg, err = LoadConfig(LoadOptions{File: file, Flags: testFlags(t)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "from-env" {
		t.Errorf("an unset flag overrode the environment: nodeName %q", cfg.NodeName)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("not checked here"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		file string
		want string // the whole error line
	}{
		{name: "route protocol out of range", file: "dataplane:\n  routeProtocol: 300\n",
			want: "config: dataplane.routeProtocol: 300 is not a route protocol number (1..255)"},
		{name: "route protocol of the kernel", file: "dataplane:\n  routeProtocol: 2\n",
			want: "config: dataplane.routeProtocol: 2 is reserved by the kernel (redirect, kernel, boot, static); use 5..255"},
		{name: "route protocol not a number", file: "dataplane:\n  routeProtocol: bird\n",
			want: "config: dataplane.routeProtocol: bird is not a whole number"},
		{name: "unknown top key", file: "nodeNmae: x\n",
			want: `config: FILE: unknown key "nodeNmae"`},
		{name: "unknown nested key", file: "dataplane:\n  routeProtocl: 95\n",
			want: `config: FILE: unknown key "dataplane.routeProtocl"`},
		{name: "section not a mapping", file: "etcd: http://x:2379\n",
			want: "config: etcd: must be a mapping"},
		{name: "bad endpoint", file: "etcd:\n  endpoints: [10.0.0.1:2379]\n",
			want: `config: etcd.endpoints: "10.0.0.1:2379" is not an etcd URL such as http://10.0.0.10:2379: it must be of the form http(s)://host:port`},
		{name: "endpoint without port", file: "etcd:\n  endpoints: [\"https://etcd.example\"]\n",
			want: `config: etcd.endpoints: "https://etcd.example" is not an etcd URL such as http://10.0.0.10:2379: it must be of the form http(s)://host:port`},
		{name: "certificate without key", file: "etcd:\n  certFile: " + dir + "/cert.pem\n",
			want: "config: etcd.keyFile: required with etcd.certFile (the client certificate's key)"},
		{name: "username without password", file: "etcd:\n  username: tabbyd\n",
			want: "config: etcd.password: required with etcd.username"},
		{name: "empty endpoints", file: "etcd:\n  endpoints: []\n",
			want: "config: etcd.endpoints: at least one endpoint is required"},
		{name: "missing CA file", file: "etcd:\n  caFile: " + dir + "/nope.pem\n",
			want: "config: etcd.caFile: " + dir + "/nope.pem: no such file or directory"},
		{name: "bad prefix", file: "etcd:\n  prefix: calico\n",
			want: `config: etcd.prefix: "calico" must be an absolute key root such as /calico`},
		{name: "bad address", file: "ipv4:\n  address: 10.0.0.300/24\n",
			want: `config: ipv4.address: "10.0.0.300/24" is not an IPv4 address with a prefix length`},
		{name: "address and autodetect", file: "ipv4:\n  address: 10.0.0.3/24\n  autodetect: first-found\n",
			want: "config: ipv4.autodetect: set either ipv4.address or ipv4.autodetect, not both"},
		{name: "bad autodetect", file: "ipv4:\n  autodetect: nearest\n",
			want: `config: ipv4.autodetect: "nearest" is not an autodetection method (first-found, interface=REGEX, skip-interface=REGEX, can-reach=IP, cidr=CIDR)`},
		{name: "bad refresh interval", file: "dataplane:\n  routeRefreshInterval: soon\n",
			want: `config: dataplane.routeRefreshInterval: "soon" is not a duration such as 90s`},
		{name: "bad mtu", file: "dataplane:\n  mtu: 100\n",
			want: "config: dataplane.mtu: 100 must be 0 (detect) or 576..65535"},
		{name: "bad backend", file: "dataplane:\n  iptablesBackend: ebpf\n",
			want: `config: dataplane.iptablesBackend: "ebpf" must be auto, nft or legacy`},
		{name: "bad listen", file: "health:\n  listen: 9099\n",
			want: `config: health.listen: "9099" is not host:port`},
		{name: "relative data dir", file: "dataDir: var/lib/tabby\n",
			want: `config: dataDir: "var/lib/tabby" must be an absolute path`},
		{name: "bad log level", file: "logLevel: loud\n",
			want: `config: logLevel: "loud" must be debug, info, warn or error`},
		{name: "bad node name", file: "nodeName: Worker_1\n",
			want: `config: nodeName: "Worker_1" is not a valid node name (lower-case letters, digits, '-' and '.')`},
		{name: "bad label", file: "labels:\n  rack: \"a b\"\n",
			want: `config: labels: rack: "a b" is not a valid label value`},
		{name: "keepalive over hold", file: "bgp:\n  holdTime: 9s\n  keepalive: 10s\n",
			want: "config: bgp.keepalive: 10s must be shorter than bgp.holdTime (9s)"},
		{name: "readiness rule unknown", file: "bgp:\n  readiness:\n    explicitPeers: some\n",
			want: `config: bgp.readiness.explicitPeers: "some" is neither "any" nor "all"`},
		{name: "unknown key two sections down", file: "bgp:\n  readiness:\n    explicitPeer: all\n",
			want: `config: FILE: unknown key "bgp.readiness.explicitPeer"`},
		{name: "password not a single value", file: "etcd:\n  password: [Sekr1t]\n",
			want: "config: etcd.password: must be a single value, not a list"},
		{name: "not yaml", file: "nodeName: [x\n",
			want: "config: FILE: yaml: line 1: did not find expected ',' or ']'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := writeFile(t, tc.file)
			_, err := LoadConfig(LoadOptions{File: file})
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error = %v, want a *ConfigError", err)
			}
			want := strings.ReplaceAll(tc.want, "FILE", file)
			if err.Error() != want {
				t.Errorf("error:\n got %s\nwant %s", err, want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is more than one line: %q", err)
			}
		})
	}
}

func TestConfigFileMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.yaml")
	_, err := LoadConfig(LoadOptions{File: missing})
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing --config file: error = %v", err)
	}
}

func TestConfigEnvErrorNamesKey(t *testing.T) {
	t.Setenv("TABBY_DATAPLANE_ROUTEPROTOCOL", "0")
	_, err := LoadConfig(LoadOptions{File: writeFile(t, "")})
	if err == nil || err.Error() != "config: dataplane.routeProtocol: 0 is not a route protocol number (1..255)" {
		t.Errorf("error = %v", err)
	}
}

// TestExampleConfig keeps configs/tabbyd.yaml, which documents every key with its default,
// loadable and equal to the built-in defaults.
func TestExampleConfig(t *testing.T) {
	example, err := LoadConfig(LoadOptions{File: "../configs/tabbyd.yaml"})
	if err != nil {
		t.Fatalf("configs/tabbyd.yaml: %v", err)
	}
	defaults, err := LoadConfig(LoadOptions{File: writeFile(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	example.File, defaults.File = "", ""
	if !reflect.DeepEqual(example, defaults) {
		t.Errorf("configs/tabbyd.yaml differs from the defaults:\n file %+v\n code %+v", *example, *defaults)
	}
}

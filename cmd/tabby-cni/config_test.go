package main

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

func fixedHost(name string) environment {
	return environment{Hostname: func() (string, error) { return name, nil }}
}

func TestLoadConfigDefaults(t *testing.T) {
	c, err := loadConfig([]byte(`{"cniVersion":"1.0.0","name":"tabby","type":"tabby-cni","etcd_endpoints":"http://10.0.0.10:2379, https://10.0.0.11:2379","mtu":0}`), fixedHost("worker-1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"http://10.0.0.10:2379", "https://10.0.0.11:2379"}; !slices.Equal(c.Etcd.Endpoints, want) {
		t.Errorf("endpoints = %v, want %v", c.Etcd.Endpoints, want)
	}
	if c.Nodename != "worker-1" || c.DataDir != "/var/lib/tabby" || c.RunDir != "/run/tabby" || c.MTU != 0 || c.LogLevel != slog.LevelInfo {
		t.Errorf("defaults wrong: %+v", c)
	}
	if c.Network != "tabby" || c.CNIVersion != "1.0.0" {
		t.Errorf("network %q version %q", c.Network, c.CNIVersion)
	}
}

func TestLoadConfigExplicit(t *testing.T) {
	c, err := loadConfig([]byte(`{"cniVersion":"1.0.0","name":"net1","type":"tabby-cni",
		"etcd_endpoints":"https://e:2379","etcd_ca_cert_file":"/ca","etcd_cert_file":"/c","etcd_key_file":"/k","etcd_prefix":"/tabby",
		"nodename":"node-7","mtu":1440,"ipam":{"type":"calico-ipam","ipv4_pools":["10.244.0.0/16","10.10.0.0/24"]},"data_dir":"/d","run_dir":"/r","log_level":"debug","log_file":"/var/log/tabby-cni.log"}`), fixedHost("ignored"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Etcd.CAFile != "/ca" || c.Etcd.CertFile != "/c" || c.Etcd.KeyFile != "/k" || c.Etcd.Prefix != "/tabby" ||
		c.Nodename != "node-7" || c.MTU != 1440 || c.DataDir != "/d" || c.RunDir != "/r" ||
		c.LogLevel != slog.LevelDebug || c.LogFile != "/var/log/tabby-cni.log" {
		t.Errorf("explicit values not kept: %+v", c)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.10.0.0/24")}; !slices.Equal(c.Pools, want) {
		t.Errorf("pools %v, want %v", c.Pools, want)
	}
}

func TestLoadConfigErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		conf string
		want string
	}{
		{`{"name":"x","etcd_endpoints":"http://e:2379","mtu":100}`, "invalid network configuration: mtu: must be between 576 and 9000"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","mtu":9001}`, "mtu: must be between 576 and 9000"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","mtu":"big"}`, "not valid JSON"},
		{`{"name":"x","etcd_endpoints":"10.0.0.1:2379"}`, "etcd_endpoints:"},
		{`{"name":"x","etcd_endpoints":"ftp://e:2379"}`, "etcd_endpoints: \"ftp://e:2379\" is not an etcd URL such as http://10.0.0.10:2379: the scheme must be http or https"},
		{`{"name":"x","etcd_endpoints":"http://e"}`, "etcd_endpoints: \"http://e\" is not an etcd URL such as http://10.0.0.10:2379: it must be of the form http(s)://host:port"},
		{`{"name":"x","etcd_endpoints":" , "}`, "etcd_endpoints: \" , \" names no endpoint"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","nodename":"Worker_1"}`, "nodename: \"Worker_1\""},
		{`{"name":"x","etcd_endpoints":"http://e:2379","log_level":"loud"}`, "log_level: \"loud\""},
		{`{"name":"x","etcd_endpoints":"http://e:2379","data_dir":"rel"}`, "data_dir: must be an absolute path"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","run_dir":"rel"}`, "run_dir: must be an absolute path"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","log_file":"rel.log"}`, "log_file: must be an absolute path"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","etcd_cert_file":"/c"}`, "etcd_key_file: required with etcd_cert_file"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","etcd_prefix":"calico"}`, "etcd_prefix: \"calico\" must be an absolute key root"},
		{`{"etcd_endpoints":"http://e:2379"}`, "name: missing"},
		{`{"name":"a/b","etcd_endpoints":"http://e:2379"}`, "name: \"a/b\" must not contain '/'"},
		{`{"name":"x","tabbyd_config":"/nonexistent/tabbyd.yaml"}`, "etcd_endpoints: not set, and tabbyd's configuration /nonexistent/tabbyd.yaml does not exist"},
		{`not json`, "not valid JSON"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","ipam":{"type":"host-local"}}`, "ipam.type: \"host-local\" is not supported"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","ipam":{"ipv4_pools":["Default_Pool"]}}`, "ipam.ipv4_pools: \"Default_Pool\" is neither the CIDR of an IPv4 pool"},
		{`{"name":"x","etcd_endpoints":"http://e:2379","ipam":{"ipv4_pools":["10.244.0.1/16"]}}`, "ipam.ipv4_pools: \"10.244.0.1/16\""},
	} {
		_, err := loadConfig([]byte(tc.conf), fixedHost("h"))
		if err == nil {
			t.Errorf("%s: accepted", tc.conf)
			continue
		}
		var ce *configError
		if !errors.As(err, &ce) {
			t.Errorf("%s: error %v is not a configError", tc.conf, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got  %v\n want it to contain %q", tc.conf, err, tc.want)
		}
		if cniErr := toCNIError(err); cniErr.Code != 7 {
			t.Errorf("%s: CNI code %d, want 7 (invalid network configuration)", tc.conf, cniErr.Code)
		}
	}
}

func TestLoadConfigHostnameLowerCased(t *testing.T) {
	c, err := loadConfig([]byte(`{"name":"x","etcd_endpoints":"http://e:2379"}`), fixedHost("Worker-1.Example"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Nodename != "worker-1.example" {
		t.Errorf("nodename %q, want the lower-cased hostname as tabbyd uses", c.Nodename)
	}
}

func TestLoadConfigHostnameFailure(t *testing.T) {
	env := environment{Hostname: func() (string, error) { return "", errors.New("uname broken") }}
	_, err := loadConfig([]byte(`{"name":"x","etcd_endpoints":"http://e:2379"}`), env)
	if err == nil || !strings.Contains(err.Error(), "nodename: not set and the hostname is unknown: uname broken") {
		t.Fatalf("got %v", err)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfigFromTabbydConfig(t *testing.T) {
	dir := t.TempDir()
	// Keys in the case viper users write them, and in lower case as viper also accepts.
	p := writeFile(t, dir, "tabbyd.yaml", `
nodeName: worker-9
etcd:
  endpoints: ["https://10.0.0.10:2379", "https://10.0.0.11:2379"]
  caFile: /etc/tabby/etcd-ca.pem
  certfile: /etc/tabby/etcd.pem
  keyFile: /etc/tabby/etcd-key.pem
  username: u
  password: p
  prefix: /tabby
dataDir: /srv/tabby
runDir: /run/tabby-2
`)
	c, err := loadConfig([]byte(`{"name":"x","tabbyd_config":"`+p+`","run_dir":"/run/mine"}`), fixedHost("h"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Etcd.Endpoints, []string{"https://10.0.0.10:2379", "https://10.0.0.11:2379"}) ||
		c.Etcd.CAFile != "/etc/tabby/etcd-ca.pem" || c.Etcd.CertFile != "/etc/tabby/etcd.pem" || c.Etcd.KeyFile != "/etc/tabby/etcd-key.pem" ||
		c.Etcd.Username != "u" || c.Etcd.Password != "p" || c.Etcd.Prefix != "/tabby" {
		t.Errorf("etcd settings not taken from tabbyd.yaml: %+v", c)
	}
	if c.Nodename != "worker-9" || c.DataDir != "/srv/tabby" {
		t.Errorf("nodeName/dataDir not taken from tabbyd.yaml: %+v", c)
	}
	if c.RunDir != "/run/mine" {
		t.Errorf("run_dir of the network configuration must win, got %q", c.RunDir)
	}

	// A comma-separated string, as TABBY_ETCD_ENDPOINTS users write it.
	p2 := writeFile(t, dir, "tabbyd2.yaml", "etcd:\n  endpoints: http://a:2379,http://b:2379\n")
	c, err = loadConfig([]byte(`{"name":"x","tabbyd_config":"`+p2+`"}`), fixedHost("h"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Etcd.Endpoints, []string{"http://a:2379", "http://b:2379"}) || c.Nodename != "h" {
		t.Errorf("got %+v", c)
	}
}

func TestLoadConfigBadTabbydConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ content, want string }{
		{"etcd: [unclosed", "tabbyd_config: " + filepath.Join(dir, "f.yaml") + " is not valid YAML"},
		{"nodeName: n\n", "etcd_endpoints: not set, and tabbyd's configuration " + filepath.Join(dir, "f.yaml") + " has no etcd.endpoints"},
		{"etcd:\n  endpoints: [1, 2]\n", "etcd.endpoints: 1 is not a string"},
		{"etcd:\n  endpoints: [\"http://a:2379\"]\n  caFile: [x]\n", "caFile: a []interface {} is not a single value"},
		// A bad password is refused without being shown.
		{"etcd:\n  endpoints: [\"http://a:2379\"]\n  password: [Sekr1t]\n", "password: a []interface {} is not a single value"},
		{"etcd:\n  endpoints: [\"a:2379\"]\n", "etcd_endpoints: \"a:2379\""},
	} {
		p := writeFile(t, dir, "f.yaml", tc.content)
		_, err := loadConfig([]byte(`{"name":"x","tabbyd_config":"`+p+`"}`), fixedHost("h"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got  %v\n want %q", tc.content, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "Sekr1t") {
			t.Errorf("%q: the error shows the password: %v", tc.content, err)
		}
	}
}

func TestPodMTU(t *testing.T) {
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	c := &config{DataDir: dir}

	if got, err := podMTU(c, discard); err != nil || got != 1500 {
		t.Errorf("no file: got %d, %v; want 1500", got, err)
	}
	writeFile(t, dir, "mtu", "1430\n")
	if got, err := podMTU(c, discard); err != nil || got != 1430 {
		t.Errorf("published 1430: got %d, %v", got, err)
	}
	c.MTU = 1400
	if got, err := podMTU(c, discard); err != nil || got != 1400 {
		t.Errorf("configured 1400 must win: got %d, %v", got, err)
	}
	c.MTU = 0
	writeFile(t, dir, "mtu", "jumbo")
	if _, err := podMTU(c, discard); err == nil || !strings.Contains(err.Error(), `pod MTU file `+filepath.Join(dir, "mtu")+`: "jumbo" is not a decimal number`) {
		t.Errorf("bad file: %v", err)
	}
	writeFile(t, dir, "mtu", "9001")
	if got, err := podMTU(c, discard); err != nil || got != 9001 {
		t.Errorf("published 9001 (AWS, Direct): got %d, %v", got, err)
	}
	writeFile(t, dir, "mtu", "40")
	if _, err := podMTU(c, discard); err == nil || !strings.Contains(err.Error(), "40 is not between 68 and 65535") {
		t.Errorf("out of range: %v", err)
	}
}

func TestHostVethName(t *testing.T) {
	// sha1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d
	if got := hostVethName("abc"); got != "tabbya9993e3647" {
		t.Errorf("hostVethName(abc) = %q", got)
	}
	if got := tempPeerName("abc"); got != "tabbyta9993e364" || len(got) > 15 {
		t.Errorf("tempPeerName(abc) = %q", got)
	}
}

// TestExampleConflist: the shipped example is a valid conflist whose plugin configuration
// this plugin accepts.
func TestExampleConflist(t *testing.T) {
	list, err := libcni.ConfListFromFile("../../configs/cni/10-tabby.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "tabby-cni" {
		t.Fatalf("plugins: %+v", list.Plugins)
	}
	// libcni hands the plugin its configuration with the list's name and version injected.
	var plugin map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &plugin); err != nil {
		t.Fatal(err)
	}
	plugin["name"], plugin["cniVersion"] = list.Name, list.CNIVersion
	b, _ := json.Marshal(plugin)
	c, err := loadConfig(b, fixedHost("ignored"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Nodename != "worker-1" || !slices.Equal(c.Etcd.Endpoints, []string{"http://10.0.0.10:2379"}) || c.MTU != 0 {
		t.Errorf("example loads as %+v", c)
	}
}

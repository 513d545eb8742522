package datastore_test

import (
	"errors"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := datastore.Config{Endpoints: []string{"http://10.0.0.10:2379", "https://etcd.example:2379/"}, CAFile: "/ca.pem",
		CertFile: "/c.pem", KeyFile: "/k.pem", Username: "tabbyd", Password: "p", DialTimeout: time.Second, Prefix: "/tabby"}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
	if err := (datastore.Config{Endpoints: []string{"http://127.0.0.1:2379"}}).Validate(); err != nil {
		t.Errorf("minimal config refused: %v", err)
	}
	cases := []struct {
		name    string
		edit    func(c *datastore.Config)
		key     string
		problem string
	}{
		{"no endpoint", func(c *datastore.Config) { c.Endpoints = nil }, datastore.KeyEndpoints, "at least one endpoint is required"},
		{"no scheme", func(c *datastore.Config) { c.Endpoints = []string{"10.0.0.1:2379"} }, datastore.KeyEndpoints,
			`"10.0.0.1:2379" is not an etcd URL such as http://10.0.0.10:2379: it must be of the form http(s)://host:port`},
		{"other scheme", func(c *datastore.Config) { c.Endpoints = []string{"unix://x:1"} }, datastore.KeyEndpoints,
			`"unix://x:1" is not an etcd URL such as http://10.0.0.10:2379: the scheme must be http or https`},
		{"no port", func(c *datastore.Config) { c.Endpoints = []string{"http://e"} }, datastore.KeyEndpoints,
			`"http://e" is not an etcd URL such as http://10.0.0.10:2379: it must be of the form http(s)://host:port`},
		{"port out of range", func(c *datastore.Config) { c.Endpoints = []string{"http://e:70000"} }, datastore.KeyEndpoints,
			`"http://e:70000" is not an etcd URL such as http://10.0.0.10:2379: the port must be 1-65535`},
		{"path", func(c *datastore.Config) { c.Endpoints = []string{"http://e:2379/v3"} }, datastore.KeyEndpoints,
			`"http://e:2379/v3" is not an etcd URL such as http://10.0.0.10:2379: it must be only http(s)://host:port`},
		{"certificate without key", func(c *datastore.Config) { c.KeyFile = "" }, datastore.KeyKeyFile, "required with etcd.certFile (the client certificate's key)"},
		{"key without certificate", func(c *datastore.Config) { c.CertFile = "" }, datastore.KeyCertFile, "required with etcd.keyFile (the client certificate)"},
		{"username without password", func(c *datastore.Config) { c.Password = "" }, datastore.KeyPassword, "required with etcd.username"},
		{"password without username", func(c *datastore.Config) { c.Username = "" }, datastore.KeyUsername, "required with etcd.password"},
		{"negative dial timeout", func(c *datastore.Config) { c.DialTimeout = -time.Second }, datastore.KeyDialTimeout, "-1s is negative"},
		{"relative prefix", func(c *datastore.Config) { c.Prefix = "calico" }, datastore.KeyPrefix, `"calico" must be an absolute key root such as /calico`},
		{"root prefix", func(c *datastore.Config) { c.Prefix = "/" }, datastore.KeyPrefix, `"/" must be an absolute key root such as /calico`},
	}
	for _, tc := range cases {
		c := ok
		c.Endpoints = append([]string(nil), ok.Endpoints...)
		tc.edit(&c)
		err := c.Validate()
		var ce *datastore.ConfigError
		if !errors.As(err, &ce) || ce.Key != tc.key || ce.Problem != tc.problem {
			t.Errorf("%s: got %v, want %s: %s", tc.name, err, tc.key, tc.problem)
		}
		if _, err := datastore.New(c); err == nil {
			t.Errorf("%s: New accepted the config", tc.name)
		}
	}
}

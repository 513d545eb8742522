package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// helperEnv turns the TestHelper* functions below into the "package tests" that TestGoTest
// runs through goTest; without it they return at once, as os/exec's TestHelperProcess does.
const helperEnv = "GUESTCHECK_TEST_HELPER"

func TestHelperPass(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		return
	}
	t.Log("carried 1 packet")
}

func TestHelperSkip(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		return
	}
	t.Skip("kernel has no ipip support")
}

func TestHelperFail(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		return
	}
	t.Fatal("route missing")
}

// TestGoTest runs this very test binary as the test binary of a fake package, so that goTest's
// process handling and its judgement are exercised on real -test.v output.
func TestGoTest(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	dir := filepath.Join(root, "fake", "pkg")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(dir, "pkg.test")); err != nil {
		t.Fatal(err)
	}
	t.Setenv(helperEnv, "1")

	for _, tc := range []struct {
		run       string
		allowSkip string
		wantErr   string // a regexp; "" = pass
	}{
		{run: "^TestHelperPass$"},
		{run: "^TestHelper(Pass|Skip)$", wantErr: `TestHelperSkip \(gotest_test\.go:\d+: kernel has no ipip support\)`},
		{run: "^TestHelper(Pass|Skip)$", allowSkip: "no ipip support"},
		{run: "^TestHelper(Pass|Skip)$", allowSkip: "nothing to report", wantErr: "TestHelperSkip"},
		{run: "^TestHelperSkip$", allowSkip: "no ipip support", wantErr: "no test ran"},
		{run: "^TestHelperFail$", wantErr: "exit status 1; failed: TestHelperFail"},
		{run: "^TestNoSuchThing$", wantErr: "no test ran"},
	} {
		var allow *regexp.Regexp
		if tc.allowSkip != "" {
			allow = regexp.MustCompile(tc.allowSkip)
		}
		var out bytes.Buffer
		err := goTest(root, "./fake/pkg", tc.run, time.Minute, allow, nil, &out)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("-run %s -allow-skip %q: %v\noutput:\n%s", tc.run, tc.allowSkip, err, out.String())
		case tc.wantErr != "" && (err == nil || !regexp.MustCompile(tc.wantErr).MatchString(err.Error())):
			t.Errorf("-run %s -allow-skip %q: error %v, want one matching %q\noutput:\n%s", tc.run, tc.allowSkip, err, tc.wantErr, out.String())
		}
	}

	if err := goTest(root, "./fake/other", "^TestHelperPass$", time.Minute, nil, nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "no test binary") {
		t.Errorf("missing binary: error %v, want one saying there is no test binary", err)
	}
}

func TestReportVerdict(t *testing.T) {
	for _, tc := range []struct {
		name    string
		output  string
		wantErr string
	}{
		{"pass", "=== RUN   TestIPIP\n--- PASS: TestIPIP (0.10s)\nPASS\n", ""},
		{"subtest skip", "=== RUN   TestTunl\n=== RUN   TestTunl/adopt\n    tunl_test.go:9: kernel has no ipip support\n    --- SKIP: TestTunl/adopt (0.00s)\n--- PASS: TestTunl (0.00s)\n",
			"TestTunl/adopt (tunl_test.go:9: kernel has no ipip support)"},
		{"nothing ran", "testing: warning: no tests to run\nPASS\n", "no test ran"},
		{"fail", "=== RUN   TestIPIP\n    x_test.go:3: boom\n--- FAIL: TestIPIP (0.00s)\nFAIL\n", "failed: TestIPIP"},
	} {
		var r testReport
		for line := range strings.Lines(tc.output) {
			r.line(strings.TrimRight(line, "\n"))
		}
		err := r.verdict("routing.test", "IPIP", nil)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.wantErr)
		}
	}
}

func TestPackageDir(t *testing.T) {
	for in, want := range map[string]string{"./routing": "routing", "routing/bgp": "routing/bgp", "./a/../b": "b"} {
		if got, err := packageDir(in); err != nil || got != want {
			t.Errorf("packageDir(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{".", "./", "..", "../x", "/etc"} {
		if _, err := packageDir(bad); err == nil {
			t.Errorf("packageDir(%q) accepted a path outside the module", bad)
		}
	}
}

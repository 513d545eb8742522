package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("health:\n  listen: nowhere\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{args: []string{"version"}, code: 0, stdout: "tabbyd dev\n"},
		{args: []string{"run", "--config", bad}, code: 2, stderr: "tabbyd: config: health.listen: \"nowhere\" is not host:port\n"},
		{args: []string{"--config", bad}, code: 2, stderr: "tabbyd: config: health.listen: \"nowhere\" is not host:port\n"},
		{args: []string{"cleanup", "--config", bad}, code: 2, stderr: "tabbyd: config: health.listen: \"nowhere\" is not host:port\n"},
		{args: []string{"nonsense"}, code: 2},
		{args: []string{"run", "extra"}, code: 2},
		{args: []string{"version", "--no-such-flag"}, code: 2},
	} {
		var stdout, stderr bytes.Buffer
		code := execute(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code {
			t.Errorf("tabbyd %s: exit %d, want %d (stderr %q)", strings.Join(tc.args, " "), code, tc.code, stderr.String())
		}
		if tc.stdout != "" && stdout.String() != tc.stdout {
			t.Errorf("tabbyd %s: stdout %q, want %q", strings.Join(tc.args, " "), stdout.String(), tc.stdout)
		}
		if tc.stderr != "" && stderr.String() != tc.stderr {
			t.Errorf("tabbyd %s: stderr %q, want %q", strings.Join(tc.args, " "), stderr.String(), tc.stderr)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"io"
	"slices"
	"strings"
	"testing"
)

// recordingLab is a lab with one host, "master", that records how tabbyctl was run.
type recordingLab struct {
	host  string
	args  []string
	stdin string
}

func (r *recordingLab) HasHost(host string) bool { return host == "master" }

func (r *recordingLab) NodeCtlWithInput(_ context.Context, host string, stdin io.Reader, args ...string) (string, error) {
	r.host, r.args = host, args
	if stdin != nil {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return "", err
		}
		r.stdin = string(b)
	}
	return "applied\n", nil
}

// TestCtlPassesStdinThrough: "tabbylab ctl HOST apply -f -" hands tabbylab's stdin to
// tabbyctl, which reads the manifest from it.
func TestCtlPassesStdinThrough(t *testing.T) {
	rec := &recordingLab{}
	cmd := newCtlCmd(func() ctlRunner { return rec })
	manifest := "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n"
	cmd.SetIn(strings.NewReader(manifest))
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetArgs([]string{"master", "apply", "-f", "-"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rec.host != "master" || !slices.Equal(rec.args, []string{"apply", "-f", "-"}) {
		t.Errorf("tabbyctl ran on %q with %q, want master with [apply -f -]", rec.host, rec.args)
	}
	if rec.stdin != manifest {
		t.Errorf("tabbyctl read %q from stdin, want the manifest %q", rec.stdin, manifest)
	}
}

// TestCtlRefusesUnknownHost names the host that is not in the lab.
func TestCtlRefusesUnknownHost(t *testing.T) {
	cmd := newCtlCmd(func() ctlRunner { return &recordingLab{} })
	cmd.SetArgs([]string{"nosuch", "get", "nodes"})
	err := cmd.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), `unknown host "nosuch"`) {
		t.Errorf("err = %v, want unknown host \"nosuch\"", err)
	}
}

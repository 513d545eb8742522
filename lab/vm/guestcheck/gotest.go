package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// goTest runs the test binary of package pkg (a module-relative path such as "./routing")
// with -test.v, copies its output to out, and judges it with testReport.verdict.
//
// A test that skips on the build machines because their kernel lacks something (ipip) is the
// reason this VM exists; were it to skip here too, `make test-vm` would pass without testing
// anything. So a skip is a failure, and so is a pattern that selects no test at all.
//
// allowSkip, when not nil, names the skips that are expected even here (a test that only has
// something to check on a kernel *without* ipip, say): it is matched against "TestName (reason)".
func goTest(root, pkg, runRe string, timeout time.Duration, allowSkip *regexp.Regexp, extra []string, out io.Writer) error {
	rel, err := packageDir(pkg)
	if err != nil {
		return err
	}
	dir := filepath.Join(root, rel)
	bin := filepath.Join(dir, filepath.Base(rel)+".test")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("no test binary for %s (lab/vm/run.sh builds one for every `guestcheck gotest` line of the plan): %w", pkg, err)
	}

	args := append([]string{"-test.v", "-test.count=1", "-test.run", runRe, "-test.timeout", timeout.String()}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir // where `go test` would run it, so that testdata/ is found
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = w, w
	fmt.Fprintf(out, "guestcheck: %s %s\n", bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("start %s: %w", bin, err)
	}
	w.Close() // the child holds its own copy; EOF on r then means the child is done writing

	rep := testReport{allowSkip: allowSkip}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		fmt.Fprintln(out, sc.Text())
		rep.line(sc.Text())
	}
	scanErr := sc.Err()
	r.Close()
	waitErr := cmd.Wait()
	if scanErr != nil {
		return fmt.Errorf("read output of %s: %w", bin, scanErr)
	}
	return rep.verdict(filepath.Base(bin), runRe, waitErr)
}

// packageDir turns the package argument of a plan line into a clean relative path, refusing
// anything that would leave the package root.
func packageDir(pkg string) (string, error) {
	rel := filepath.Clean(strings.TrimPrefix(pkg, "./"))
	if rel == "." || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("package %q: want a path inside the module, such as ./routing", pkg)
	}
	return rel, nil
}

// testReport is what the -test.v output of a test binary says happened.
type testReport struct {
	passed  []string
	failed  []string
	skipped []string // "TestName (reason)", unless allowSkip matches it
	allowed []string // skips that allowSkip matched
	lastLog string   // the latest t.Log/t.Skip line, which -test.v prints before "--- SKIP"

	allowSkip *regexp.Regexp
}

// line takes one line of -test.v output.
func (r *testReport) line(s string) {
	t := strings.TrimSpace(s)
	name := func(prefix string) string {
		f := strings.Fields(strings.TrimPrefix(t, prefix))
		if len(f) == 0 {
			return "?"
		}
		return f[0]
	}
	switch {
	case strings.HasPrefix(t, "--- PASS: "):
		r.passed = append(r.passed, name("--- PASS: "))
	case strings.HasPrefix(t, "--- FAIL: "):
		r.failed = append(r.failed, name("--- FAIL: "))
	case strings.HasPrefix(t, "--- SKIP: "):
		entry := name("--- SKIP: ")
		if r.lastLog != "" {
			entry += " (" + r.lastLog + ")"
		}
		if r.allowSkip != nil && r.allowSkip.MatchString(entry) {
			r.allowed = append(r.allowed, entry)
		} else {
			r.skipped = append(r.skipped, entry)
		}
	case t == "" || strings.HasPrefix(t, "=== ") || t == "PASS" || t == "FAIL" || strings.HasPrefix(t, "ok "):
	default:
		r.lastLog = t
	}
}

// verdict says whether the run counts as a pass: the binary exited 0, at least one test passed,
// and none failed or skipped.
func (r *testReport) verdict(bin, runRe string, waitErr error) error {
	if waitErr != nil || len(r.failed) > 0 {
		var exitErr *exec.ExitError
		status := "ran"
		if errors.As(waitErr, &exitErr) {
			status = exitErr.String()
		} else if waitErr != nil {
			status = waitErr.Error()
		}
		if len(r.failed) == 0 {
			return fmt.Errorf("%s -test.run %q: %s", bin, runRe, status)
		}
		return fmt.Errorf("%s -test.run %q: %s; failed: %s", bin, runRe, status, strings.Join(r.failed, ", "))
	}
	if len(r.skipped) > 0 {
		return fmt.Errorf("%s -test.run %q: skipped in the VM, which must provide what these tests need: %s",
			bin, runRe, strings.Join(r.skipped, "; "))
	}
	if len(r.passed) == 0 {
		return fmt.Errorf("%s -test.run %q: no test ran (does the pattern still match the tests' names?)", bin, runRe)
	}
	return nil
}

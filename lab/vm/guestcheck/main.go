// Command guestcheck runs inside the tabby test VM (lab/vm), on Debian's stock kernel, the
// checks that the build machines cannot run because their kernel has no ipip module.
//
// It has two subcommands, each of which is one line of the guest's plan (lab/vm/plan):
//
//	guestcheck ipip
//	    sends real IP-in-IP packets between two network namespaces wired the way tabby wires
//	    hosts in IPIP mode (tunl0 adopted, "via <peer> dev tunl0 onlink" routes) and proves
//	    they were encapsulated, carried and decapsulated.
//	guestcheck gotest [-timeout D] [-allow-skip REGEXP] PKG RUN-REGEXP [-- TEST-FLAGS]
//	    runs the test binary that lab/vm/run.sh built for package PKG and insists that the
//	    tests selected by RUN-REGEXP really ran and passed: a skip counts as a failure, since the
//	    VM exists to provide what those tests would skip for, unless -allow-skip matches
//	    "TestName (reason)" (a test with nothing to check on a kernel that has ipip, say).
//
// Both exit 0 on success and 1 with a one-line reason on stderr otherwise; the guest's /init
// turns that into the VM's verdict.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"time"
)

// pkgRoot is where lab/vm/run.sh puts, for a package P, the test binary P/<base>.test and a
// copy of P/testdata, so that tests find their golden files as they do under `go test`.
const pkgRoot = "/tabby/pkg"

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "guestcheck:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError()
	}
	switch args[0] {
	case "ipip":
		if len(args) != 1 {
			return usageError()
		}
		report, err := ipipCheck()
		if err != nil {
			return fmt.Errorf("ipip: %w", err)
		}
		fmt.Fprintln(stdout, report)
		return nil
	case "gotest":
		fs := flag.NewFlagSet("gotest", flag.ContinueOnError)
		fs.SetOutput(stderr)
		timeout := fs.Duration("timeout", 10*time.Minute, "`limit` passed to the test binary as -test.timeout")
		root := fs.String("root", pkgRoot, "`directory` holding the packages' test binaries")
		allow := fs.String("allow-skip", "", "`regexp` of skips that are expected here, matched against \"TestName (reason)\"")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		rest := fs.Args()
		if len(rest) < 2 || (len(rest) > 2 && rest[2] != "--") {
			return usageError()
		}
		var extra []string
		if len(rest) > 2 {
			extra = rest[3:]
		}
		var allowSkip *regexp.Regexp
		if *allow != "" {
			var err error
			if allowSkip, err = regexp.Compile(*allow); err != nil {
				return fmt.Errorf("-allow-skip: %w", err)
			}
		}
		return goTest(*root, rest[0], rest[1], *timeout, allowSkip, extra, stdout)
	default:
		return usageError()
	}
}

func usageError() error {
	return fmt.Errorf("usage: guestcheck ipip | guestcheck gotest [-timeout D] [-root DIR] [-allow-skip REGEXP] PKG RUN-REGEXP [-- TEST-FLAGS]")
}

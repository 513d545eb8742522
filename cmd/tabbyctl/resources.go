package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// writeVerb is one of the commands that write manifests: apply, create, replace, delete.
type writeVerb struct {
	name, past string
	// do writes one resource; skipped says it was left alone on purpose (--skip-*). out
	// takes what it has to say about a write beyond "done" (delete node's released IPAM).
	do func(ctx context.Context, c *datastore.Client, r datastore.Resource, out io.Writer) (skipped bool, err error)
	// validate says whether the manifests must pass the rules of SPEC §3 before anything
	// is written (not for delete, which only needs kinds and names).
	validate bool
}

func newApplyCmd(opts *globalOptions) *cobra.Command {
	verb := writeVerb{name: "apply", past: "applied", validate: true,
		do: func(ctx context.Context, c *datastore.Client, r datastore.Resource, _ io.Writer) (bool, error) {
			_, err := c.ApplyResource(ctx, r)
			return false, err
		}}
	return newWriteCmd(opts, verb, "apply -f FILE",
		"create or update resources from a file or stdin",
		`Creates each resource of the file, or updates it when it exists. When a manifest carries a
resourceVersion (as one from "get -o yaml" does), the update happens only if the stored
resource is still at that version.`, nil)
}

func newCreateCmd(opts *globalOptions) *cobra.Command {
	var skipExists bool
	verb := writeVerb{name: "create", past: "created", validate: true,
		do: func(ctx context.Context, c *datastore.Client, r datastore.Resource, _ io.Writer) (bool, error) {
			_, err := c.CreateResource(ctx, r)
			if skipExists && errors.Is(err, datastore.ErrAlreadyExists) {
				return true, nil
			}
			return false, err
		}}
	return newWriteCmd(opts, verb, "create -f FILE", "create resources from a file or stdin",
		"Creates each resource of the file; one that exists already is an error (unless --skip-exists).",
		func(cmd *cobra.Command) {
			cmd.Flags().BoolVar(&skipExists, "skip-exists", false, "leave resources that exist already alone, without error")
		})
}

func newReplaceCmd(opts *globalOptions) *cobra.Command {
	verb := writeVerb{name: "replace", past: "replaced", validate: true,
		do: func(ctx context.Context, c *datastore.Client, r datastore.Resource, _ io.Writer) (bool, error) {
			_, err := c.UpdateResource(ctx, r)
			return false, err
		}}
	return newWriteCmd(opts, verb, "replace -f FILE", "replace existing resources from a file or stdin",
		"Replaces each resource of the file, which must exist (conditional on its resourceVersion when the manifest has one).", nil)
}

func newDeleteCmd(opts *globalOptions) *cobra.Command {
	var skipNotExists bool
	verb := writeVerb{name: "delete", past: "deleted",
		do: func(ctx context.Context, c *datastore.Client, r datastore.Resource, out io.Writer) (bool, error) {
			var err error
			if r.ResourceKind() == datastore.KindNode {
				err = deleteNode(ctx, c, r, out)
			} else {
				_, err = c.DeleteResource(ctx, r.ResourceKind(), r.Meta().Name, r.Meta().ResourceVersion)
			}
			if skipNotExists && errors.Is(err, datastore.ErrNotFound) {
				return true, nil
			}
			return false, err
		}}
	cmd := newWriteCmd(opts, verb, "delete (-f FILE | KIND NAME...)", "delete resources named by a file or on the command line",
		`Deletes the resources a file describes (conditional on their resourceVersion when they have
one), or those named on the command line: tabbyctl delete ippool my-pool.

Deleting a Node also releases its IPAM data, as calicoctl does: every address the node
holds (its workloads' and tunnel addresses, and those it borrowed from other nodes' blocks)
and its block affinities. Its emptied blocks are deleted; a block still holding addresses
other nodes borrowed from it keeps them and is left affine to no node. Stop tabbyd (and
the workloads) on that host first, or it may take new addresses meanwhile. The Node itself
is deleted last, so if releasing fails the Node stays and the command can be run again.`,
		func(cmd *cobra.Command) {
			cmd.Flags().BoolVar(&skipNotExists, "skip-not-exists", false, "ignore resources that do not exist")
		})
	return cmd
}

// newWriteCmd builds apply, create, replace or delete.
func newWriteCmd(opts *globalOptions, verb writeVerb, use, short, long string, extraFlags func(*cobra.Command)) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args: usageArgs(func(cmd *cobra.Command, args []string) error {
			switch {
			case verb.name == "delete" && file == "" && len(args) < 2:
				return errors.New("give -f FILE, or a kind and at least one name")
			case verb.name == "delete" && file != "" && len(args) > 0:
				return errors.New("give either -f FILE or a kind and names, not both")
			case verb.name != "delete" && file == "":
				return errors.New(`required flag -f (--filename) not set: give a file, or "-" for stdin`)
			case verb.name != "delete" && len(args) > 0:
				return fmt.Errorf("unexpected argument %q: resources come from -f FILE", args[0])
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				resources []datastore.Resource
				err       error
			)
			if file != "" {
				resources, err = readManifests(cmd.InOrStdin(), file)
			} else {
				resources, err = namedResources(args)
			}
			if err != nil {
				return err
			}
			return writeResources(cmd, opts, verb, resources)
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", `file with the resources, YAML or JSON ("-" for stdin)`)
	if extraFlags != nil {
		extraFlags(cmd)
	}
	return cmd
}

// readManifests reads and decodes every resource of a file or stdin.
func readManifests(stdin io.Reader, file string) ([]datastore.Resource, error) {
	var (
		data []byte
		err  error
	)
	if file == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	rs, err := datastore.DecodeManifests(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", displayName(file), err)
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("%s holds no resources", displayName(file))
	}
	return rs, nil
}

func displayName(file string) string {
	if file == "-" {
		return "stdin"
	}
	return file
}

// namedResources turns "KIND NAME..." into bare resources.
func namedResources(args []string) ([]datastore.Resource, error) {
	kind, err := resolveKind(args[0])
	if err != nil {
		return nil, err
	}
	var out []datastore.Resource
	for _, name := range args[1:] {
		r, err := datastore.NewResource(kind)
		if err != nil {
			return nil, err
		}
		r.Meta().Name = name
		out = append(out, r)
	}
	return out, nil
}

// writeResources checks every resource first (so that one bad manifest in a file stores
// nothing), then writes them in order, stopping at the first failure, and reports as
// calicoctl does.
func writeResources(cmd *cobra.Command, opts *globalOptions, verb writeVerb, resources []datastore.Resource) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if verb.validate {
		var invalid []error
		for _, r := range resources {
			if err := datastore.Validate(r); err != nil {
				invalid = append(invalid, err)
			}
		}
		if len(invalid) > 0 {
			for _, err := range invalid {
				fmt.Fprintln(stderr, err)
			}
			fmt.Fprintf(stderr, "Failed to %s %s: nothing was %s\n", verb.name, describeResources(resources), verb.past)
			return errSilentFailure
		}
	}
	ctx, c, release, err := opts.connect(cmd)
	if err != nil {
		return err
	}
	defer release()

	done, skipped := 0, 0
	for _, r := range resources {
		skip, err := verb.do(ctx, c, r, stdout)
		if err != nil {
			if done+skipped == 0 {
				fmt.Fprintf(stderr, "Failed to %s '%s' resource: %v\n", verb.name, r.ResourceKind(), err)
			} else {
				fmt.Fprintf(stderr, "Partial success: %s the first %d out of %d resources:\nHit error: %v\n", verb.past, done+skipped, len(resources), err)
			}
			return errSilentFailure
		}
		if skip {
			skipped++
		} else {
			done++
			if verb.validate {
				reportStoredOnly(stderr, r)
			}
		}
	}
	fmt.Fprintf(stdout, "Successfully %s %s\n", verb.past, describeCount(done, resources))
	if skipped > 0 {
		fmt.Fprintf(stdout, "Skipped %d resource(s) (--skip-*)\n", skipped)
	}
	return nil
}

// reportStoredOnly says, one line per field on stderr, which fields of a resource just
// written tabby stores but does not act on (SPEC §2a): accepted, as Calico accepts them,
// and never silently ignored.
func reportStoredOnly(stderr io.Writer, r datastore.Resource) {
	for _, f := range datastore.StoredOnly(r) {
		fmt.Fprintf(stderr, "%s %q: %s\n", r.ResourceKind(), r.Meta().Name, f)
	}
}

// describeResources names the kinds of a set of resources: "'IPPool' resource(s)".
func describeResources(rs []datastore.Resource) string {
	kinds := map[string]bool{}
	for _, r := range rs {
		kinds[r.ResourceKind()] = true
	}
	if len(kinds) == 1 {
		return fmt.Sprintf("'%s' resource(s)", rs[0].ResourceKind())
	}
	return "resource(s)"
}

func describeCount(n int, rs []datastore.Resource) string {
	return strings.TrimSpace(fmt.Sprintf("%d %s", n, describeResources(rs)))
}

// deleteNode deletes a Node the way calicoctl does: its IPAM data first (ipam.ReleaseNode),
// the Node last, so that a failure on the way leaves the Node in place, to be deleted again.
// The Node must exist, and still be at the manifest's resourceVersion when it has one,
// before anything is released. It says on out what it released.
func deleteNode(ctx context.Context, c *datastore.Client, r datastore.Resource, out io.Writer) error {
	name, rv := r.Meta().Name, r.Meta().ResourceVersion
	stored, err := c.GetResource(ctx, datastore.KindNode, name)
	if err != nil {
		return err
	}
	if cur := stored.Meta().ResourceVersion; rv != "" && rv != cur {
		return fmt.Errorf("%s %q: resourceVersion %s is out of date (stored: %s): read it again and delete that: %w",
			datastore.KindNode, name, rv, cur, datastore.ErrConflict)
	}
	released, err := ipam.New(c, nil).ReleaseNode(ctx, name)
	if err != nil {
		return fmt.Errorf("%w (the Node is left in place: run the command again to finish)", err)
	}
	if _, err := fmt.Fprintln(out, describeNodeRelease(name, released)); err != nil {
		return err
	}
	_, err = c.DeleteResource(ctx, datastore.KindNode, name, rv)
	return err
}

// describeNodeRelease says what ReleaseNode released: "Released 3 addresses and 1 block of
// node worker-3." and, when some of its blocks stay for the addresses other nodes borrowed,
// how many.
func describeNodeRelease(node string, r ipam.NodeRelease) string {
	s := fmt.Sprintf("Released %s and %s of node %s.", plural(r.Addresses, "address", "addresses"),
		plural(r.Blocks(), "block", "blocks"), node)
	if r.BlocksKept > 0 {
		s += fmt.Sprintf(" %s still %s addresses other nodes borrowed and %s, affine to no node.",
			plural(r.BlocksKept, "block", "blocks"), pick(r.BlocksKept, "holds", "hold"), pick(r.BlocksKept, "stays", "stay"))
	}
	return s
}

// plural is "1 block", "2 blocks", "0 blocks".
func plural(n int, one, many string) string {
	return fmt.Sprintf("%d %s", n, pick(n, one, many))
}

// pick is one for 1, many otherwise.
func pick(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

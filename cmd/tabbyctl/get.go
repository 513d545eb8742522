package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/tabby-net/tabby/datastore"
)

var outputFormats = []string{"ps", "wide", "yaml", "json"}

func newGetCmd(opts *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "get KIND [NAME...]",
		Short: "show resources",
		Long: `Shows one kind of resource: all of them, or those named. Kinds: ippool, bgpconfig,
bgppeer, node (and their plural and short forms, as calicoctl takes them).

Output (-o): ps (a table, the default), wide (a wider table), yaml or json (the resources
as stored, with defaults, resourceVersion, uid and creationTimestamp; "get ... -o yaml" of one
resource gives a manifest that "apply -f" takes back).`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := resolveKind(args[0])
			if err != nil {
				return err
			}
			if !isOneOf(output, outputFormats) {
				return usageErrorf("-o %q is not one of %s", output, strings.Join(outputFormats, ", "))
			}
			ctx, c, release, err := opts.connect(cmd)
			if err != nil {
				return err
			}
			defer release()

			names := args[1:]
			var list datastore.ResourceList
			if len(names) == 0 {
				if list, err = c.ListResources(ctx, kind); err != nil {
					return err
				}
				for _, p := range list.Problems {
					fmt.Fprintf(cmd.ErrOrStderr(), "Warning: %s cannot be read: %s\n", p.Key, p.Err)
				}
			} else {
				for _, name := range names {
					r, err := c.GetResource(ctx, kind, name)
					if err != nil {
						return fmt.Errorf("resource does not exist: %s(%s): %w", kind, name, err)
					}
					list.Items = append(list.Items, r)
					rev, _ := strconv.ParseInt(r.Meta().ResourceVersion, 10, 64)
					list.Revision = max(list.Revision, rev)
				}
			}
			out := cmd.OutOrStdout()
			switch output {
			case "yaml", "json":
				return printDocuments(out, kind, list, len(names) == 1, output)
			default:
				tc, err := tableContextFor(ctx, c, kind)
				if err != nil {
					return err
				}
				return printTable(out, kind, list.Items, output == "wide", tc)
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "ps", "output format: "+strings.Join(outputFormats, ", "))
	return cmd
}

func isOneOf(s string, set []string) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

// tableContextFor reads what a table needs beyond the resources: for nodes, the AS number
// they inherit.
func tableContextFor(ctx context.Context, c *datastore.Client, kind string) (tableContext, error) {
	tc := tableContext{defaultAS: datastore.DefaultASNumber}
	if kind != datastore.KindNode {
		return tc, nil
	}
	cfg, err := c.GetBGPConfiguration(ctx, datastore.DefaultBGPConfigurationName)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
	case err != nil:
		return tc, err
	case cfg.Spec.ASNumber != nil:
		tc.defaultAS = *cfg.Spec.ASNumber
	}
	return tc, nil
}

// printTable prints resources as calicoctl's ps-style table.
func printTable(out io.Writer, kind string, items []datastore.Resource, wide bool, tc tableContext) error {
	t := tables[kind]
	headings := t.headings
	if wide {
		headings = t.wide
	}
	w := tabwriter.NewWriter(out, 5, 0, 3, ' ', 0)
	fmt.Fprintln(w, strings.Join(headings, "\t"))
	for _, r := range items {
		cells := make([]string, len(headings))
		for i, h := range headings {
			if h == "NAME" {
				cells[i] = r.Meta().Name
			} else {
				cells[i] = t.column(r, h, tc)
			}
		}
		fmt.Fprintln(w, strings.Join(cells, "\t"))
	}
	return w.Flush()
}

// printDocuments prints resources as YAML or JSON: one resource alone when one was asked for
// by name, else a list (kind <Kind>List) as calicoctl prints it.
func printDocuments(out io.Writer, kind string, list datastore.ResourceList, single bool, format string) error {
	var doc any
	if single && len(list.Items) == 1 {
		doc = list.Items[0]
	} else {
		items := list.Items
		if items == nil {
			items = []datastore.Resource{}
		}
		doc = map[string]any{
			"apiVersion": datastore.APIVersion,
			"kind":       kind + "List",
			"metadata":   map[string]string{"resourceVersion": strconv.FormatInt(list.Revision, 10)},
			"items":      items,
		}
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", kind, err)
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return fmt.Errorf("encode %s as YAML: %w", kind, err)
		}
		_, err = out.Write(b)
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", b)
	return err
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tabby-net/tabby/datastore"
)

// newLabelCmd is calicoctl's `label`: set, overwrite or remove one label of one resource,
// with its messages. The change is a merge patch conditional on the resourceVersion the
// check was made on, so a label someone else set meanwhile is not overwritten silently.
func newLabelCmd(opts *globalOptions) *cobra.Command {
	var overwrite, remove bool
	cmd := &cobra.Command{
		Use:   "label KIND NAME (KEY=VALUE [--overwrite] | KEY --remove)",
		Short: "set or remove a label of a resource",
		Long: `Sets a label of one resource (KEY=VALUE), refusing to change an existing value unless
--overwrite is given, or removes one (KEY --remove), as calicoctl label does.`,
		Args: usageArgs(cobra.ExactArgs(3)),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := resolveKind(args[0])
			if err != nil {
				return err
			}
			typed, name := args[0], args[1]
			key, value, hasValue := strings.Cut(args[2], "=")
			switch {
			case remove && hasValue:
				return usageErrorf("--remove takes a label key, not %q", args[2])
			case !remove && !hasValue:
				return usageErrorf("invalid label %s: use KEY=VALUE, or KEY --remove", args[2])
			case remove && overwrite:
				return usageErrorf("--overwrite and --remove cannot be used together")
			}
			ctx, c, release, err := opts.connect(cmd)
			if err != nil {
				return err
			}
			defer release()

			overwritten := false
			err = datastore.DefaultRetry.Do(ctx, "label "+typed+" "+name, func(ctx context.Context) error {
				r, err := c.GetResource(ctx, kind, name)
				if err != nil {
					return err
				}
				old, exists := r.Meta().Labels[key]
				var labelPatch any = value
				switch {
				case remove && !exists:
					return fmt.Errorf("cannot remove label of %s %s, key %s does not exist", typed, name, key)
				case remove:
					labelPatch = nil
				case exists && !overwrite && old != value:
					return fmt.Errorf("failed to update label of %s %s, key %s is already present. please use '--overwrite' to set a new value", typed, name, key)
				}
				overwritten = exists
				patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
					"resourceVersion": r.Meta().ResourceVersion,
					"labels":          map[string]any{key: labelPatch},
				}})
				if err != nil {
					return err
				}
				_, err = c.PatchResource(ctx, kind, name, patch)
				return err
			})
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return errSilentFailure
			}
			switch {
			case remove:
				fmt.Fprintf(cmd.OutOrStdout(), "Successfully removed label %s from %s %s\n", key, typed, name)
			case overwritten:
				fmt.Fprintf(cmd.OutOrStdout(), "Successfully updated label %s on %s %s\n", key, typed, name)
			default:
				fmt.Fprintf(cmd.OutOrStdout(), "Successfully set label %s on %s %s\n", key, typed, name)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&overwrite, "overwrite", false, "replace the value of a label that is set already")
	cmd.Flags().BoolVar(&remove, "remove", false, "remove the label KEY")
	return cmd
}

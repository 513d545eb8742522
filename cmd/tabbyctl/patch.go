package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tabby-net/tabby/datastore"
)

func newPatchCmd(opts *globalOptions) *cobra.Command {
	var (
		patch         string
		skipNotExists bool
	)
	cmd := &cobra.Command{
		Use:   "patch KIND NAME -p JSON",
		Short: "change fields of a stored resource",
		Long: `Merges a JSON merge patch into the stored resource, checks the result like any update and
writes it with compare-and-swap, as calicoctl patch does:

  tabbyctl patch ippool default-ipv4-ippool -p '{"spec":{"ipipMode":"CrossSubnet"}}'`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if patch == "" {
				return usageErrorf(`required flag -p (--patch) not set: give a JSON object such as '{"spec":{"natOutgoing":true}}'`)
			}
			kind, err := resolveKind(args[0])
			if err != nil {
				return err
			}
			ctx, c, release, err := opts.connect(cmd)
			if err != nil {
				return err
			}
			defer release()
			patched, err := c.PatchResource(ctx, kind, args[1], []byte(patch))
			switch {
			case skipNotExists && errors.Is(err, datastore.ErrNotFound):
				fmt.Fprintf(cmd.OutOrStdout(), "%s %q does not exist: nothing patched\n", kind, args[1])
				return nil
			case err != nil:
				fmt.Fprintf(cmd.ErrOrStderr(), "Failed to patch '%s' resource: %v\n", kind, err)
				return errSilentFailure
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Successfully patched 1 '%s' resource\n", kind)
			reportStoredOnly(cmd.ErrOrStderr(), patched)
			return nil
		},
	}
	cmd.Flags().StringVarP(&patch, "patch", "p", "", "the JSON merge patch")
	cmd.Flags().BoolVar(&skipNotExists, "skip-not-exists", false, "succeed without doing anything when the resource does not exist")
	return cmd
}

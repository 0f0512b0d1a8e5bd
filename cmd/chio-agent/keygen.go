package main

import (
	"crypto/ed25519"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel"
)

type keygenOptions struct {
	// out is the key file to create (mode 0600). It is never overwritten.
	out string
}

func (o *keygenOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.out, "out", "chio-signing.key", "key file to create (mode 0600; never overwritten)")
}

func newKeygenCommand() *cobra.Command {
	o := &keygenOptions{}
	cmd := &cobra.Command{
		Use:   "keygen [--out FILE]",
		Short: "Write a new Ed25519 signing key file (never overwrites one)",
		Long: `keygen writes a new random Ed25519 seed (64 hex characters and a newline) to a
file readable only by its owner and prints the public key, the kernel_key every
receipt and checkpoint signed with it will carry.

It refuses to overwrite an existing file: a replaced key orphans every receipt
signed with the old one, and a receipt log refuses to open with another key
unless the rotation is explicit.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := kernel.GenerateKeyFile(o.out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\nkernel_key %s\n", o.out, kernel.PublicKeyHex(key.Public().(ed25519.PublicKey)))
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}
